import json
import os

import pytest
import torch

from common.results import RunRecord, atomic_write_text, history_frame, seed_everything, summary_frame


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "r.json"
    atomic_write_text(path, "first")
    assert path.read_text() == "first" and os.listdir(path.parent) == ["r.json"]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "second")
    assert path.read_text() == "first" and os.listdir(path.parent) == ["r.json"]


def test_record_round_trip_and_tidy_frames(tmp_path):
    rec = RunRecord(paper="p", setting="a", seed=3, scale="smoke", config={"lr": 0.1})
    rec.log(step=1, acc=0.5)
    rec.log(step=2, acc=0.75)
    rec.summary = {"final_acc": 0.75}
    rec.save(tmp_path / "r.json")
    back = RunRecord.load(tmp_path / "r.json")
    assert back.history == rec.history and back.config == {"lr": 0.1} and back.commit
    assert json.loads((tmp_path / "r.json").read_text())["seed"] == 3
    hist = history_frame([back])
    assert list(hist["acc"]) == [0.5, 0.75] and set(hist["setting"]) == {"a"}
    assert summary_frame([back]).loc[0, "final_acc"] == 0.75


def test_non_finite_values_are_rejected_as_null(tmp_path):
    rec = RunRecord(paper="p", setting="a", seed=0, scale="smoke", config={})
    rec.summary = {"x": float("nan")}
    rec.save(tmp_path / "r.json")
    assert RunRecord.load(tmp_path / "r.json").summary["x"] is None


def test_same_seed_same_numbers():
    seed_everything(5)
    a = torch.randn(4)
    g = seed_everything(5)
    assert torch.equal(a, torch.randn(4))
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(5)))
