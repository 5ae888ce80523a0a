"""Smoke runs of each paper's whole workflow (Snakemake, smoke scale) into a temporary folder."""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, needs_mnist

SNAKEMAKE = str(REPO / ".venv" / "bin" / "snakemake") if (REPO / ".venv" / "bin").exists() else "snakemake"


def run_workflow(paper: str, workdir, *extra: str, snakefile=REPO / "Snakefile") -> subprocess.CompletedProcess:
    """The smoke report of `paper` into workdir/reports/smoke/<paper> (the committed quick report's path,
    reports/<paper>, is never written at another scale)."""
    proc = subprocess.run([SNAKEMAKE, "-s", str(snakefile), "-d", str(workdir), "-c2", f"reports/smoke/{paper}",
                           "--config", "scale=smoke", *extra], capture_output=True, text=True,
                          env={**os.environ})
    logs = "".join(p.read_text() for p in (workdir / "logs").rglob("*.log")) if (workdir / "logs").exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]
    return proc


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
    committed = tmp_path / "reports" / "gradient_dropping" / "README.md"  # stands for the committed quick report
    committed.parent.mkdir(parents=True)
    committed.write_text("the committed quick report")
    run_workflow("gradient_dropping", tmp_path)
    assert committed.read_text() == "the committed quick report" and len(list(committed.parent.iterdir())) == 1
    out = tmp_path / "reports" / "smoke" / "gradient_dropping"
    check_report(out, ["accuracy_curves", "bytes", "layer_density"])
    record_path = tmp_path / "results/smoke/gradient_dropping/drop99/seed0.json"
    record = json.loads(record_path.read_text())
    assert record["scale"] == "smoke" and record["history"] and record["bytes_sent"] > 0
    assert record_path.stat().st_mode & 0o777 == 0o644  # readable by a group on a shared cluster disk
    log = (tmp_path / "logs/smoke/gradient_dropping/drop99/seed0.log").read_text()
    assert log.count("[gradient_dropping drop99 seed 0]") >= 2 and "runs done" in log  # progress lines
    html = tmp_path / "report.html"  # Snakemake's own HTML report, each figure and table with its own caption
    subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--report", str(html),
                    "reports/smoke/gradient_dropping", "--config", "scale=smoke"], check=True, capture_output=True)
    assert html.stat().st_size > 10_000
    captions = json.loads((out / "captions.json").read_text())
    assert {"accuracy_curves", "bytes", "layer_density"} <= set(captions)
    built_html = html

    # issue #28: on a fresh clone (the published report only, no results/), captions and README still reach it
    fresh = tmp_path / "fresh"
    shutil.copytree(out, fresh / "reports" / "smoke" / "gradient_dropping")
    html = fresh / "report.html"
    subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(fresh), "--report", str(html),
                    "reports/smoke/gradient_dropping", "--config", "scale=smoke"], check=True, capture_output=True)
    text = html.read_text()
    assert all(json.dumps(c)[1:-1] in text for c in captions.values())   # each caption, as the page's data
    assert "regime" in captions and "Verdict rules, symmetric" in text
    check_html_report_in_chromium(built_html, out)   # skips where Chromium is not installed
    check_html_report_in_chromium(html, fresh / "reports" / "smoke" / "gradient_dropping")


def check_html_report_in_chromium(html, out):
    """Open Snakemake's HTML report in headless Chromium (Debian's `chromium`, driven by Playwright): the
    paper's category lists every figure and table, each with its own caption, and the claims table holds every
    claim's text."""
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    captions = json.loads((out / "captions.json").read_text())
    claims = json.loads((out / "claims.json").read_text())
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--disable-quic"])
        page = browser.new_page()

        def open_category():
            page.goto(html.as_uri())
            page.get_by_text("Results").first.click()
            page.get_by_text(out.name).first.click()

        open_category()
        listed = page.inner_text("body")
        assert all(f"figures/{name}" in listed for name in figures) and "tables/claims.csv" in listed
        claims_csv = page.locator("tr", has_text="tables/claims.csv").first.locator("a[iconname=eye]")
        shown = base64.b64decode(claims_csv.get_attribute("href").split("base64,")[1]).decode()
        assert all(c["text"] in shown for c in claims)
        for name in figures:
            open_category()
            page.locator("tr", has_text=f"figures/{name}").first.locator("a[iconname=information-circle]").click()
            assert captions[name.removesuffix(".png")] in page.inner_text("body"), name
        # the regime table with its caption, and the report's README (setup, verdict rules, verdicts)
        open_category()
        page.locator("tr", has_text="tables/regime.csv").first.locator("a[iconname=information-circle]").click()
        assert captions["regime"] in page.inner_text("body")
        open_category()
        page.locator("tr", has_text="README.md").first.locator("a[iconname=information-circle]").click()
        shown = page.inner_text("body")
        assert "Setup" in shown and "Verdict rules, symmetric in the spread" in shown
        assert all(c["verdict"] in shown for c in claims)
        browser.close()


