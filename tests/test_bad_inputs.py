"""The fuzz test of issues #11 and #28: over 50 kinds of bad input, each answered with one clear `error:` line that
names the problem, a non-zero exit, no traceback, and nothing written under results/ or reports/.

Three entry points: the workflow (`snakemake reports/...`, checked while Snakemake parses, before any job), a
copy of the repository whose experiments.yaml or config is broken, and a paper's own CLI (`python -m papers.<p>
run|report`). The cases run two at a time (each starts a Python with torch)."""
import gzip
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA, needs_mnist

SNAKEMAKE = str(REPO / ".venv" / "bin" / "snakemake") if (REPO / ".venv" / "bin").exists() else "snakemake"
PAPER = "gradient_dropping"
COPIED = ["Snakefile", "common", "papers", "workflow", "config", "profiles", "pyproject.toml"]


def _spec(mutate):
    def apply(spec):
        mutate(spec)
        return spec
    return apply


def _first_claim(**kw):
    return _spec(lambda s: s["claims"][0].update(kw))


def _drop_claim_key(key):
    return _spec(lambda s: s["claims"][0].pop(key))


def _setting(**kw):
    return _spec(lambda s: s["settings"][next(iter(s["settings"]))].update(kw))


def _rename_scale_key(scale, key, typo):
    return _spec(lambda s: s["scales"][scale].update({typo: s["scales"][scale].pop(key)}))


