import json

import pandas as pd
import pytest

from common.claims import INCONCLUSIVE, NOT_JUDGED, NOT_REPRODUCED, REPRODUCED, verdict
from common.claims import evaluate as evaluate_claims
from common.report import Report, load_results, mean_std, paper_vs_ours, regime_table, summary_rows
from common import provenance
from common.results import RunRecord


@pytest.mark.parametrize("kind, values, margin, expected", [
    ("greater", [0.05, 0.06, 0.04], 0.0, REPRODUCED),       # mean 0.05, sd 0.01
    ("greater", [0.05, -0.02, 0.03], 0.0, INCONCLUSIVE),    # mean 0.02 > 0 but sd 0.036
    ("greater", [-0.03, -0.02, -0.04], 0.0, NOT_REPRODUCED),
    ("greater", [-0.01, 0.0, -0.02], 0.0, INCONCLUSIVE),    # mean + sd = 0 is not below the margin
    ("greater", [0.05, 0.06, 0.04], 0.045, INCONCLUSIVE),   # above the margin, not by a std
    ("greater", [0.05, 0.06, 0.04], 0.07, NOT_REPRODUCED),  # mean + sd = 0.06 < 0.07
    # the branch that was lopsided: a mean at or below the margin with a wide spread is inconclusive, not
    # "not reproduced" (FedNTD > FedLSD at -1.41 +- 4.25 pt)
    ("greater", [-0.06, 0.03, -0.012], 0.0, INCONCLUSIVE),
    ("greater", [0.05, 0.06, 0.04], 0.06, INCONCLUSIVE),     # mean 0.05 < 0.06 but mean + sd = 0.06 is not below
    ("gap_greater", [0.05, 0.06, 0.04], 0.0, REPRODUCED),
    ("gap_greater", [-0.05, -0.06, -0.04], 0.0, NOT_REPRODUCED),
    ("not_worse", [-0.004, -0.002, 0.0], 0.005, REPRODUCED),   # mean - sd = -0.004 >= -0.005
    ("not_worse", [-0.02, -0.03, -0.025], 0.005, NOT_REPRODUCED),
    # the other lopsided branch: mean -0.004 >= -0.005 used to be enough; sd 0.0055 makes it inconclusive
    ("not_worse", [-0.01, 0.0, -0.002], 0.005, INCONCLUSIVE),
    ("ratio_at_least", [50.0, 49.0, 51.0], 45, REPRODUCED),
    ("ratio_at_least", [30.0, 31.0, 29.0], 45, NOT_REPRODUCED),
    ("ratio_at_least", [44.0, 46.0, 45.5], 45, INCONCLUSIVE),
])
def test_verdict_rules(kind, values, margin, expected):
    assert verdict(kind, values, margin) == expected


def test_not_worse_inconclusive_between_margin_and_one_std():
    assert verdict("not_worse", [-0.02, 0.0, -0.01], 0.005) == INCONCLUSIVE  # mean -0.01, sd 0.01


def test_verdicts_are_symmetric_in_the_spread():
    """Mirroring the values about the margin swaps reproduced and not reproduced (and keeps inconclusive)."""
    swap = {REPRODUCED: NOT_REPRODUCED, NOT_REPRODUCED: REPRODUCED, INCONCLUSIVE: INCONCLUSIVE}
    for values in ([0.05, 0.06, 0.04], [0.01, -0.03, 0.05], [0.3, 0.31, 0.29], [-0.2, -0.1, -0.15]):
        mirrored = [0.02 - v for v in values]  # about the margin 0.01
        assert verdict("greater", mirrored, 0.01) == swap[verdict("greater", values, 0.01)]


def _summary():
    return pd.DataFrame({"setting": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3,
                         "seed": [0, 1, 2] * 4,
                         "acc": [0.9, 0.8, 0.85, 0.8, 0.7, 0.75, 0.6, 0.6, 0.6, 0.59, 0.6, 0.58]})


