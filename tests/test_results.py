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


def test_atomic_write_gives_0644_files_and_0755_folders_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "new" / "deeper" / "r.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "deeper" / "r.json").stat().st_mode & 0o777 == 0o644
    assert [(tmp_path / p).stat().st_mode & 0o777 for p in ("new", "new/deeper")] == [0o755, 0o755]


def test_atomic_write_refuses_a_path_that_is_not_a_regular_file(tmp_path):
    """Issue #28: `--out /dev/full` replaced the device node (the rename replaces whatever the path is)."""
    fifo, folder, link = tmp_path / "fifo.json", tmp_path / "folder.json", tmp_path / "link.json"
    os.mkfifo(fifo)
    folder.mkdir()
    (tmp_path / "target.json").write_text("kept")
    link.symlink_to(tmp_path / "target.json")
    for path in (fifo, folder, link):
        with pytest.raises(FileExistsError, match="not a regular file"):
            atomic_write_text(path, "x")
    assert fifo.is_fifo() and folder.is_dir() and link.is_symlink() and link.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.json", "folder.json", "link.json", "target.json"]
