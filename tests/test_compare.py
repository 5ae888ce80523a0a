"""The teaching comparison's report helpers: claims per scale, the wording of paired differences, and the
convergence check of the regime references; the personalisation panel (Per-FedAvg's setting, every method under
Per-FedAvg's personalised evaluation) and that it left the comparison's other settings as they were."""
import dataclasses
import hashlib
import json

import pandas as pd
import pytest

from common import cli, experiments
from common.results import RunRecord
from papers.compare.figures import (FLAT_PT, PERS_METHODS, convergence, describe, for_scale, is_personal, paired,
                                    pers_reading, table_personalisation)
from papers.compare.method import CompareConfig, PersonalisedConfig, config_class
from papers.perfedavg.config import PerFedAvgConfig
from tests.conftest import needs_mnist

# the personalisation panel's settings per scale: {method: setting}
PANEL = {scale: {m: f"pers_{m}{suffix}" for m in PERS_METHODS}
         for scale, suffix in (("smoke", "_smoke"), ("quick", ""), ("paper", "_paper"))}


def test_quick_scale_judges_only_its_panels():
    spec = experiments.experiments("compare")
    quick, paper = for_scale(spec, "quick"), for_scale(spec, "paper")
    quick_settings = set(experiments.settings("compare", "quick"))
    assert quick["claims"] and all(c["a"] in quick_settings and c["b"] in quick_settings for c in quick["claims"])
    assert not any("cifar10" in c["id"] for c in quick["claims"])
    assert any("cifar10" in c["id"] for c in paper["claims"]) and not any("fmnist" in c["id"] for c in paper["claims"])
    assert len(quick["claims"]) < len(spec["claims"])
    assert {r["reference_setting"] for r in quick["regime"]} == {"ref_mnist_full", "ref_fmnist_full"}
    assert all(c["origin"] == "check" for c in spec["claims"])


def test_paired_differences_and_their_wording():
    summary = pd.DataFrame({"setting": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                            "final_test_acc": [0.90, 0.91, 0.92, 0.80, 0.82, 0.81]})
    diff = paired(summary, "a", "b")
    assert list(diff.round(6)) == [10.0, 9.0, 11.0]
    assert describe(diff).endswith("(higher)") and describe(-diff).endswith("(lower)")
    assert "level within the seed spread" in describe(pd.Series([2.0, -1.0, 0.5]))
    assert describe(pd.Series(dtype=float)) == "not run"


def test_convergence_flags_a_rising_curve():
    rounds = list(range(1, 101))
    flat = pd.DataFrame({"setting": "ref_x_full", "round": rounds, "test_acc": [min(0.9, r / 50) for r in rounds]})
    rising = flat.assign(test_acc=[r / 200 for r in rounds])
    assert convergence(flat, "ref_x_full")["flat"]
    c = convergence(rising, "ref_x_full")
    assert not c["flat"] and c["late"] - c["before"] >= FLAT_PT and c["rounds"] == 100


def test_a_run_hands_its_device_to_the_engine(monkeypatch):
    """The comparison adds no tensors of its own: the engine runs every method on the device it is given (its
    device tests guard the engine's methods; each paper's tests guard its own)."""
    from common.fl import FLConfig
    from common.results import RunRecord
    from papers.compare import method

    seen = []

    def engine(cfg, seed, record, device):
        seen.append(device)
        record.history.append({"round": 1, "test_acc": 0.99})

    monkeypatch.setattr(method, "run_federated", engine)
    record = RunRecord("compare", "x", 0, "smoke", {})
    method.run(FLConfig(dataset="mnist"), 0, record, "cuda:1")
    assert seen == ["cuda:1"] and record.summary["rounds_to_target"] == 1.0


