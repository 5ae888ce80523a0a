"""The evidence standards (issue #27): sources, margins, robustness panels, families, convergence, seeds and
provenance, each on small hand-made runs with known answers."""
import json
import math

import pandas as pd
import pytest

from common import claims, provenance, workflow
from common.experiments import ConfigError
from common.report import Report, load_results
from common.results import RunRecord

PAPER_CLAIM = {"id": "x", "text": "a beats b", "origin": "paper", "kind": "greater", "metric": "final_acc",
               "a": "a", "b": "b", "margin": 0.0, "margin_source": "ours: any gain beyond the spread",
               "source": {"where": "Table 1", "tag": "[pdf]", "says": "a beats b"},
               "summary_source": "paper: Table 1 is the final accuracy"}
SPEC = {"settings": {"a": {}, "b": {}, "c": {}, "d": {}},
        "resolution": {"acc": {"value": 0.01, "source": "resolution: two binomial SEs"}}}


def _spec(*claims_, **top):
    return {**SPEC, "claims": list(claims_), **top}


def _hist(curves: dict) -> pd.DataFrame:
    """{(setting, seed): [acc per round]} -> a history frame."""
    return pd.DataFrame([{"setting": s, "seed": k, "round": r + 1, "acc": v}
                         for (s, k), ys in curves.items() for r, v in enumerate(ys)])


def _summary(hist: pd.DataFrame) -> pd.DataFrame:
    return hist.groupby(["setting", "seed"], as_index=False)["acc"].last().rename(columns={"acc": "final_acc"})


# ------------------------------------------------------------------------------------------------ the fields
@pytest.mark.parametrize("drop, match", [
    ("source", "without source"), ("margin_source", "no margin_source"), ("summary_source", "no summary_source")])
def test_a_paper_claim_without_its_evidence_fails_the_build(tmp_path, drop, match):
    claim = {k: v for k, v in PAPER_CLAIM.items() if k != drop}
    with pytest.raises(ConfigError, match=match):
        claims.check_spec(tmp_path, _spec(claim))


def test_a_check_needs_a_margin_source_but_no_source_and_an_illustrative_row_neither(tmp_path):
    check = {k: v for k, v in PAPER_CLAIM.items() if k not in ("source", "summary_source")} | {"origin": "check"}
    claims.check_spec(tmp_path, _spec(check))
    with pytest.raises(ConfigError, match="margin_source"):
        claims.check_spec(tmp_path, _spec({k: v for k, v in check.items() if k != "margin_source"}))
    claims.check_spec(tmp_path, _spec({"id": "i", "text": "", "origin": "illustrative", "kind": "greater",
                                       "metric": "final_acc", "a": "a", "b": "b"}))


