"""What the Snakefile needs, as plain functions (so the rules stay thin and this is testable).

Paths (the scale is in every path but the committed one):
    results/<scale>/<paper>/<setting>/seed<k>.json   one run record per job
    results/<scale>/<paper>/report/                   the report as built from those records
    reports/<paper>/                                  the published quick report (committed)
    reports/<scale>/<paper>/                          the published smoke or paper report (not committed)
The report is built under results/ and compared with the published one (common.reproduce), then `publish`
moves it into place, so a failed build or another scale never touches the committed report.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from common import experiments, provenance

REPO = Path(__file__).resolve().parent.parent
PUBLISHED_SCALE = "quick"   # the scale whose reports are committed as reports/<paper>/


def fail(message: str) -> None:
    """A user error, before any job: one line, no traceback, nothing written."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    sys.exit(2)


def config_file(path: str) -> str:
    """The workflow's config file, checked to be YAML first (Snakemake's own message would not say where)."""
    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        fail(f"{path} is not valid YAML{f' at line {mark.line + 1}' if mark else ''}: fix the workflow config file")
    return path


def check_config(config: dict, schema_path: str) -> None:
    """The workflow config against its JSON schema, with the offending key named (before Snakemake's own
    validate, which fills the defaults)."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "config"
        fail(f"workflow config: {where}: {error.message}; see {Path(schema_path).relative_to(REPO)} for every key "
             "and its allowed values")


def setup_environment(config: dict, basedir: str) -> None:
    """Every job imports the repository's code and reads the one data root: PYTHONPATH and, unless the user set
    it, REPLICATIONS_DATA from the config's data_root (relative to the repository). The device reaches the jobs
    as REPLICATIONS_DEVICE, so it is no rerun trigger: the same seed gives the same numbers, up to float rounding,
    on any device."""
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (basedir, os.environ.get("PYTHONPATH")) if p)
    os.environ["REPLICATIONS_DEVICE"] = config.get("device", "auto")
    if config.get("data_root") and not os.environ.get("REPLICATIONS_DATA"):
        os.environ["REPLICATIONS_DATA"] = os.path.join(basedir, os.path.expanduser(config["data_root"]))


def papers() -> list[str]:
    return sorted(p.name for p in (REPO / "papers").iterdir() if (p / "experiments.yaml").exists())


def parse_seeds(value):
    """`--config seeds=[0,1]` reaches the config as ['0', '1'] and `seeds=0,1` as '0,1': read the items as YAML
    scalars, so integers become ints (anything else is left for the schema to reject by name)."""
    if isinstance(value, str):
        value = value.strip("[]").split(",") if value.strip("[] ") else []
    if isinstance(value, list):
        return [yaml.safe_load(v) if isinstance(v, str) and v.strip() else v for v in value]
    return [value] if isinstance(value, int) else value


def parse_flag(value):
    """`--config allow_stale=true` reaches the config as the string 'true': read it as a YAML scalar (anything
    but a boolean is left for the schema to reject by name)."""
    return yaml.safe_load(value) if isinstance(value, str) and value.strip() else value


def build_name(scale: str, seeds: list[int] | None = None) -> str:
    """The folder a build's report goes to: the scale, or `<scale>-seeds-0-1` when `--config seeds=...` replaces
    the scale's own seeds (such a build never publishes over the committed report)."""
    return f"{scale}-seeds-{'-'.join(map(str, seeds))}" if seeds else scale


def report_dir(paper: str, scale: str, seeds: list[int] | None = None) -> str:
    build = build_name(scale, seeds)
    return f"reports/{paper}" if build == PUBLISHED_SCALE else f"reports/{build}/{paper}"


def _config_hint(build: str) -> str:
    """`--config scale=X seeds=[..]`, the options that make a build of that folder name."""
    scale, _, seeds = build.partition("-seeds-")
    return f"--config scale={scale}" + (f" seeds=[{','.join(seeds.split('-'))}]" if seeds else "")