# ---------------------------------------------------------------------------------------------- personalisation
@pytest.mark.parametrize("scale", experiments.SCALES)
def test_the_panel_is_perfedavgs_own_setting_for_every_method(scale):
    """Every method of the panel builds Per-FedAvg's config (marked for the personalised evaluation), equal field by
    field to Per-FedAvg's own setting of the same scale; the quick one with fewer rounds (the report's budget)."""
    run = experiments.settings("compare", scale)
    assert set(PANEL[scale].values()) <= set(run)
    assert {s for s in run if is_personal(s)} == set(PANEL[scale].values())
    for method, setting in PANEL[scale].items():
        cfg = cli.build("compare", config_class, scale, setting)
        assert type(cfg) is PersonalisedConfig and cfg.personalised_eval and cfg.method == method
        ours = dataclasses.asdict(cfg)
        assert ours.pop("personalised_eval") is True
        if method == "pfedhn":   # one user per step: its rounds and eval_every count steps, k per round of FedAvg
            own = dataclasses.asdict(cli.build("perfedavg", PerFedAvgConfig, scale, "fedavg"))
            k = round(own["participation"] * own["n_clients"])
            assert round(ours.pop("participation") * ours["n_clients"]) == 1 and ours.pop("method") == "pfedhn"
            own.pop("participation"), own.pop("method")
            assert ours.pop("eval_every") == k * own.pop("eval_every") and ours["rounds"] % k == 0
            ours["rounds"] //= k
        else:
            own = dataclasses.asdict(cli.build("perfedavg", PerFedAvgConfig, scale, method))
        if scale == "quick":
            assert ours["rounds"] == 200 < own["rounds"]
            ours.pop("rounds"), own.pop("rounds")
        assert ours == own, {k: (ours[k], own[k]) for k in ours if ours[k] != own[k]}


# the comparison's other runs as they were before the panel (their committed quick results stay valid): the resolved
# overrides of every non-panel setting of each scale, hashed (a params trigger of the workflow reruns a run whose
# overrides change). Changing an existing setting on purpose: update the digest and rerun its runs.
OTHER_SETTINGS = {"smoke": "a4283db6a4e5", "quick": "749855953e93", "paper": "de167e88f105"}
QUICK_BASE = {"model": "fedgen_cnn", "train_subset": 0, "test_subset": 1000, "n_clients": 20, "participation": 0.5,
              "rounds": 30, "batch_size": 32, "lr": 0.05, "eval_every": 3, "local_steps": 15}


def test_the_other_settings_are_unchanged():
    spec = experiments.experiments("compare")
    assert spec["scales"]["quick"]["base"] == QUICK_BASE
    for scale, expected in OTHER_SETTINGS.items():
        rows = {s: experiments.resolve("compare", scale, s) for s in experiments.settings("compare", scale)
                if not is_personal(s)}
        assert not any("personalised_eval" in r for r in rows.values())
        digest = hashlib.sha1(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]
        assert digest == expected, f"a {scale} setting of the comparison changed (its runs rerun): {digest}"
    assert config_class({"method": "fedavg"}) is CompareConfig   # without the panel's marker: as before
    quick = for_scale(spec, "quick")
    assert {c["a"] for c in quick["claims"] if is_personal(c["a"])} <= set(PANEL["quick"].values())
    assert not any(c["a"].endswith("_paper") for c in quick["claims"] if is_personal(c["a"]))
    assert {r["reference_setting"] for r in quick["regime"]} == {"ref_mnist_full", "ref_fmnist_full"}


def test_a_panel_run_goes_to_perfedavgs_personalised_run(monkeypatch):
    """The panel's runs, FedAvg and Local-only included, take Per-FedAvg's run (its evaluation), on the device given;
    the other runs never do."""
    from papers.compare import method
    from papers.perfedavg import method as perfedavg

    seen = []
    monkeypatch.setattr(perfedavg, "train", lambda cfg, seed, record, device: seen.append((cfg.method, device)))
    monkeypatch.setattr(method, "run_federated", lambda *a, **k: pytest.fail("the panel ran the plain engine"))
    for m, setting in PANEL["quick"].items():
        cfg = cli.build("compare", config_class, "quick", setting)
        method.run(cfg, 0, RunRecord("compare", setting, 0, "quick", {}), "cuda:1")
    assert seen == [(m, "cuda:1") for m in PANEL["quick"]]


