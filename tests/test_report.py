import pandas as pd
import pytest

from common.report import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, evaluate_claims, load_results, mean_std,
                           paper_vs_ours, verdict)
from common.results import RunRecord


@pytest.mark.parametrize("kind, values, margin, expected", [
    ("greater", [0.05, 0.06, 0.04], 0.0, REPRODUCED),       # mean 0.05, sd 0.01
    ("greater", [0.05, -0.02, 0.03], 0.0, INCONCLUSIVE),    # mean 0.02 > 0 but sd 0.036
    ("greater", [-0.01, 0.0, -0.02], 0.0, NOT_REPRODUCED),
    ("greater", [0.05, 0.06, 0.04], 0.045, INCONCLUSIVE),   # above the margin, not by a std
    ("greater", [0.05, 0.06, 0.04], 0.06, NOT_REPRODUCED),
    ("not_worse", [-0.004, -0.001, 0.0], 0.005, REPRODUCED),
    ("not_worse", [-0.02, -0.03, -0.025], 0.005, NOT_REPRODUCED),
    ("not_worse", [-0.01, 0.0, -0.002], 0.005, REPRODUCED),   # mean -0.004 >= -0.005
    ("ratio_at_least", [50.0, 49.0, 51.0], 45, REPRODUCED),
    ("ratio_at_least", [30.0, 31.0, 29.0], 45, NOT_REPRODUCED),
    ("ratio_at_least", [44.0, 46.0, 45.5], 45, INCONCLUSIVE),
])
def test_verdict_rules(kind, values, margin, expected):
    assert verdict(kind, values, margin) == expected


def test_not_worse_inconclusive_between_margin_and_one_std():
    assert verdict("not_worse", [-0.02, 0.0, -0.01], 0.005) == INCONCLUSIVE  # mean -0.01, sd 0.01


def _summary():
    return pd.DataFrame({"setting": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3,
                         "seed": [0, 1, 2] * 4,
                         "acc": [0.9, 0.8, 0.85, 0.8, 0.7, 0.75, 0.6, 0.6, 0.6, 0.59, 0.6, 0.58]})


def test_claims_are_paired_by_seed():
    (c,) = evaluate_claims([{"id": "x", "text": "a > b", "kind": "greater", "metric": "acc", "a": "a", "b": "b"}],
                           _summary())
    assert c["per_seed"] == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1}) and c["verdict"] == REPRODUCED


def test_gap_claim_and_missing_setting():
    gap, missing = evaluate_claims([
        {"id": "g", "text": "", "kind": "gap_greater", "metric": "acc", "a": "a", "b": "b", "c": "c", "d": "d"},
        {"id": "m", "text": "", "kind": "greater", "metric": "acc", "a": "a", "b": "zzz"}], _summary())
    assert gap["mean"] == pytest.approx(0.1 - 0.01) and gap["verdict"] == REPRODUCED
    assert missing["verdict"] == "not run at this scale" and missing["n_seeds"] == 0


def test_greater_claim_without_b_judges_a_itself_against_the_margin():
    above, below = evaluate_claims([
        {"id": "x", "text": "", "kind": "greater", "metric": "acc", "a": "a", "margin": 0.7},
        {"id": "y", "text": "", "kind": "greater", "metric": "acc", "a": "c", "margin": 0.7}], _summary())
    assert above["per_seed"] == pytest.approx({0: 0.9, 1: 0.8, 2: 0.85}) and above["verdict"] == REPRODUCED
    assert below["verdict"] == NOT_REPRODUCED


def test_load_results_keeps_only_the_scales_current_settings(tmp_path):
    for setting in ("dense", "a_setting_since_removed"):
        RunRecord("gradient_dropping", setting, 0, "smoke", {}, summary={"final_test_acc": 0.5}).save(
            tmp_path / setting / "seed0.json")
    _, records, _, summary = load_results("gradient_dropping", tmp_path, "smoke")
    assert [r.setting for r in records] == ["dense"] and set(summary["setting"]) == {"dense"}


def test_unknown_claim_kind_and_metric_raise():
    with pytest.raises(ValueError, match="unknown kind"):
        evaluate_claims([{"id": "x", "kind": "bigger", "metric": "acc", "a": "a", "b": "b"}], _summary())
    with pytest.raises(KeyError, match="metric 'loss'"):
        evaluate_claims([{"id": "x", "kind": "greater", "metric": "loss", "a": "a", "b": "b"}], _summary())


def test_paper_vs_ours_puts_mean_std_beside_the_papers_number():
    table = paper_vs_ours([{"quantity": "acc a", "paper": "90", "source": "[abs]", "setting": "a", "metric": "acc",
                            "scale": 100}, {"quantity": "other", "paper": "1", "source": "[mem]"}], _summary())
    assert table.iloc[0]["ours (mean ± std over seeds)"] == "85.00 ± 5.00 (n=3)"
    assert table.iloc[1]["ours (mean ± std over seeds)"] == "-"  # a reference row with no setting of ours
    assert mean_std([1.0]) == "1.00 ± 0.00"
