import importlib
import subprocess
import sys

import pytest

from common import cli, experiments
from common.experiments import ConfigError, build_config
from papers.gradient_dropping.config import GradDropConfig
from common.workflow import papers
from tests.conftest import REPO


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