def test_claims_are_paired_by_seed():
    (c,) = evaluate_claims([{"id": "x", "text": "a > b", "kind": "greater", "metric": "acc", "a": "a", "b": "b",
                             "origin": "paper"}],
                           _summary())
    assert c["per_seed"] == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1}) and c["verdict"] == REPRODUCED


def test_gap_claim_and_missing_setting():
    gap, missing = evaluate_claims([
        {"id": "g", "text": "", "kind": "gap_greater", "metric": "acc", "a": "a", "b": "b", "c": "c", "d": "d",
         "origin": "paper"},
        {"id": "m", "text": "", "kind": "greater", "metric": "acc", "a": "a", "b": "zzz", "origin": "check"}],
        _summary())
    assert gap["mean"] == pytest.approx(0.1 - 0.01) and gap["verdict"] == REPRODUCED
    assert missing["verdict"] == "not run at this scale" and missing["n_seeds"] == 0


def test_greater_claim_without_b_judges_a_itself_against_the_margin():
    above, below = evaluate_claims([
        {"id": "x", "text": "", "kind": "greater", "metric": "acc", "a": "a", "margin": 0.7, "origin": "paper"},
        {"id": "y", "text": "", "kind": "greater", "metric": "acc", "a": "c", "margin": 0.7, "origin": "paper"}],
        _summary())
    assert above["per_seed"] == pytest.approx({0: 0.9, 1: 0.8, 2: 0.85}) and above["verdict"] == REPRODUCED
    assert below["verdict"] == NOT_REPRODUCED


def test_load_results_keeps_only_the_scales_current_settings(tmp_path):
    for setting in ("dense", "a_setting_since_removed"):
        RunRecord("gradient_dropping", setting, 0, "smoke", {}, summary={"final_test_acc": 0.5},
                  code_files=provenance.loaded_files()).save(tmp_path / setting / "seed0.json")
    _, records, _, summary = load_results("gradient_dropping", tmp_path, "smoke")
    assert [r.setting for r in records] == ["dense"] and set(summary["setting"]) == {"dense"}


def test_unknown_claim_kind_and_metric_raise():
    with pytest.raises(ValueError, match="unknown kind"):
        evaluate_claims([{"id": "x", "kind": "bigger", "metric": "acc", "a": "a", "b": "b", "origin": "paper"}],
                        _summary())
    with pytest.raises(KeyError, match="metric 'loss'"):
        evaluate_claims([{"id": "x", "kind": "greater", "metric": "loss", "a": "a", "b": "b", "origin": "paper"}],
                        _summary())
    with pytest.raises(ValueError, match="origin None"):
        evaluate_claims([{"id": "x", "kind": "greater", "metric": "acc", "a": "a", "b": "b"}], _summary())


def test_illustrative_claims_get_no_verdict():
    (c,) = evaluate_claims([{"id": "x", "text": "", "kind": "ratio_at_least", "metric": "acc", "a": "a", "b": "c",
                             "margin": 1.2, "origin": "illustrative"}], _summary())
    assert c["verdict"] == NOT_JUDGED and c["mean"] == pytest.approx(0.85 / 0.6)


def test_regime_table_ratios_against_a_number_and_a_reference_setting():
    table = regime_table([
        {"baseline": "A", "setting": "a", "metric": "acc", "reference": 0.9, "reference_source": "[abs]"},
        {"baseline": "C", "setting": "c", "metric": "acc", "reference_setting": "a", "reference_source": "central"},
    ], _summary())
    assert list(table.columns) == ["baseline", "setting", "ours", "reference", "reference_source", "ratio"]
    assert table["ratio"].tolist() == pytest.approx([0.85 / 0.9, 0.6 / 0.85])