def target_papers(argv: list[str], scale: str, seeds: list[int] | None = None) -> list[str]:
    """The papers the command line asks for (all of them when no target names one). A target whose folder is
    not this build's (reports/<paper> at another scale or with other seeds: the committed report;
    reports/smoke/<paper> without `--config scale=smoke`) is a user error naming the command that builds it."""
    known, build = papers(), build_name(scale, seeds)
    named = []
    for arg in argv:
        parts = arg.strip("/").split("/")
        if parts[0] == "reports" and len(parts) == 2 and parts[1] in known and build != PUBLISHED_SCALE:
            fail(f"reports/{parts[1]} is the committed {PUBLISHED_SCALE} report; this build "
                 f"({_config_hint(build)}) is reports/{build}/{parts[1]}: run snakemake reports/{build}/{parts[1]} "
                 f"{_config_hint(build)}")
        if parts[0] == "reports" and len(parts) >= 2 and parts[-1] not in known and parts[-1] != "README.md":
            fail(f"unknown paper {parts[-1]!r} in {arg}; known: {', '.join(known)}")
        if parts[0] == "reports" and len(parts) == 3 and parts[1] != build:
            if not re.fullmatch(rf"({'|'.join(experiments.SCALES)})(-seeds(-\d+)+)?", parts[1]):
                fail(f"{arg}: no build makes reports/{parts[1]}/; the reports are reports/<paper> (quick), "
                     f"reports/<scale>/<paper> and reports/<scale>-seeds-<k>-.../<paper>")
            fail(f"{arg} is made with {_config_hint(parts[1])}: run snakemake {arg} {_config_hint(parts[1])}")
        named += [p for p in parts[1:] if p in known] if parts[0] in ("reports", "results") else []
    return sorted(set(named)) or known


def announce_build(scale: str, seeds: list[int] | None) -> str:
    """Where a build with its own seeds goes (printed before it starts); empty for the scale's own seeds."""
    if not seeds:
        return ""
    build = build_name(scale, seeds)
    return (f"seeds {seeds} replace every seed list of the {scale} scale (setting_seeds included): the reports "
            f"are built under results/{build}/<paper>/report and published to reports/{build}/<paper>; the "
            f"{scale} reports (reports/{'<paper>' if scale == PUBLISHED_SCALE else scale + '/<paper>'}) are not "
            "touched")


def dry_run(argv: list[str]) -> bool:
    """Whether Snakemake was asked for a dry run (-n, --dry-run, or -n among short flags such as -np)."""
    return any(a in ("-n", "--dry-run", "--dryrun") or (re.fullmatch(r"-[a-zA-Z]+", a) and "n" in a)
               for a in argv)


def check_writable(folders: list[str]) -> None:
    """Each folder the jobs write (or the nearest part of its path that exists) is writable: else one line
    before any job, instead of a failed job and Snakemake's own traceback."""
    for folder in folders:
        path = Path(folder).absolute()
        while not path.exists() and path != path.parent:
            path = path.parent
        if not os.access(path, os.W_OK | os.X_OK):
            fail(f"cannot write {path} (read-only or not yours), where this build writes {folder}: make it "
                 f"writable (chmod -R u+w {path}) or run from a writable copy of the repository (-d DIR)")


def clear_stale_backups(workdir: str = ".") -> list[str]:
    """Snakemake's backups of published reports left by a killed publish (.snakemake/backups/reports/...):
    removed (or put back where the report is missing), so the same command publishes again. Only when no other
    Snakemake runs in `workdir`. Returns what was done."""
    from common import publish

    backups = Path(workdir, ".snakemake", "backups")
    if not backups.exists() or _other_snakemake_running(workdir):
        return []
    found = [p for p in backups.rglob("claims.json")]
    done = [publish.clear_stale_backup(p.parent.relative_to(backups), Path(workdir)) for p in found]
    return [d for d in done if d]