def copy_repo(dest: Path, papers: tuple[str, ...] | None = None) -> Path:
    """The workflow's files copied to `dest` (a repository a test may edit), returned; with `papers`, only
    those papers (the checks before a run then read only theirs)."""
    for name in ("Snakefile", "common", "papers", "workflow", "config", "pyproject.toml"):
        src = REPO / name
        if src.is_dir():
            keep = shutil.ignore_patterns("__pycache__")
            if name == "papers" and papers:
                keep = lambda folder, names: [n for n in names if n == "__pycache__" or  # noqa: E731
                                              (Path(folder) == src and (src / n).is_dir() and n not in papers)]
            shutil.copytree(src, dest / name, ignore=keep)
        else:
            shutil.copy(src, dest / name)
    return dest


@pytest.mark.workflow
@needs_mnist
def test_reruns_resume_and_a_failed_report_keeps_the_previous_one(tmp_path_factory):
    """Issue #11: a changed setting reruns only its runs, a changed claim only the report; a run killed with
    kill -9 resumes with the same command once its stale lock is gone; a report that fails leaves the
    previously published report in place."""
    repo, work = copy_repo(tmp_path_factory.mktemp("repo")), tmp_path_factory.mktemp("work")
    spec_path = repo / "papers" / "gradient_dropping" / "experiments.yaml"
    good = spec_path.read_text()
    base = [SNAKEMAKE, "-s", str(repo / "Snakefile"), "-d", str(work), "-c1", "--rerun-incomplete",
            "reports/smoke/gradient_dropping", "--config", "scale=smoke"]

    def dry_run_jobs(spec):
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        out = subprocess.run(base + ["-n", "--quiet", "rules"], capture_output=True, text=True).stdout
        return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit()}

    run_workflow("gradient_dropping", work, snakefile=repo / "Snakefile")
    published = work / "reports" / "smoke" / "gradient_dropping" / "claims.json"
    before = published.read_text()
    spec = yaml.safe_load(good)
    smoke_settings = spec["scales"]["smoke"]["settings"]
    changed = yaml.safe_load(good)
    changed["settings"][smoke_settings[0]]["lr"] = 0.05
    assert dry_run_jobs(changed).get("run") == len(spec["scales"]["smoke"]["seeds"])  # only that setting's runs
    changed = yaml.safe_load(good)
    changed["claims"][0]["margin"] = 0.123
    assert "run" not in dry_run_jobs(changed) and dry_run_jobs(changed).get("report") == 1

    # a report that fails (a claim's metric misspelt) keeps the published report
    changed["claims"][0]["metric"] = "no_such_metric"
    spec_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    assert subprocess.run(base, capture_output=True, text=True).returncode != 0
    assert published.read_text() == before
    spec_path.write_text(good)

    # kill -9 in the middle of a run, then the same command resumes
    shutil.rmtree(work / "results" / "smoke" / "gradient_dropping")
    shutil.rmtree(work / "logs")
    proc = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = work / "logs" / "smoke" / "gradient_dropping" / smoke_settings[0] / "seed0.log"
    deadline = time.time() + 120
    while not (log.exists() and "seed 0]" in log.read_text()) and time.time() < deadline:  # mid-run
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any((work / ".snakemake" / "locks").iterdir())
    unlock = subprocess.run([sys.executable, "-m", "common.workflow", "unlock-if-stale", str(work)], cwd=REPO,
                            capture_output=True, text=True)
    assert "stale" in unlock.stdout
    run_workflow("gradient_dropping", work, "--rerun-incomplete", snakefile=repo / "Snakefile")
    assert _accuracy_claims(published.read_text()) == _accuracy_claims(before)  # the same numbers (timings aside)


def _accuracy_claims(claims_json: str) -> dict:
    return {c["id"]: c["per_seed"] for c in json.loads(claims_json) if "acc" in c["metric"]}


@pytest.mark.workflow
@needs_mnist
def test_compare_workflow(tmp_path):
    run_workflow("compare", tmp_path)
    out = tmp_path / "reports" / "smoke" / "compare"
    check_report(out, ["curves_mnist", "final_accuracy", "partitions"])
    assert "fedprox" in (out / "tables" / "final_mnist.csv").read_text()