@pytest.mark.parametrize("change, match", [
    ({"margin_source": "because"}, "margin_source"),
    ({"source": {"where": "Fig. 2", "tag": "[guess]", "says": "x"}}, "source tag"),
    ({"metric": "final_loss"}, "no `resolution:` entry"),
    ({"members": [{"label": "m", "a": "a", "b": "b"}]}, "either at the top"),
    ({"target": {"curve": "acc", "value": 0.9, "source": "ours: x"}}, "exactly one of"),
])
def test_malformed_evidence_is_one_clear_error(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        claims.check_spec(tmp_path, _spec({**PAPER_CLAIM, **change}))


def test_the_regime_lists_only_baselines_the_paper_claims_read(tmp_path):
    row = {"baseline": "C", "setting": "c", "metric": "final_acc", "reference": 0.9, "reference_source": "[pdf]"}
    with pytest.raises(ConfigError, match="no paper claim reads"):
        claims.check_spec(tmp_path, _spec(PAPER_CLAIM, regime=[row]))
    claims.check_spec(tmp_path, _spec(PAPER_CLAIM, regime=[{**row, "setting": "b"}]))


def test_every_committed_papers_claims_carry_their_evidence():
    for paper in workflow.papers():
        claims.check(paper)


# ---------------------------------------------------------------------------------------------- the verdicts
def test_the_robustness_panel_marks_a_claim_whose_summaries_disagree():
    # a leads b at the end, b leads on its best round: final says reproduced, best says not reproduced
    hist = _hist({("a", k): [0.5, 0.6, 0.7, 0.8 + d] for k, d in enumerate((0, .01, .02))}
                 | {("b", k): [0.5, 0.9, 0.7, 0.7 + d] for k, d in enumerate((0, .01, .02))})
    (c,) = claims.evaluate([{**PAPER_CLAIM, "curve": "acc"}], _summary(hist), hist, {"acc": {"value": 1.0}})
    assert c["verdict"] == claims.REPRODUCED and c["robustness"]["final"] == claims.REPRODUCED
    assert c["robustness"]["best"] == claims.NOT_REPRODUCED and c["metric_sensitive"]


def test_an_agreeing_panel_is_not_marked():
    hist = _hist({("a", k): [0.5, 0.8, 0.8, 0.8 + k / 100] for k in range(3)}
                 | {("b", k): [0.5, 0.6, 0.6, 0.6] for k in range(3)})
    (c,) = claims.evaluate([PAPER_CLAIM], _summary(hist), hist, {"acc": {"value": 0.05}})
    assert set(c["robustness"]) == {"final", "best", "last_quarter"} and not c["metric_sensitive"]
    assert c["verdict"] == claims.REPRODUCED and not c["under_budget"]


def test_a_claim_whose_settings_still_rise_is_under_budget_and_never_decisive():
    rising = {("a", k): [0.2, 0.4, 0.6, 0.8 + k / 100] for k in range(3)}
    hist = _hist(rising | {("b", k): [0.1, 0.2, 0.3, 0.4] for k in range(3)})
    (c,) = claims.evaluate([PAPER_CLAIM], _summary(hist), hist, {"acc": {"value": 0.01}})
    assert c["rule_verdict"] == claims.REPRODUCED and c["under_budget"]
    assert c["verdict"] == claims.INCONCLUSIVE and "still rises" in c["budget_note"]
    # the same runs with a resolution coarser than their rise are converged
    (c,) = claims.evaluate([PAPER_CLAIM], _summary(hist), hist, {"acc": {"value": 0.5}})
    assert c["verdict"] == claims.REPRODUCED and not c["under_budget"]


def test_the_last_quarter_gain_is_the_least_squares_change_over_the_last_quarter():
    hist = _hist({("a", 0): [0.0] * 8 + [0.1, 0.2, 0.3, 0.4]})
    row = claims.curve_summaries(hist, "acc").iloc[0]
    assert row["gain"] == pytest.approx(0.2) and row["last_quarter"] == pytest.approx(0.3)   # last 3 of 12
    assert row["final"] == pytest.approx(0.4) and row["evals"] == 12


def test_a_family_claim_is_judged_on_the_per_seed_mean_of_its_members():
    hist = _hist({("a", k): [0.9] for k in range(3)} | {("b", k): [0.8 + k / 100] for k in range(3)}
                 | {("c", k): [0.7] for k in range(3)} | {("d", k): [0.75] for k in range(3)})
    family = {k: v for k, v in PAPER_CLAIM.items() if k not in ("a", "b")} | {
        "members": [{"label": "site 1", "a": "a", "b": "b"}, {"label": "site 2", "a": "c", "b": "d"}]}
    (c,) = claims.evaluate([family], _summary(hist), hist, {"acc": {"value": 1.0}})
    # site 1: +0.10, +0.09, +0.08; site 2: −0.05 each: the mean +0.025 ± 0.005 holds, site 2 alone does not
    assert c["per_seed"] == pytest.approx({0: 0.025, 1: 0.02, 2: 0.015})
    assert c["verdict"] == claims.REPRODUCED
    assert c["robustness"]["member: site 1"] == claims.REPRODUCED
    assert c["robustness"]["member: site 2"] == claims.NOT_REPRODUCED and c["metric_sensitive"]


def test_a_missed_target_is_never_imputed_and_leaves_the_claim_under_budget():
    target = {"curve": "acc", "value": 0.8, "x": "round", "source": "ours: reached by every run"}
    claim = {k: v for k, v in PAPER_CLAIM.items() if k != "metric"} | {"target": target, "a": "b", "b": "a"}
    fast = {("a", k): [0.5, 0.85, 0.9] for k in range(3)}
    hist = _hist(fast | {("b", 0): [0.5, 0.6, 0.81], ("b", 1): [0.5, 0.6, 0.82], ("b", 2): [0.5, 0.6, 0.7]})
    (c,) = claims.evaluate([claim], _summary(hist), hist)
    assert c["per_seed"] == {0: 1.0, 1: 1.0}          # seed 2's b never reached 0.8: not counted as round 4
    assert c["under_budget"] and c["verdict"] == claims.INCONCLUSIVE and c["rule_verdict"] == claims.REPRODUCED
    hist = _hist(fast | {("b", k): [0.5, 0.6, 0.81] for k in range(3)})
    (c,) = claims.evaluate([claim], _summary(hist), hist)
    assert c["per_seed"] == {0: 1.0, 1: 1.0, 2: 1.0} and c["verdict"] == claims.REPRODUCED


def test_a_paper_claim_within_two_sds_of_its_margin_asks_for_five_seeds():
    hist = _hist({("a", k): [0.8 + d] for k, d in enumerate((0.03, -0.01, 0.01))}
                 | {("b", k): [0.8] for k in range(3)})
    (c,) = claims.evaluate([{**PAPER_CLAIM, "curve": "none"}], _summary(hist), hist)
    assert c["verdict"] == claims.INCONCLUSIVE and c["needs_seeds"] == 5 and c["robustness"] == {}


def test_the_false_positive_rate_of_the_rule_at_three_and_five_seeds():
    assert claims.false_positive_rate(3) == pytest.approx(0.113, abs=0.001)
    assert claims.false_positive_rate(5) == pytest.approx(0.044, abs=0.001)


# ------------------------------------------------------------------------------------------------ provenance
def _record(setting, seed, acc, **kw):
    return RunRecord("toy", setting, seed, "smoke", {}, history=[{"round": 1, "acc": acc}],
                     summary={"final_acc": acc}, **kw)


def test_a_record_of_other_code_is_stale_and_the_report_refuses_it_unless_drafting(tmp_path, monkeypatch):
    module = tmp_path / "common" / "mod.py"
    module.parent.mkdir()
    module.write_text("x = 1\n")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    files = {"common/mod.py": provenance.file_hash(module)}
    records = [_record("a", 0, 0.9, code_files=files), _record("b", 0, 0.8, code_files=dict(files))]
    report = Report(tmp_path / "out", "T", "cite", "smoke", "toy", records)
    assert report.provenance()["stale_runs"] == []
    module.write_text("x = 2\n")
    with pytest.raises(ConfigError, match="other code"):
        report.provenance()
    monkeypatch.setitem(provenance.READ, "allow_stale", True)
    report.write()
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert [s["run"] for s in prov["stale_runs"]] == ["a/seed0", "b/seed0"] and prov["draft_from_stale_records"]
    assert prov["stale_runs"][0]["files"] == ["common/mod.py"]
    assert "Draft from stale records" in (tmp_path / "out" / "README.md").read_text().split("## ")[0]


def test_a_record_without_file_hashes_is_stale():
    assert provenance.changed_files({}) == ["(no file hashes)"]


def test_the_report_reads_only_the_configured_seeds_made_with_the_current_setting(tmp_path):
    from common import experiments

    setting = experiments.settings("gradient_dropping", "smoke")[0]
    current = experiments.resolve("gradient_dropping", "smoke", setting)
    files = provenance.loaded_files()
    for seed, overrides in ((0, current), (1, {**current, "lr": 123.0}), (99, current)):
        RunRecord("gradient_dropping", setting, seed, "smoke", {}, summary={"final_test_acc": 0.5},
                  overrides=overrides, code_files=files).save(tmp_path / setting / f"seed{seed}.json")
    _, records, _, _ = load_results("gradient_dropping", tmp_path, "smoke")
    assert [r.seed for r in records] == [0]     # seed 1: an older setting; seed 99: not a seed of the scale


def test_the_rerun_trigger_follows_the_files_a_run_loaded(tmp_path, monkeypatch):
    for mod in (provenance, workflow):
        monkeypatch.setattr(mod, "REPO", tmp_path)
    used, unused = tmp_path / "used.py", tmp_path / "unused.py"
    used.write_text("a = 1\n")
    unused.write_text("b = 1\n")
    record = tmp_path / "results" / "seed0.json"
    assert workflow.run_code("results/seed0.json") == "new"
    _record("a", 0, 0.9, code_files={"used.py": provenance.file_hash(used)}, trigger="new").save(record)
    assert workflow.run_code("results/seed0.json") == "new"       # as Snakemake stored it: no rerun
    unused.write_text("b = 2\n")
    assert workflow.run_code("results/seed0.json") == "new"       # a file the run never loaded
    used.write_text("a = 2\n")
    changed = workflow.run_code("results/seed0.json")
    assert changed.startswith("changed:")                         # reruns; the new record keeps this trigger
    _record("a", 0, 0.9, code_files={"used.py": provenance.file_hash(used)}, trigger=changed).save(record)
    assert workflow.run_code("results/seed0.json") == changed


def test_a_run_process_loads_no_report_code(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "dense" / "seed0.json"
    subprocess.run([sys.executable, "-m", "papers.gradient_dropping", "run", "--scale", "smoke", "--setting", "dense",
                    "--seed", "0", "--device", "cpu", "--out", str(out)], check=True, capture_output=True,
                   cwd=provenance.REPO)
    files = json.loads(out.read_text())["code_files"]
    assert "papers/gradient_dropping/method.py" in files and "common/results.py" in files
    assert not {"common/report.py", "common/claims.py", "common/plots.py",
                "papers/gradient_dropping/figures.py"} & set(files)


def test_the_claims_table_of_the_html_report_is_in_the_texts_units(tmp_path):
    hist = _hist({("a", k): [0.9 + k / 100] for k in range(3)} | {("b", k): [0.8] for k in range(3)})
    report = Report(tmp_path, "T", "cite", "smoke", "toy")
    report.add_claims([{**PAPER_CLAIM, "curve": "none", "scale": 100, "unit": " pt"}], _summary(hist))
    report.write()
    row = pd.read_csv(tmp_path / "tables" / "claims.csv").iloc[0]
    assert row["mean"] == pytest.approx(11.0) and row["unit"] == "pt" and not math.isnan(row["std"])


def test_the_convergence_table_lists_every_setting_a_judged_claim_reads_with_its_longer_run():
    hist = _hist({("a", 0): [0.5, 0.6, 0.7, 0.8], ("b", 0): [0.5, 0.6, 0.6, 0.6], ("c", 0): [0.5, 0.9, 1.0, 1.0]})
    illustrative = {**PAPER_CLAIM, "id": "i", "origin": "illustrative", "a": "c"}
    table = claims.convergence_table([PAPER_CLAIM, illustrative], hist, {**SPEC, "longer": {"a": "c"}})
    assert table["setting"].tolist() == ["a", "b"]          # c is read by an illustrative row only
    a, b = table.to_dict("records")
    assert a["last_quarter_gain"] == pytest.approx(0.1) and a["still_rising"] and a["ratio_to_longer"] == 0.8
    assert b["last_quarter_gain"] == pytest.approx(0.0) and not b["still_rising"] and b["claims"] == "x"
