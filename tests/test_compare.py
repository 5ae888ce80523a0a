"""The teaching comparison's report helpers: claims per scale, the wording of paired differences, and the
convergence check of the regime references."""
import pandas as pd

from common import experiments
from papers.compare.figures import FLAT_PT, convergence, describe, for_scale, paired


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