@pytest.mark.parametrize("reference, warned", [(0.9, False), (2.0, True)])
def test_a_report_under_the_regime_floor_warns_at_the_top(tmp_path, reference, warned):
    spec = {"regime": [{"baseline": "A", "setting": "a", "metric": "acc", "reference": reference,
                        "reference_source": "test"}],
            "reported": [], "claims": [{"id": "x", "text": "a > b", "kind": "greater", "metric": "acc", "a": "a",
                                        "b": "b", "origin": "paper"}]}
    report = Report(tmp_path, "T", "cite", "smoke", "toy")
    report.paper_and_claims(spec, _summary(), "caption")
    report.write()
    text = (tmp_path / "README.md").read_text()
    head = text.split("## ")[0]
    assert ("[!CAUTION]" in head and "Not the paper's regime" in head) == warned
    assert (tmp_path / "tables" / "regime.csv").read_text().startswith("baseline,setting,ours,reference")
    assert '"origin": "paper"' in (tmp_path / "claims.json").read_text()


def test_paper_vs_ours_puts_mean_std_beside_the_papers_number():
    table = paper_vs_ours([{"quantity": "acc a", "paper": "90", "source": "[abs]", "setting": "a", "metric": "acc",
                            "scale": 100}, {"quantity": "other", "paper": "1", "source": "[mem]"}], _summary())
    assert table.iloc[0]["ours (mean ± std over seeds)"] == "85.00 ± 5.00 (n=3)"
    assert table.iloc[1]["ours (mean ± std over seeds)"] == "-"  # a reference row with no setting of ours
    assert mean_std([1.0]) == "1.00 ± 0.00"


def test_a_regime_row_whose_setting_did_not_run_says_so_in_the_csv(tmp_path):
    spec = {"regime": [{"baseline": "A", "setting": "a", "metric": "acc", "reference": 0.9, "reference_source": "t"},
                       {"baseline": "Z", "setting": "zz", "metric": "acc", "reference": 0.9, "reference_source": "t"}]}
    report = Report(tmp_path, "T", "cite", "smoke", "toy")
    report.regime(spec, _summary())
    rows = (tmp_path / "tables" / "regime.csv").read_text().splitlines()
    assert rows[2].startswith("Z,zz,not run,0.9000,t,not run") and report.regime_best == pytest.approx(0.85 / 0.9)


def test_the_index_reads_the_lowest_measured_regime_ratio_and_counts_recalled_claims_apart(tmp_path):
    from common.index import _regime, build

    report = Report(tmp_path / "toy", "T", "cite", "smoke", "toy")
    report.regime({"regime": [{"baseline": "A", "setting": "a", "metric": "acc", "reference": 0.9,
                               "reference_source": "t"},
                              {"baseline": "C", "setting": "c", "metric": "acc", "reference": 0.7,
                               "reference_source": "t"},
                              {"baseline": "Z", "setting": "zz", "metric": "acc", "reference": 0.9,
                               "reference_source": "t"}]}, _summary())
    assert _regime(tmp_path / "toy") == f"{0.6 / 0.7:.2f}"      # the gate: the lowest measured ratio
    (tmp_path / "toy" / "README.md").write_text("| scale | `smoke` |")
    (tmp_path / "toy" / "claims.json").write_text(json.dumps([
        {"id": "v", "text": "v", "origin": "paper", "verdict": "reproduced", "recalled": False},
        {"id": "m", "text": "m", "origin": "paper", "verdict": "inconclusive", "recalled": True}]))
    row = next(line for line in build(tmp_path).splitlines() if line.startswith("| [toy]"))
    assert "| 1 reproduced | 1 inconclusive |" in row and row.endswith("built before the evidence standards |")


def test_summary_rows_keep_scalars_and_the_papers_columns():
    from types import SimpleNamespace
    rec = SimpleNamespace(setting="a", seed=1, config={"lr": 0.1},
                          summary={"acc": 0.5, "curve": [1, 2], "matrix": {"x": 1}})
    frame = summary_rows([rec], lambda r: {"lr": r.config["lr"]})
    assert list(frame.columns) == ["setting", "seed", "lr", "acc"]
    assert frame.iloc[0].tolist() == ["a", 1, 0.1, 0.5]
