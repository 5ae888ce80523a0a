import importlib
import subprocess
import sys

import pytest

from common import cli, experiments
from common.experiments import ConfigError, build_config
from papers.gradient_dropping.config import GradDropConfig
from common.workflow import papers
from tests.conftest import REPO, needs_mnist


def test_unknown_key_is_named_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['dropratio'\].*allowed: dataset"):
        build_config(GradDropConfig, {"dropratio": 0.9})


def test_out_of_range_and_wrong_type_values():
    with pytest.raises(ConfigError, match="drop_ratio must be in"):
        build_config(GradDropConfig, {"drop_ratio": 1.0})
    with pytest.raises(ConfigError, match="threshold must be 'global' or 'local'"):
        build_config(GradDropConfig, {"threshold": "layer"})
    with pytest.raises(ConfigError, match="steps must be int"):
        build_config(GradDropConfig, {"steps": "many"})


def test_yaml_values_are_coerced():
    cfg = build_config(GradDropConfig, {"lr": 1, "hidden": [64, 32]})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.hidden == (64, 32)


@pytest.mark.parametrize("paper", papers())
def test_every_setting_of_every_scale_builds_its_config(paper):
    """What `check` does before any job, for every scale at once (the paper scale included, which CI never runs)."""
    config_cls = importlib.import_module(f"papers.{paper}.__main__").ENTRY[1]
    for scale in experiments.SCALES:
        for setting in experiments.settings(paper, scale):
            cli.build(paper, config_cls, scale, setting)


def test_unknown_scale_and_setting():
    with pytest.raises(ConfigError, match="unknown scale 'huge'"):
        experiments.run_ids("gradient_dropping", "huge")
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        experiments.resolve("gradient_dropping", "quick", "nope")


def test_cli_reports_a_bad_value_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "papers.gradient_dropping", "run", "--scale", "smoke", "--setting",
                           "dense", "--set", "lr=-1", "--out", str(tmp_path / "x.json")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "lr must be > 0" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_workflow_rejects_a_bad_scale_before_any_job(tmp_path):
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "snakemake") if (REPO / ".venv").exists() else "snakemake",
                           "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "reports/gradient_dropping",
                           "--config", "scale=huge"], capture_output=True, text=True)
    assert proc.returncode != 0 and "huge" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------- experiments.yaml's schema and metrics (#28)
def _spec_of(paper="gradient_dropping"):
    import yaml

    path = experiments.REPO / "papers" / paper / "experiments.yaml"
    return path, yaml.safe_load(path.read_text())


def _rename(where, old, new):
    def apply(spec):
        node = spec
        for key in where:
            node = node[key]
        node[new] = node.pop(old)
    return apply


@pytest.mark.parametrize("mutate, words", [
    (_rename(["scales", "smoke"], "settings", "setings"), r"scales\.smoke: unknown key\(s\) \['setings'\]; allowed: seeds"),
    (_rename(["scales", "smoke"], "base", "bsae"), r"scales\.smoke: unknown key\(s\) \['bsae'\]"),
    (_rename(["scales", "smoke"], "seeds", "sedes"), r"scales\.smoke: unknown key\(s\) \['sedes'\]"),
    (_rename(["scales", "quick"], "setting_seeds", "setting_sedes"), r"\['setting_sedes'\]; allowed: .*setting_seeds"),
    (_rename([], "regime", "regmie"), r"top level: unknown key\(s\) \['regmie'\]; allowed: .*resolution, longer"),
    (_rename(["scales"], "quick", "quik"), "'quik' is not one of"),
    (lambda s: s["settings"].update(dense=[0.0]), r"settings\.dense: \[0\.0\] is not of type"),
    (lambda s: s["scales"]["smoke"].update(seeds=[-1]), r"scales\.smoke\.seeds\[0\]"),
    (lambda s: s["claims"][0].update(metirc="x"), r"claims\[0\] \(id '.*'\): unknown key\(s\) \['metirc'\]; allowed: id"),
    (lambda s: s["regime"][0].update(refrence=0.9), r"regime\[0\] \(baseline .*\['refrence'\]"),
    (lambda s: s["reported"][0].update(metirc="x"), r"reported\[0\]: unknown key\(s\) \['metirc'\]"),
    (lambda s: s.update(resources={"quick": {"mem": 100}}), r"resources\.quick: unknown key\(s\) \['mem'\]"),
    (lambda s: s["claims"].append({"id": "m", "members": [{"lable": "x"}]}),
     r"\(id 'm'\)\.members\[0\]: unknown key\(s\) \['lable'\]; allowed: label"),
    (lambda s: s["claims"].append({"id": "s", "source": {"wehre": "Table 2"}}), r"\.source: unknown key\(s\) \['wehre'\]"),
    (lambda s: s["claims"].append({"id": "t", "target": {"vlaue": 0.9}}), r"\.target: unknown key\(s\) \['vlaue'\]"),
])
def test_every_key_of_experiments_yaml_is_checked_against_the_schema(mutate, words):
    path, spec = _spec_of()
    mutate(spec)
    with pytest.raises(ConfigError, match=r"papers/gradient_dropping/experiments\.yaml: .*" + words):
        experiments._check_schema(path, spec)


@pytest.mark.parametrize("paper", papers())
def test_every_file_fits_the_schema_and_reads_declared_metrics(paper):
    path, spec = _spec_of(paper)
    experiments._check_schema(path, spec)
    experiments._check_metrics(path, spec, paper)


@pytest.mark.parametrize("section, what", [("claims", "claim"), ("regime", "regime row"),
                                           ("reported", "reported entry")])
def test_a_misspelt_metric_is_named_with_the_declared_ones(section, what):
    path, spec = _spec_of()
    next(r for r in spec[section] if r.get("metric"))["metric"] = "final_tset_acc"
    with pytest.raises(ConfigError, match=f"{what} .* reads metric 'final_tset_acc'.*declared metrics: final_test_acc"):
        experiments._check_metrics(path, spec, "gradient_dropping")


def test_a_rounds_to_target_claim_reads_no_metric():
    path, spec = _spec_of()
    spec["claims"] = [{"id": "t", "target": {"curve": "test_acc", "value": 0.9}}]
    experiments._check_metrics(path, spec, "gradient_dropping")


@pytest.mark.parametrize("paper", ["fedntd", "feddf", "feddg", "fedgen", "perfedavg", "pfedhn", "compare", "kd_svd",
                                   "prompt_tuning"])
def test_an_unknown_method_fails_when_the_config_is_built(paper):
    """Before any job (common.validate builds every setting's config), not when the run looks the method up."""
    config_cls = importlib.import_module(f"papers.{paper}.__main__").ENTRY[1]
    setting = experiments.settings(paper, "smoke")[0]
    with pytest.raises(ConfigError, match="fedfoo"):
        cli.build(paper, config_cls, "smoke", setting, {"method": "fedfoo"})


@needs_mnist
@pytest.mark.parametrize("paper, setting", [("gradient_dropping", "dense"), ("fedntd", "fedntd_s2")])
def test_a_smoke_run_produces_only_declared_summary_metrics(paper, setting, tmp_path):
    import fnmatch
    import json

    entry = importlib.import_module(f"papers.{paper}.__main__").ENTRY
    assert cli.main(*entry, argv=["run", "--scale", "smoke", "--setting", setting, "--out", str(tmp_path / "r.json")]) == 0
    declared = experiments.summary_metrics(paper)
    produced = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert [k for k in produced if not any(fnmatch.fnmatchcase(k, d) for d in declared)] == []
