"""Smoke runs of each paper's whole workflow (Snakemake, smoke scale) into a temporary folder."""
import json
import os
import subprocess

import pytest

from tests.conftest import REPO, needs_mnist

SNAKEMAKE = str(REPO / ".venv" / "bin" / "snakemake") if (REPO / ".venv" / "bin").exists() else "snakemake"


def run_workflow(paper: str, workdir) -> None:
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-c2", f"reports/{paper}",
                           "--config", "scale=smoke"], capture_output=True, text=True,
                          env={**os.environ})
    logs = "".join(p.read_text() for p in (workdir / "logs").rglob("*.log")) if (workdir / "logs").exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]


def check_report(out, figures):
    text = (out / "README.md").read_text()
    assert "scale | `smoke`" in text and "Claims" in text and "paper" in text.lower()
    claims = json.loads((out / "claims.json").read_text())
    assert claims and all(c["verdict"] for c in claims)
    for name in figures:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000


@pytest.mark.workflow
@needs_mnist
def test_gradient_dropping_workflow(tmp_path):
    run_workflow("gradient_dropping", tmp_path)
    check_report(tmp_path / "reports" / "gradient_dropping", ["accuracy_curves", "bytes", "layer_density"])
    record = json.loads((tmp_path / "results/smoke/gradient_dropping/drop99/seed0.json").read_text())
    assert record["scale"] == "smoke" and record["history"] and record["bytes_sent"] > 0
    html = tmp_path / "report.html"  # Snakemake's own HTML report, with the figures and captions
    subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--report", str(html),
                    "reports/gradient_dropping", "--config", "scale=smoke"], check=True, capture_output=True)
    assert html.stat().st_size > 10_000


@pytest.mark.workflow
@needs_mnist
def test_compare_workflow(tmp_path):
    run_workflow("compare", tmp_path)
    out = tmp_path / "reports" / "compare"
    check_report(out, ["curves_mnist", "final_accuracy", "partitions"])
    assert "fedprox" in (out / "tables" / "final_mnist.csv").read_text()