# (name, where, arguments or mutation, words the one error line must contain)
WORKFLOW = [  # snakemake <target> --config scale=smoke <extra>
    ("scale unknown", ["reports/smoke/" + PAPER], ["scale=huge"], "scale"),
    ("scale wrong case", ["reports/smoke/" + PAPER], ["scale=Quick"], "scale"),
    ("seed negative", ["reports/smoke/" + PAPER], ["seeds=-1"], "seeds"),
    ("seed not a number", ["reports/smoke/" + PAPER], ["seeds=x"], "seeds"),
    ("seed list with a word", ["reports/smoke/" + PAPER], ["seeds=[0,x]"], "seeds"),
    ("seed fractional", ["reports/smoke/" + PAPER], ["seeds=1.5"], "seeds"),
    ("threads zero", ["reports/smoke/" + PAPER], ["threads_per_run=0"], "threads_per_run"),
    ("threads negative", ["reports/smoke/" + PAPER], ["threads_per_run=-2"], "threads_per_run"),
    ("threads a word", ["reports/smoke/" + PAPER], ["threads_per_run=two"], "threads_per_run"),
    ("unknown config key", ["reports/smoke/" + PAPER], ["thread=2"], "thread"),
    ("data root a number", ["reports/smoke/" + PAPER], ["data_root=[1]"], "data_root"),
    ("device unknown", ["reports/smoke/" + PAPER], ["device=tpu"], "device"),
    ("device a GPU this machine lacks", ["reports/smoke/" + PAPER], ["device=cuda:99"], "cuda:99"),
    ("unknown paper", ["reports/smoke/nope"], [], "nope"),
    ("unknown paper, quick path", ["reports/fedfoo"], [], "fedfoo"),
    ("committed path at another scale", ["reports/" + PAPER], [], "committed"),
]
DATA = [  # the workflow with a damaged or missing data root
    ("data root missing", "missing", "not found"),
    ("data file corrupted", "corrupt", "sha256"),
    ("data file truncated", "truncated", "sha256"),
    ("data file removed", "removed", "not found"),
]
COPY = [  # a repository copy whose experiments.yaml or config is broken
    ("experiments.yaml not YAML", "yaml_text", "key: [unclosed", "not valid YAML"),
    ("experiments.yaml a list", "yaml_text", "- 1\n- 2\n", "mapping"),
    ("experiments.yaml without settings", "spec", _spec(lambda s: s.pop("settings")), "settings"),
    ("scale lists an unknown setting", "spec", _spec(lambda s: s["scales"]["smoke"].update(settings=["nope"])),
     "nope"),
    ("claim of unknown kind", "spec", _first_claim(kind="bigger"), "bigger"),
    ("claim without origin", "spec", _drop_claim_key("origin"), "origin"),
    ("claim of unknown origin", "spec", _first_claim(origin="folklore"), "folklore"),
    ("claim naming an undefined setting", "spec", _first_claim(a="dense_typo"), "dense_typo"),
    ("setting with an unknown key", "spec", _setting(dropratio=0.9), "dropratio"),
    ("setting out of range", "spec", _setting(lr=-1.0), "lr"),
    ("setting of the wrong type", "spec", _setting(steps="many"), "steps"),
    ("regime row without a reference", "spec",
     _spec(lambda s: s.update(regime=[{"baseline": "x", "setting": "dense", "metric": "final_test_acc",
                                       "reference_source": "-"}])), "reference"),
    ("workflow config not YAML", "config_text", "scale: [quick\n", "config"),
    # issue #28: every key of experiments.yaml against its schema, every metric against the declared summaries,
    # every method when the config is built: all before any job
    ("scale key misspelt: setings", "spec", _rename_scale_key("smoke", "settings", "setings"), "setings"),
    ("scale key misspelt: bsae", "spec", _rename_scale_key("smoke", "base", "bsae"), "bsae"),
    ("scale key misspelt: sedes", "spec", _rename_scale_key("smoke", "seeds", "sedes"), "sedes"),
    ("scale key misspelt: setting_sedes", "spec", _rename_scale_key("quick", "setting_seeds", "setting_sedes"),
     "setting_sedes"),
    ("unknown top-level key", "spec", _spec(lambda s: s.update(regmie=s.pop("regime"))), "regmie"),
    ("claim with a misspelt key", "spec", _first_claim(metirc="final_test_acc"), "metirc"),
    ("claim metric misspelt", "spec", _first_claim(metric="final_tset_acc"), "final_tset_acc"),
    ("regime metric misspelt", "spec", _spec(lambda s: s["regime"][0].update(metric="final_tset_acc")),
     "final_tset_acc"),
    ("reported metric misspelt", "spec",
     _spec(lambda s: next(r for r in s["reported"] if r.get("metric")).update(metric="upload_reducton")),
     "upload_reducton"),
    ("unknown method", "spec", _spec(lambda s: s["settings"][s["scales"]["smoke"]["settings"][0]].update(
        method="fedfoo")), "fedfoo", "fedntd"),
]
CLI = [  # python -m papers.<paper> ... (each writes nothing)
    ("cli seed negative", ["run", "--setting", "dense", "--seed", "-1"], "--seed"),
    ("cli threads zero", ["run", "--setting", "dense", "--threads", "0"], "--threads"),
    ("cli value out of range", ["run", "--setting", "dense", "--set", "lr=-1"], "lr"),
    ("cli unknown key", ["run", "--setting", "dense", "--set", "nokey=1"], "nokey"),
    ("cli set without =", ["run", "--setting", "dense", "--set", "lr"], "key=value"),
    ("cli unknown setting", ["run", "--setting", "nope"], "nope"),
    ("cli unwritable out", ["run", "--setting", "dense", "--out", "/proc/no/such/x.json"], "writable"),
    ("cli report without records", ["report", "--results", "{tmp}/none", "--out", "{tmp}/reports/x"],
     "no run records"),
    ("cli unknown scale", ["run", "--scale", "huge", "--setting", "dense"], "huge"),
    ("cli device unknown", ["run", "--setting", "dense", "--device", "gpu"], "device"),
    ("cli device a GPU this machine lacks", ["run", "--setting", "dense", "--device", "cuda:99"], "cuda:99"),
]


def _assert_one_clear_error(proc, words, tmp_path):
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if line.startswith("error:") or ": error:" in line]
    assert proc.returncode != 0, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    assert len(errors) == 1 and words.lower() in errors[0].lower(), text[-2000:]
    for folder in ("results", "reports"):
        left = [p for p in (tmp_path / folder).rglob("*") if p.is_file()] if (tmp_path / folder).exists() else []
        assert not left, left


def _snakemake(snakefile, workdir, targets, config, env=None):
    return subprocess.run([SNAKEMAKE, "-s", str(snakefile), "-d", str(workdir), "-c1", *targets,
                           "--config", "scale=smoke", *config], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _parallel(fn, cases):
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(fn, cases))