@needs_mnist
def test_every_panel_method_reports_personalised_accuracy_before_and_after_one_step():
    """A smoke run of each panel setting through compare's run: every evaluation logs pers_acc_0 and pers_acc_1 (and
    the summary their final values); FedAvg's run is Per-FedAvg's own FedAvg run, number for number."""
    from papers.compare import method
    from papers.perfedavg.method import train

    for m, setting in PANEL["smoke"].items():
        cfg = cli.build("compare", config_class, "smoke", setting)
        record = RunRecord("compare", setting, 0, "smoke", {})
        method.run(cfg, 0, record, "cpu")
        assert len(record.history) == cfg.rounds // cfg.eval_every
        for row in record.history:
            assert {"pers_acc_0", "pers_acc_1", "pers_acc_5", "meta_objective"} <= set(row), (m, sorted(row))
            assert 0 <= row["pers_acc_0"] <= 1 and 0 <= row["pers_acc_1"] <= 1
        summary = record.summary
        assert {"final_pers_acc_0", "final_pers_acc_1", "final_adapt_gain"} <= set(summary)
        assert summary["final_adapt_gain"] == pytest.approx(summary["final_pers_acc_1"] - summary["final_pers_acc_0"])
        if m == "fedavg":
            own = RunRecord("perfedavg", "fedavg", 0, "smoke", {})
            train(cli.build("perfedavg", PerFedAvgConfig, "smoke", "fedavg"), 0, own, "cpu")
            drop = lambda h: {k: v for k, v in h.items() if k != "time_s"}  # noqa: E731
            assert [drop(h) for h in record.history] == [drop(h) for h in own.history]


def test_the_panels_table_and_reading_follow_the_numbers():
    settings = PANEL["quick"]
    acc = {"fedavg": (0.93, 0.935), "perfedavg_fo": (0.92, 0.94), "perfedavg_hf": (0.90, 0.942),
           "pfedhn": (0.95, 0.951), "local": (0.85, 0.86)}
    rows = []
    for m, (before, after) in acc.items():
        for seed, noise in enumerate((0.0, 0.001, -0.001)):
            rows.append({"setting": settings[m], "seed": seed, "final_pers_acc_0": before + noise,
                         "final_pers_acc_1": after + noise, "final_pers_acc_5": after + 0.01,
                         "final_adapt_gain": after - before, "final_test_acc": before})
    summary = pd.DataFrame(rows)
    table = table_personalisation(summary, settings)
    assert list(table["method"]) == ["FedAvg", "Per-FedAvg (FO)", "Per-FedAvg (HF)", "pFedHN", "Local-only"]
    assert list(table["before adaptation (%)"]) == ["93.00 ± 0.10", "92.00 ± 0.10", "90.00 ± 0.10", "95.00 ± 0.10",
                                                    "85.00 ± 0.10"]
    assert list(table["after 1 step (%)"])[2] == "94.20 ± 0.10" and list(table["seeds"]) == [3] * 5
    assert table["after 1 step, − FedAvg + 1 step (paired)"][2] == "+0.70 ± 0.00 pt (higher)"
    text = pers_reading(summary, settings, {"client_samples": 750, "client_test_fraction": 0.2})
    assert "a model trained to be adapted" in text and "collaboration pays" in text and "~600" in text
    assert "pFedHN + 1 step − FedAvg + 1 step +1.60 ± 0.00 pt (higher)" in text
    flipped = summary.assign(final_adapt_gain=-summary["final_adapt_gain"])
    assert "a model trained to be adapted" not in pers_reading(flipped, settings, {"client_samples": 750,
                                                                                   "client_test_fraction": 0.2})