def check_before_running(paper_list: list[str], scale: str, device: str | None = None) -> None:
    """Every setting, claim and data set of the requested papers at this scale (common.validate), and the device
    when given (the jobs run on this machine)."""
    device_arg = ["--device", device] if device else []
    proc = subprocess.run([sys.executable, "-m", "common.validate", "--scale", scale, *device_arg, *paper_list], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        fail(proc.stderr.strip().removeprefix("error: ") or f"the check of {paper_list} failed")


def code_hash(patterns: list[str]) -> str:
    h = hashlib.sha1()
    for pattern in patterns:
        for path in sorted(REPO.glob(pattern)):
            h.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return h.hexdigest()[:12]


def run_code(record: str) -> str:
    """The code trigger of a run (a params trigger): the files its record says it loaded (common/provenance.py).
    While they are as they were, the value the run was started with (kept in the record as `trigger`, so the
    value Snakemake stored for the job is given back); once one changes, `changed:<hash of them now>`, so exactly
    the runs that loaded a changed file rerun. A run not yet made: `new`."""
    path = REPO / record
    if not path.exists():
        return "new"
    try:
        made = json.loads(path.read_text())
    except (OSError, ValueError):
        return "unreadable"
    files = made.get("code_files") or {}
    if files and not provenance.changed_files(files):
        return made.get("trigger") or "new"
    return "changed:" + provenance.code_hash([files])


def run_settings(paper: str, scale: str, setting: str) -> str:
    """The resolved overrides of one run, as JSON: a changed setting reruns its runs (a params trigger)."""
    return json.dumps(experiments.resolve(paper, scale, setting), sort_keys=True)


def report_inputs(paper: str) -> str:
    """Hash of what the report reads besides the run records: experiments.yaml and the report code."""
    return code_hash([f"papers/{paper}/experiments.yaml", f"papers/{paper}/figures.py", "common/report.py",
                      "common/claims.py", "common/provenance.py", "common/plots.py"])


def gpus_per_run(config: dict) -> int:
    """The GPUs a run job asks for (Snakemake's `gpu` resource; SLURM: --gpus): one when the device is CUDA, or
    `auto` at the paper scale (made for a GPU); none otherwise."""
    device = config.get("device", "auto")
    return int(device.startswith("cuda") or (device == "auto" and config["scale"] == "paper"))


RUN_RESOURCES = {"smoke": {"mem_mb": 4000, "runtime": 120}, "quick": {"mem_mb": 4000, "runtime": 120},
                 "paper": {"mem_mb": 8000, "runtime": 720}}   # defaults per scale (MB, minutes)


def run_resources(paper: str, scale: str) -> dict:
    """Memory (MB) and time limit (minutes) of one run job (what a cluster is asked for): the paper's
    `resources: {<scale>: {mem_mb, runtime}}` in experiments.yaml where it sets them, else RUN_RESOURCES."""
    own = (experiments.experiments(paper).get("resources") or {}).get(scale) or {}
    return {k: int(own.get(k, v)) for k, v in RUN_RESOURCES[scale].items()}


def paper_scale_estimate(paper_list: list[str], scale: str) -> str:
    """What `benchmarks/paper_scale.py` measured for these papers (runs, hours per device), printed before a
    paper-scale build starts; empty at other scales or when nothing was measured."""
    path = REPO / "benchmarks" / "results" / "paper_scale.json"
    if scale != "paper" or not path.exists():
        return ""
    measured = json.loads(path.read_text())
    lines = []
    for paper in paper_list:
        rows = [r for r in measured.get("papers", []) if r["paper"] == paper]
        costs = ", ".join(
            f"not measurable on {r['device_name']} (a round outlasted the benchmark's limit there)"
            if r["runs_not_measured"] == r["runs"] else
            f"about {r['device_hours']:.1f} h on {r['device_name']}"
            + (f" (+{r['runs_not_measured']} runs too slow to time there)" if r["runs_not_measured"] else "")
            for r in rows)
        if rows:
            lines.append(f"[{paper}] paper scale: {rows[0]['runs']} runs; device time {costs} "
                         "(benchmarks/paper_scale.py; divide by the jobs run at once)")
        else:
            lines.append(f"[{paper}] paper scale: cost not measured yet (python benchmarks/paper_scale.py {paper})")
    return "\n".join(lines)


def run_records(paper: str, scale: str, seeds: list[int] | None) -> list[str]:
    return [f"results/{scale}/{paper}/{run}.json" for run in experiments.run_ids(paper, scale, seeds)]


# ---------------------------------------------------------------------------------------- cached teachers
# A paper whose scale names a `teacher:` in experiments.yaml (KD-SVD) trains one teacher per seed with
# `python -m papers.<paper> teacher --scale S --seed k --out results/<scale>/<paper>/teacher/seed<k>.pt` (rule
# teacher, workflow/rules/teachers.smk; the record beside it is teacher/teacher-seed<k>.json); every run of that
# seed takes the weights as an input and reads them from that path (the paper's CLI derives it from --out:
# results/<scale>/<paper>/<setting>/seed<k>.json -> ../../teacher/seed<k>.pt), so rule run's command and params, which
# are rerun triggers of every paper's runs, are unchanged. Other papers' runs get no input.
def teacher_spec(paper: str, scale: str) -> dict | None:
    """The scale's teacher overrides (experiments.yaml `scales.<scale>.teacher`), or None: no teacher."""
    spec = experiments.scale_spec(paper, scale)
    return (spec.get("teacher") or {}) if "teacher" in spec else None


def teacher_papers() -> list[str]:
    """The papers with a teacher at some scale."""
    return [p for p in papers() if any("teacher" in (s or {}) for s in experiments.experiments(p)["scales"].values())]


def teacher_path(paper: str, scale: str, seed) -> str:
    """Where rule teacher writes a seed's teacher (and where the paper's `run` looks for it by default)."""
    return f"results/{scale}/{paper}/teacher/seed{seed}.pt"


def teacher_record(paper: str, scale: str, seed) -> str:
    return f"results/{scale}/{paper}/teacher/teacher-seed{seed}.json"


def run_teacher(paper: str, scale: str, seed) -> dict:
    """Rule run's extra input: {"teacher": <the seed's teacher weights>} for a paper with a teacher at this
    scale, else nothing."""
    return {"teacher": teacher_path(paper, scale, seed)} if teacher_spec(paper, scale) is not None else {}


def teacher_settings(paper: str, scale: str) -> str:
    """The scale's teacher overrides as JSON: a changed teacher config retrains the teachers (a params trigger;
    the students follow, their input being newer)."""
    return json.dumps(teacher_spec(paper, scale), sort_keys=True)


def teacher_records(paper: str, scale: str, seeds: list[int] | None) -> list[str]:
    """The teachers' records a report reads (one per seed its runs use), none for a paper without a teacher."""
    if teacher_spec(paper, scale) is None:
        return []
    used = sorted({int(run.rsplit("seed", 1)[1]) for run in experiments.run_ids(paper, scale, seeds)})
    return [teacher_record(paper, scale, seed) for seed in used]


# for a report published before common.report wrote the regime table's caption
REGIME_CAPTION = "Regime: each baseline the claims read against its reference (ratio = ours / reference)"


def captions(published: str, build: str) -> dict:
    """The figures' and tables' own captions (written by common.report.Report) for Snakemake's HTML report: the
    published report's captions.json (committed: there on a fresh clone), else the build's; paths are relative
    to Snakemake's working directory."""
    for folder in (published, build):
        path = Path(folder) / "captions.json"
        if path.exists():
            return {"regime": REGIME_CAPTION, **json.loads(path.read_text())}
    return {}


def readme_rst(published: str) -> str:
    """The published report's README.md (setup, verdict rules, verdicts) as reStructuredText for the HTML
    report's caption of README.md: rendered to HTML where markdown-it-py is installed, else shown as text."""
    path = Path(published) / "README.md"
    if not path.exists():
        return ""
    text = path.read_text()
    try:
        from markdown_it import MarkdownIt

        html = MarkdownIt("commonmark").enable("table").render(text)
        return ".. raw:: html\n\n" + "\n".join("   " + line for line in html.splitlines()) + "\n"
    except ImportError:
        return "::\n\n" + "\n".join("   " + line for line in text.splitlines()) + "\n"


def _other_snakemake_running(workdir: str) -> bool:
    """Whether a Snakemake process other than this one (and its parent) runs in `workdir`."""
    here, mine = Path(workdir).resolve(), {os.getpid(), os.getppid()}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if int(proc.name) not in mine and any(b"snakemake" in part for part in cmd[:2]) \
                    and Path(os.readlink(proc / "cwd")) == here:
                return True
        except (OSError, ValueError):
            continue
    return False


def unlock_if_stale(workdir: str) -> bool:
    """Remove Snakemake's lock in `workdir` when no Snakemake process runs there (a run killed with kill -9
    leaves its lock behind; the same command then resumes). Returns whether a stale lock was removed."""
    locks = Path(workdir, ".snakemake", "locks")
    if not locks.exists() or not any(locks.iterdir()):
        return False
    if _other_snakemake_running(workdir):
        return False
    for lock in locks.iterdir():
        lock.unlink()
    return True


if __name__ == "__main__":
    # `python -m common.workflow unlock-if-stale [DIR]` (the Makefile runs it before every report)
    if sys.argv[1:2] == ["unlock-if-stale"] and unlock_if_stale(sys.argv[2] if len(sys.argv) > 2 else "."):
        print("removed a stale Snakemake lock (no Snakemake runs here): resuming")