def _slurm_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout.strip() \
            in ("idle", "mixed", "allocated")
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.workflow
@needs_mnist
@pytest.mark.skipif(not _slurm_up(), reason="no SLURM here (CI starts one: profiles/slurm/start-local-cluster.sh)")
def test_slurm_profile_gives_the_local_results(tmp_path):
    """The smoke workflow through profiles/slurm (each run a SLURM job, the SLURM executor plugin) gives the
    same run records as the local run."""
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    run_workflow("gradient_dropping", local)
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(cluster), "--profile",
                           str(REPO / "profiles" / "slurm"), "reports/smoke/gradient_dropping", "--config",
                           "scale=smoke"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted with SLURM jobid" in proc.stdout + proc.stderr
    records = sorted((local / "results").rglob("seed*.json"))
    assert records
    for path in records:
        a, b = json.loads(path.read_text()), json.loads((cluster / path.relative_to(local)).read_text())
        keep = lambda h: {k: v for k, v in h.items() if "time" not in k}  # noqa: E731  (wall clock differs)
        assert [keep(h) for h in a["history"]] == [keep(h) for h in b["history"]], path
        assert {k: v for k, v in a["summary"].items() if "acc" in k or "bytes" in k} == \
               {k: v for k, v in b["summary"].items() if "acc" in k or "bytes" in k}, path


# ------------------------------------------------------------------ publish (issue #28: never lose the report)
def _report(folder: Path, text: str) -> Path:
    (folder / "figures").mkdir(parents=True)
    (folder / "claims.json").write_text("[]")
    (folder / "README.md").write_text(text)
    (folder / "figures" / "f.png").write_bytes(b"png" * 100)
    return folder


def _modes(folder: Path) -> set[int]:
    return {p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}


def test_publish_swaps_the_report_in_with_0644_files_and_0755_folders(tmp_path):
    from common import publish

    built, published = _report(tmp_path / "built", "new"), _report(tmp_path / "reports" / "p", "old")
    old = os.umask(0o077)
    try:
        os.chmod(built / "README.md", 0o600)
        publish.publish(built, tmp_path / "reports" / "q")   # a first publish, into folders it creates
        publish.publish(built, published)
    finally:
        os.umask(old)
    assert (published / "README.md").read_text() == "new" and sorted(os.listdir(tmp_path / "reports")) == ["p", "q"]
    assert _modes(published) == {0o644, 0o755} and _modes(tmp_path / "reports" / "q") == {0o644, 0o755}


def test_a_publish_that_fails_keeps_the_previous_report(tmp_path):
    from common import publish

    built, published = _report(tmp_path / "built", "new"), _report(tmp_path / "reports" / "p", "old")
    os.mkfifo(built / "figures" / "pipe.png")   # copytree refuses a named pipe, half way through the copy
    with pytest.raises(publish.PublishError, match="published report is unchanged"):
        publish.publish(built, published)
    assert (published / "README.md").read_text() == "old" and os.listdir(tmp_path / "reports") == ["p"]
    (built / "figures" / "pipe.png").unlink()
    publish.publish(built, published)   # the same command afterwards publishes
    assert (published / "README.md").read_text() == "new"


def test_a_publish_killed_midway_keeps_the_previous_report(tmp_path):
    built, published = _report(tmp_path / "built", "new"), _report(tmp_path / "reports" / "p", "old")
    (built / "big.bin").write_bytes(b"\0" * 400_000_000)   # a copy long enough to be killed in
    cmd = [sys.executable, "-m", "common.publish", str(built), str(published)]
    proc = subprocess.Popen(cmd, cwd=REPO)
    staging = tmp_path / "reports" / ".p.publishing" / "big.bin"
    deadline = time.time() + 60
    while not staging.exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert staging.exists(), "the publish ended before it could be killed"
    assert (published / "README.md").read_text() == "old" and not (published / "big.bin").exists()
    (built / "big.bin").unlink()
    assert subprocess.run(cmd, cwd=REPO).returncode == 0   # the same command afterwards publishes
    assert (published / "README.md").read_text() == "new" and os.listdir(tmp_path / "reports") == ["p"]


