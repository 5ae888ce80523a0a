"""Issue #28, the workflow's half: every bad input below is one `error:` line naming the fix (no traceback), and a
build with its own seeds never publishes over the committed report."""
import errno
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, needs_mnist
from tests.test_workflow import SNAKEMAKE, copy_repo

PAPER = "gradient_dropping"


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with exactly one `error:` line holding `words`, and no traceback."""
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, out[-3000:]
    assert "Traceback" not in out and "Exception" not in out and "PermissionError" not in out, out[-3000:]
    assert all(w in errors[0] for w in words), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The workflow with one paper (the checks before a run then read only it)."""
    return copy_repo(tmp_path_factory.mktemp("repo"), (PAPER,))


def snakemake(repo, work, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "-s", str(repo / "Snakefile"), "-d", str(work), "-c1", *args],
                          capture_output=True, text=True, **kw)


def test_another_scales_report_without_its_scale_names_the_option(repo, tmp_path):
    proc = snakemake(repo, tmp_path, f"reports/smoke/{PAPER}")
    one_error_line(proc, "--config scale=smoke")
    proc = snakemake(repo, tmp_path, f"reports/nonsense/{PAPER}")
    one_error_line(proc, "reports/<scale>/<paper>")


def test_the_committed_report_with_other_seeds_is_refused(repo, tmp_path):
    proc = snakemake(repo, tmp_path, f"reports/{PAPER}", "--config", "seeds=[0]")
    one_error_line(proc, f"reports/quick-seeds-0/{PAPER}", "seeds=[0]")


def test_seeds_replace_every_seed_list_setting_seeds_included():
    from common import experiments, workflow

    own = experiments.scale_spec(PAPER, "quick")["setting_seeds"]
    assert own["central_ref"] == [0]   # the case of the issue: a reference run with its own seeds
    runs = experiments.run_ids(PAPER, "quick", [1])
    assert runs == [f"{s}/seed1" for s in experiments.settings(PAPER, "quick")]
    assert workflow.report_dir(PAPER, "quick", [1]) == f"reports/quick-seeds-1/{PAPER}"
    assert workflow.report_dir(PAPER, "quick") == f"reports/{PAPER}"


@needs_mnist
def test_a_build_with_its_own_seeds_goes_to_its_own_folder(repo, tmp_path):
    proc = snakemake(repo, tmp_path, "-n", "-p", f"reports/quick-seeds-1/{PAPER}", "--config", "seeds=[1]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "published to reports/quick-seeds-1/<paper>" in out   # the user is told where
    assert f"output: reports/quick-seeds-1/{PAPER}" in out and f"output: reports/{PAPER}\n" not in out
    assert "results/quick/gradient_dropping/central_ref/seed1.json" in out
    assert "central_ref/seed0.json" not in out and " --seeds 1" in out
    assert "--allow-stale" not in out


@needs_mnist
def test_allow_stale_reaches_the_report_command(repo, tmp_path):
    proc = snakemake(repo, tmp_path, "-n", "-p", f"reports/smoke/{PAPER}", "--config", "scale=smoke",
                     "allow_stale=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report --scale smoke" in proc.stdout and "--allow-stale" in proc.stdout
    help_text = subprocess.run([sys.executable, "-m", f"papers.{PAPER}", "report", "-h"], cwd=REPO,
                               capture_output=True, text=True).stdout
    if "--allow-stale" not in help_text:
        pytest.skip("the report command has no --allow-stale yet (common/cli.py)")
    proc = snakemake(repo, tmp_path, "-n", f"reports/smoke/{PAPER}", "--config", "scale=smoke",
                     "allow_stale=maybe")
    one_error_line(proc, "allow_stale")


def test_an_unknown_paper_module_names_the_known_papers():
    proc = subprocess.run([sys.executable, "-m", "papers.nosuch", "run"], cwd=REPO, capture_output=True, text=True)
    one_error_line(proc, "'nosuch'", PAPER, "kd_svd")


def test_a_garbage_teacher_file_is_one_error_line_and_run_help_shows_teacher(tmp_path):
    garbage = tmp_path / "teacher.pt"
    garbage.write_bytes(os.urandom(3000))
    proc = subprocess.run([sys.executable, "-m", "papers.kd_svd", "run", "--scale", "smoke", "--setting", "kd_svd",
                           "--teacher", str(garbage), "--out", str(tmp_path / "r.json")], cwd=REPO,
                          capture_output=True, text=True)
    line = one_error_line(proc, str(garbage), "python -m papers.kd_svd teacher")
    assert "weights_only" not in proc.stderr and "weights_only" not in line
    helped = subprocess.run([sys.executable, "-m", "papers.kd_svd", "run", "-h"], cwd=REPO, capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "--teacher PATH" in helped.stdout and "--setting" in helped.stdout


def test_an_out_path_that_is_not_a_regular_file_is_refused(tmp_path):
    """A FIFO stands for /dev/full (which, as root, the rename replaced): refused before the run, left as it was."""
    fifo = tmp_path / "seed0.json"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", f"papers.{PAPER}", "run", "--scale", "smoke", "--setting", "dense",
                           "--out", str(fifo)], cwd=REPO, capture_output=True, text=True)
    one_error_line(proc, str(fifo), "not a regular file")
    assert fifo.is_fifo() and os.listdir(tmp_path) == ["seed0.json"]


def test_a_full_disk_while_saving_the_record_or_the_report_is_one_error_line(tmp_path, monkeypatch, capsys):
    from common import cli, results
    from papers.gradient_dropping.config import GradDropConfig

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def full_report(results_dir, out, scale):
        full(out / "figures" / "x.png", "")

    monkeypatch.setattr(results, "atomic_write_text", full)
    out = tmp_path / "seed0.json"
    rc = cli.main(PAPER, GradDropConfig, lambda cfg, seed, record, dev: None, full_report,
                  ["run", "--scale", "smoke", "--setting", "dense", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: could not write")
    assert str(out) in err and "No space left on device" in err and "free space" in err
    rc = cli.main(PAPER, GradDropConfig, None, full_report,
                  ["report", "--scale", "smoke", "--results", str(tmp_path), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "x.png (No space left on device)" in err


@needs_mnist
def test_a_read_only_results_folder_is_our_error_only(repo, tmp_path):
    """A read-only bind mount stands for a folder the user cannot write (root ignores file modes)."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare here")
    (tmp_path / "results").mkdir()
    cmd = (f"mount --bind -o ro {tmp_path}/results {tmp_path}/results && exec {SNAKEMAKE} -s {repo}/Snakefile "
           f"-d {tmp_path} -c1 reports/smoke/{PAPER} --config scale=smoke")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {tmp_path} {tmp_path}"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip("cannot make a read-only mount here (needs CAP_SYS_ADMIN)")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True)
    one_error_line(proc, f"{tmp_path}/results", "writable")