@needs_mnist
def test_bad_workflow_config_and_targets(tmp_path):
    def one(case):
        name, targets, config, _ = case
        work = tmp_path / name.replace(" ", "_").replace(",", "")
        work.mkdir()
        return work, _snakemake(REPO / "Snakefile", work, targets, config)

    for (name, *_, words), (work, proc) in zip(WORKFLOW, _parallel(one, WORKFLOW)):
        _assert_one_clear_error(proc, words, work)


@needs_mnist
def test_missing_or_damaged_data_is_caught_before_any_job_even_with_a_warm_cache(tmp_path):
    """The cache is warmed from the good root first, so a cache keyed by name alone would accept every case."""
    warm = tmp_path / "cache"
    env = {"REPLICATIONS_CACHE": str(warm)}
    subprocess.run([sys.executable, "-c", "from common import data; data.load('mnist', 'train')"], cwd=REPO,
                   check=True, env={**os.environ, **env, "REPLICATIONS_DATA": str(SHARED_DATA)})
    cases = []
    for name, kind, words in DATA:
        root = tmp_path / name.replace(" ", "_")
        if kind != "missing":
            shutil.copytree(SHARED_DATA / "MNIST", root / "MNIST")
        target = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
        if kind == "corrupt":
            raw = bytearray(gzip.decompress(target.read_bytes()))
            raw[100] = (raw[100] + 1) % 10
            target.write_bytes(gzip.compress(bytes(raw)))
        elif kind == "truncated":
            target.write_bytes(target.read_bytes()[:1000])
        elif kind == "removed":
            target.unlink()
        work = tmp_path / f"work_{kind}"
        work.mkdir()
        cases.append((work, {**env, "REPLICATIONS_DATA": str(root)}, words))

    def one(case):
        work, case_env, _ = case
        return _snakemake(REPO / "Snakefile", work, ["reports/smoke/" + PAPER], [], case_env)

    for (work, _, words), proc in zip(cases, _parallel(one, cases)):
        _assert_one_clear_error(proc, words, work)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    for name in COPIED:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name, **(
            {"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    return root


@needs_mnist
def test_broken_experiments_and_config_files(repo_copy, tmp_path):
    config_path = repo_copy / "config" / "config.yaml"
    good_config = config_path.read_text()
    for name, kind, change, words, *other in COPY:  # one at a time: they share the copy
        paper = other[0] if other else PAPER   # the case's paper (default PAPER)
        spec_path = repo_copy / "papers" / paper / "experiments.yaml"
        good_spec = spec_path.read_text()
        if kind == "yaml_text":
            spec_path.write_text(change)
        elif kind == "config_text":
            config_path.write_text(change)
        else:
            spec_path.write_text(yaml.safe_dump(change(yaml.safe_load(good_spec)), sort_keys=False))
        work = tmp_path / name.replace(" ", "_").replace(":", "")
        work.mkdir()
        try:
            _assert_one_clear_error(_snakemake(repo_copy / "Snakefile", work, ["reports/smoke/" + paper], []),
                                    words, work)
        finally:
            spec_path.write_text(good_spec)
            config_path.write_text(good_config)


@needs_mnist
def test_bad_command_line_runs(tmp_path):
    def one(case):
        name, args, _ = case
        work = tmp_path / name.replace(" ", "_")
        work.mkdir()
        args = [a.replace("{tmp}", str(work)) for a in args]
        if args[0] == "run":
            args = args[:1] + ["--scale", "smoke"] * ("--scale" not in args) + args[1:]
            args += ["--out", str(work / "results" / "x.json")] * ("--out" not in args)
        else:
            args = args[:1] + ["--scale", "smoke"] + args[1:]
        return work, subprocess.run([sys.executable, "-m", f"papers.{PAPER}", *args], cwd=REPO,
                                    capture_output=True, text=True)

    for (name, _, words), (work, proc) in zip(CLI, _parallel(one, CLI)):
        _assert_one_clear_error(proc, words, work)


def test_there_are_at_least_40_kinds_of_bad_input():
    assert len(WORKFLOW) + len(DATA) + len(COPY) + len(CLI) >= 40