def test_the_two_rename_fallback_killed_between_its_renames_is_recovered(tmp_path, monkeypatch):
    """Without renameat2's exchange the old report moves aside, then the new one takes its name; a publish
    killed between the two leaves no report at its path: the next publish puts the old one back first."""
    from common import publish

    built, published = _report(tmp_path / "built", "new"), _report(tmp_path / "reports" / "p", "old")
    real_rename, calls = os.rename, []

    def killed_after_the_first_rename(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt   # stands for kill -9 between the renames
        real_rename(src, dst)

    monkeypatch.setattr(publish.os, "rename", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        publish.swap_in(_report(tmp_path / "reports" / ".p.publishing", "new"), published, exchange=lambda a, b: False)
    assert not published.exists() and (tmp_path / "reports" / ".p.previous" / "README.md").read_text() == "old"
    monkeypatch.setattr(publish.os, "rename", real_rename)
    publish.recover(published)
    assert (published / "README.md").read_text() == "old" and os.listdir(tmp_path / "reports") == ["p"]
    publish.publish(built, published)
    assert (published / "README.md").read_text() == "new" and os.listdir(tmp_path / "reports") == ["p"]


def test_renameat2_exchange_swaps_two_folders(tmp_path):
    from common import publish

    a, b = _report(tmp_path / "a", "a"), _report(tmp_path / "b", "b")
    if not publish._renameat2_exchange(a, b):
        pytest.skip("no RENAME_EXCHANGE on this kernel or file system (the two-rename fallback is used)")
    assert (a / "README.md").read_text() == "b" and (b / "README.md").read_text() == "a"


@pytest.mark.workflow
@needs_mnist
def test_a_failed_or_killed_publish_keeps_the_published_report(tmp_path_factory):
    """Issue #28: Snakemake deletes a plain directory() output before its job and after a failure; the publish
    output is update() and swapped in by rename. A publish that fails, and one killed with kill -9 midway, leave
    the published report; the same command then publishes. Under umask 077 every file is 0644, every folder 0755."""
    repo = copy_repo(tmp_path_factory.mktemp("repo"), ("gradient_dropping",))
    work = tmp_path_factory.mktemp("work")
    base = [SNAKEMAKE, "-s", str(repo / "Snakefile"), "-d", str(work), "-c1", "--rerun-incomplete",
            "--forcerun", "publish", "reports/smoke/gradient_dropping", "--config", "scale=smoke"]
    strict = dict(preexec_fn=lambda: os.umask(0o077))
    assert subprocess.run(base, capture_output=True, text=True, **strict).returncode == 0
    published, built = work / "reports/smoke/gradient_dropping", work / "results/smoke/gradient_dropping/report"
    assert _modes(published) == {0o644, 0o755} and _modes(work / "results") == {0o644, 0o755}
    before = {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()}

    def unchanged():
        return {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()} == before

    os.mkfifo(built / "pipe.png")   # the copy fails half way
    failed = subprocess.run(base, capture_output=True, text=True)
    assert failed.returncode != 0 and "published report is unchanged" in failed.stdout + failed.stderr
    assert unchanged()
    (built / "pipe.png").unlink()

    (built / "big.bin").write_bytes(b"\0" * 400_000_000)   # a copy long enough to be killed in
    proc = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    staging = published.with_name(".gradient_dropping.publishing") / "big.bin"
    deadline = time.time() + 120
    while not staging.exists() and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging.exists(), "the publish ended before it could be killed"
    assert unchanged()
    (built / "big.bin").unlink()
    subprocess.run([sys.executable, "-m", "common.workflow", "unlock-if-stale", str(work)], cwd=REPO, check=True)
    again = subprocess.run(base, capture_output=True, text=True)   # the same command publishes
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stale backup" in again.stderr and "published reports/smoke/gradient_dropping" in again.stdout + again.stderr
    assert sorted(os.listdir(published.parent)) == ["gradient_dropping"] and unchanged()  # same numbers and files


def test_a_stale_snakemake_backup_is_removed_or_put_back(tmp_path):
    """A run killed during a publish leaves Snakemake's backup (.snakemake/backups/<report>), which would make the
    next publish fail (FileExistsError): removed when the report holds the same files, else put back in place
    (Snakemake killed while restoring the report after a failed publish)."""
    from common import publish

    rel = Path("reports/smoke/p")
    backup = _report(tmp_path / ".snakemake" / "backups" / rel, "old")
    shutil.copytree(backup, tmp_path / rel)
    assert "removed" in publish.clear_stale_backup(rel, tmp_path) and not backup.exists()
    _report(backup, "old")
    (tmp_path / rel / "figures" / "f.png").unlink()   # a restore cut short
    assert "restored" in publish.clear_stale_backup(rel, tmp_path)
    assert (tmp_path / rel / "figures" / "f.png").exists() and not backup.exists()
    assert os.listdir(tmp_path / rel.parent) == ["p"] and publish.clear_stale_backup(rel, tmp_path) == ""
