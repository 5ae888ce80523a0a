"""What the paper scale costs, before anyone starts it: time a short slice of every paper-scale setting on the
device at hand and extrapolate to the full runs.

    python benchmarks/paper_scale.py                       # every paper, on `auto` (CUDA when present)
    python benchmarks/paper_scale.py feddf --device cpu --max-seconds 120
    python benchmarks/paper_scale.py --table               # the saved measurements as the README's table

For each setting it runs the paper's own CLI (`run --scale paper`) for two evaluation slices (two rounds with
eval_every = 1 for the federated papers; 2 x eval_every steps for gradient dropping) and reads the run record:
the setup (data, partition, model: wall time minus the last logged `time_s`), the first slice and the second.
A run is then estimated as setup + first + (L / slice - 1) x second, L being the setting's rounds (or steps).
The centralised papers (KD-SVD) train two epochs (one initialisation epoch and one main epoch where the setting
has an initialisation stage) and log seconds per step: a run is setup + each stage's epochs at its last slice
epoch's cost. A paper with a cached teacher has it trained first for two epochs, timed the same way and counted
once per seed; the slices of the students distil from it.
Settings whose configs differ only in hyperparameters that change the numbers but not the work (COST_NEUTRAL:
learning rates, loss weights, alpha) are timed once. When the run passes --max-seconds, the first slice's time
(from its progress line) stands for every slice; when not even one slice ends, the setting is reported as not
measured on this device, and the paper's total counts only the runs that were.

Prints a table per paper (runs, settings timed, mean hours per run, total device-hours) and merges the rows into
benchmarks/results/paper_scale.json under this device's name, which `snakemake ... --config scale=paper` prints
before it starts and the README quotes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import device as devices, experiments  # noqa: E402
from common.results import atomic_write_text  # noqa: E402
from common.workflow import papers  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "paper_scale.json"
COST_NEUTRAL = {  # values, not work: two settings that differ only here cost the same
    "alpha", "lr", "momentum", "weight_decay", "lr_decay", "prox_mu", "prox_decay", "server_momentum", "server_lr",
    "weighting", "min_client_size", "shards_per_client", "dirichlet_cap", "partition", "target_acc",
    "ntd_tau", "ntd_beta", "lsd_tau", "lsd_beta", "distill_weight", "drop_ratio", "residual", "threshold",
    "gen_alpha", "gen_beta", "gen_lr", "gen_lr_decay", "gen_diversity_weight", "gen_teacher_weight",
    "gen_reg_decay", "gen_weight_decay", "gen_teacher_weighting", "feddf_lr", "feddf_temperature", "feddf_clip",
}


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def slice_overrides(config: dict) -> tuple[dict, str, int]:
    """(--set overrides for a two-slice run, the length key, the length of one slice)."""
    if "rounds" in config:
        return {"rounds": 2, "eval_every": 1}, "rounds", 1
    if "epochs" in config:
        first = {"init_epochs": 1} if config.get("init_epochs") else {}
        return {**first, "epochs": 2 - len(first), "eval_every": 1}, "epochs", 1
    every = max(1, min(config["eval_every"], config["steps"] // 2))
    return {"steps": 2 * every, "eval_every": every}, "steps", every


def config_of(paper: str, setting: str) -> dict:
    """The full config of a paper-scale setting (defaults filled in), as the paper's CLI builds it; `teacher`
    is the paper's cached teacher (`teacher_config` of its CLI)."""
    from common import cli

    main = importlib.import_module(f"papers.{paper}.__main__")
    cfg = main.teacher_config("paper") if setting == "teacher" else cli.build(paper, main.ENTRY[1], "paper", setting)
    return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}


def has_teacher(paper: str) -> bool:
    """Whether the paper's students distil from a teacher trained by a workflow job of its own."""
    return "teacher" in experiments.scale_spec(paper, "paper")


def epochs_seconds(record: dict, config: dict) -> float:
    """A full run from a two-epoch slice: setup (wall time minus the epochs' steps) plus each stage's epochs
    (`init`, `main`) at the cost of its last slice epoch (seconds per step x steps per epoch)."""
    steps = math.ceil(record["summary"]["train_images"] / config["batch_size"])
    epoch_s = {h.get("stage", "main"): h["step_s"] * steps for h in record["history"]}
    setup = record["wall_time_s"] - steps * sum(h["step_s"] for h in record["history"])
    return setup + epoch_s.get("init", 0.0) * config.get("init_epochs", 0) + epoch_s["main"] * config["epochs"]


def time_setting(paper: str, setting: str, dev: str, threads: int, max_seconds: float,
                 teacher: Path | None = None) -> dict:
    """Seconds of one full run of `setting` from a two-slice run of the paper's CLI, with how they were found:
    `two slices`, `one slice` (the second passed max_seconds: each slice is taken to cost the first's), or
    None seconds when not even one slice ended within max_seconds. `setting` 'teacher' trains the paper's
    teacher slice into `teacher` (a .pt path); any other setting of such a paper distils from it."""
    config = config_of(paper, setting)
    sets, key, per_slice = slice_overrides(config)
    slices = config[key] / per_slice
    with tempfile.TemporaryDirectory() as tmp:
        if setting == "teacher":
            out = importlib.import_module(f"papers.{paper}.method").teacher_record_path(teacher)
            cmd = [sys.executable, "-m", f"papers.{paper}", "teacher", "--scale", "paper", "--out", str(teacher)]
        else:
            out = Path(tmp) / "r.json"
            cmd = [sys.executable, "-m", f"papers.{paper}", "run", "--scale", "paper", "--setting", setting,
                   "--out", str(out)] + (["--teacher", str(teacher)] if teacher else [])
        cmd += ["--device", dev, "--threads", str(threads)]
        cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max_seconds,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        except subprocess.TimeoutExpired as exc:
            logged = re.findall(r"time_s=([0-9.e+-]+)", (exc.stdout or b"").decode(errors="replace"))
            if logged:
                return {"seconds": float(logged[0]) * slices, "how": "one slice"}
            return {"seconds": None, "how": f"one slice takes over {max_seconds:.0f} s"}
        if proc.returncode:
            raise SystemExit(f"{paper}/{setting}: {proc.stderr.strip().splitlines()[-1]}")
        record = json.loads(out.read_text())
    if key == "epochs":
        return {"seconds": epochs_seconds(record, config), "how": "two epochs"}
    times = [h["time_s"] for h in record["history"]]
    setup = record["wall_time_s"] - times[-1]
    return {"seconds": setup + times[0] + (slices - 1) * (times[1] - times[0]), "how": "two slices"}


def cost_key(paper: str, setting: str) -> str:
    overrides = experiments.resolve(paper, "paper", setting)
    return json.dumps({k: v for k, v in sorted(overrides.items()) if k not in COST_NEUTRAL}, default=str)


def measure(paper: str, dev: str, threads: int, max_seconds: float) -> dict:
    """The paper's runs, how its settings were timed, and the total device time of those that could be."""
    settings = experiments.settings(paper, "paper")
    teachers = ["teacher"] if has_teacher(paper) else []
    runs = experiments.run_ids(paper, "paper")
    runs += [f"teacher/seed{k}" for k in experiments.seeds(paper, "paper") if teachers]   # one per seed
    timed: dict[str, dict] = {}
    seconds, measured_runs, unmeasured = 0.0, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "seed0.pt" if teachers else None
        for setting in teachers + settings:
            key = "teacher" if setting == "teacher" else cost_key(paper, setting)
            if key not in timed:
                timed[key] = time_setting(paper, setting, dev, threads, max_seconds, teacher)
                t = timed[key]
                print(f"  {paper}/{setting}: " + (f"{t['seconds'] / 3600:.3f} h per run ({t['how']})"
                                                 if t["seconds"] is not None else t["how"]), flush=True)
                if setting == "teacher" and t["seconds"] is None:
                    raise SystemExit(f"{paper}: the teacher's slice passed --max-seconds; raise it to time the "
                                     f"students, who need that teacher")
            n_seeds = sum(r.startswith(f"{setting}/") for r in runs)
            if timed[key]["seconds"] is None:
                unmeasured.append(setting)
            else:
                seconds += n_seeds * timed[key]["seconds"]
                measured_runs += n_seeds
    return {"paper": paper, "runs": len(runs), "settings": len(settings), "settings_timed": len(timed),
            "settings_measured": sum(t["seconds"] is not None for t in timed.values()),
            "hours_per_run": round(seconds / max(1, measured_runs) / 3600, 3),
            "device_hours": round(seconds / 3600, 2), "runs_not_measured": len(runs) - measured_runs,
            "settings_not_measured": unmeasured}


def markdown_table(measured: dict) -> str:
    """The README's table: one row per paper and device measured."""
    lines = ["| paper | runs | device | distinct settings measured | hours per measured run | device-hours of the "
             "measured runs | runs not measured (a slice passed --max-seconds) |", "|---|---|---|---|---|---|---|"]
    for r in measured["papers"]:
        measured_runs = r["runs"] - r["runs_not_measured"]
        cost = (f"{r['hours_per_run']:.2f}", f"{r['device_hours']:.1f}") if measured_runs else ("—", "—")
        lines.append(f"| {r['paper']} | {r['runs']} | {r['device_name']} | {r['settings_measured']} of "
                     f"{r['settings_timed']} | {cost[0]} | {cost[1]} | {r['runs_not_measured']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("papers", nargs="*", help="default: every paper")
    parser.add_argument("--table", action="store_true", help="print the saved measurements as a markdown table")
    parser.add_argument("--device", default="auto", help=devices.CHOICES)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-seconds", type=float, default=300, help="per setting's two-slice run")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(OUT.read_text())))
        return
    dev = devices.resolve(args.device)
    torch.set_num_threads(args.threads)
    name = device_name(dev)
    measured = json.loads(OUT.read_text()) if OUT.exists() else {"papers": []}
    for paper in args.papers or papers():
        print(f"{paper} on {name}:", flush=True)
        row = {**measure(paper, str(dev), args.threads, args.max_seconds), "device": dev.type,
               "device_name": name, "torch": torch.__version__}
        measured["papers"] = [r for r in measured["papers"] if (r["paper"], r["device_name"]) != (paper, name)]
        measured["papers"].append(row)
        missing = f", {row['runs_not_measured']} runs not measured" if row["runs_not_measured"] else ""
        print(f"{paper}: {row['runs']} runs ({row['settings_timed']} of {row['settings']} settings timed), "
              f"{row['hours_per_run']:.2f} h per run, {row['device_hours']:.1f} device-hours{missing}", flush=True)
        measured["papers"].sort(key=lambda r: (r["paper"], r["device"]))
        atomic_write_text(OUT, json.dumps(measured, indent=1) + "\n")
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
