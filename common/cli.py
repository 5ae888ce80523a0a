"""The two entry points every paper has, `run` and `report` (thin: the paper supplies the functions).

    python -m papers.<paper> run --scale quick --setting <name> --seed 0 --out results/quick/<paper>/<name>/seed0.json
    python -m papers.<paper> run --scale smoke --setting <name> --set lr=0.05 --out /tmp/x.json
    python -m papers.<paper> run --scale paper --setting <name> --device cuda --out ...   # auto | cpu | cuda[:N]
    python -m papers.<paper> report --scale quick --results results/quick/<paper> --out reports/<paper>
    python -m papers.<paper> runs --scale quick       # the run ids of a scale
    python -m papers.<paper> check --scale quick      # every setting builds, every data set is there and intact

A user error (a bad config value, missing or damaged data, a diverging run, an unwritable --out) is one line
on stderr, `error: ...`, naming the problem and the fix, and exit status 2; nothing is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from common import data, device, experiments, provenance
from common.results import RunRecord, load_records, seed_everything
from common.train import DivergenceError

USER_ERRORS = (experiments.ConfigError, data.DataNotFoundError, data.DataCorruptError, data.UnknownDataError,
               DivergenceError)


def parse_sets(items: list[str]) -> dict:
    """`key=value` pairs, values parsed as YAML (so 0.1, true, [1, 2] work)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise experiments.ConfigError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def datasets_used(cfg) -> list[str]:
    """The registered data sets a config names (its `dataset` and any other field set to a data-set name, such as
    FedDF's distillation source, or to a tuple of names, such as FedDG's domains)."""
    values = [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]
    values += [v for t in values if isinstance(t, tuple) for v in t]
    return sorted({v for v in values if isinstance(v, str) and v in data.REGISTRY})


def parse_seed_list(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2] (the report's --seeds)."""
    try:
        seeds = [int(k) for k in text.replace(" ", "").strip("[]").split(",") if k]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes non-negative integers separated by commas, got {text!r}")
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds takes non-negative integers separated by commas, got {text!r}")
    return seeds


def build(paper: str, config_cls, scale: str, setting: str, sets: dict | None = None):
    overrides = {**experiments.resolve(paper, scale, setting), **(sets or {})}
    cls = config_cls if isinstance(config_cls, type) else config_cls(overrides)
    return experiments.build_config(cls, overrides)


def check(paper: str, config_cls, scale: str) -> list[str]:
    """Fail-before-running check of a scale: every setting's config builds, every data set it needs is under
    the data root (or in the download cache) with the right checksums. Returns the data sets checked."""
    names = set()
    for setting in experiments.settings(paper, scale):
        try:
            names.update(datasets_used(build(paper, config_cls, scale, setting)))
        except experiments.ConfigError as exc:
            raise experiments.ConfigError(f"{paper}/{scale}/{setting}: {exc}") from None
    for name in sorted(names):
        if data.verify(name) == "download" and not any(data.cache_dir().glob(f"{name}_*_download.npz")):
            data.load(name, next(iter(data.REGISTRY[name].counts)))  # the download, or its clear error
    return sorted(names)


def _check_writable(out: Path) -> None:
    """--out is a new or regular file in a folder we can write (a device such as /dev/full, a folder or a link
    is refused: the atomic rename would replace it), checked before a run starts."""
    from common.files import check_regular_or_new, make_dirs

    try:
        check_regular_or_new(out)
        make_dirs(out.parent)
        probe = out.parent / f".{out.name}.probe{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise experiments.ConfigError(f"cannot write the output to {out} ({exc.strerror}): choose a writable "
                                      "--out, a new or regular file") from None


def _write_error(exc: OSError, out: Path | None) -> str:
    """One line for an OSError while writing a record or a report (a full disk, a read-only folder)."""
    where = exc.filename or out or "the output"
    return (f"error: could not write {where} ({exc.strerror or exc}): free space or fix the permissions there "
            "(or choose another --out), then run the same command again")


def _progress(paper: str, scale: str, out: Path) -> str:
    """`k of N runs of <paper> done, about M min of run time left` from the records already written."""
    if out.parent.name not in experiments.settings(paper, scale):
        return ""
    done = load_records(out.parent.parent.glob("*/seed*.json"))
    total = len(experiments.run_ids(paper, scale))
    if not done:
        return ""
    left = max(0, total - len(done)) * sum(r.wall_time_s for r in done) / len(done) / 60
    return f"[{paper}] {len(done)} of {total} runs done, about {left:.0f} min of run time left (divided by the parallel jobs)"


def main(paper: str, config_cls, run_fn: Callable, report_fn: Callable, argv: list[str] | None = None,
         check_more: Callable[[str], None] | None = None) -> int:
    """`config_cls` is the paper's config dataclass, or a function of a run's overrides that returns one;
    `run_fn(cfg, seed, record, device)` runs on `device` and fills `record.history` / `record.summary` /
    `record.bytes_sent`;
    `report_fn(results_dir, out_dir, scale)` writes the report (or the name of the module holding `report`, imported
    only by the report command); `check_more(scale)`, if given, is the paper's own
    part of `check` (its inputs beyond the data sets), raising one of USER_ERRORS."""
    parser = argparse.ArgumentParser(prog=f"python -m papers.{paper}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one run: a setting of experiments.yaml at a scale, one seed")
    run.add_argument("--scale", default="quick", choices=experiments.SCALES)
    run.add_argument("--setting", required=True)
    run.add_argument("--seed", type=int, default=0, help="a non-negative integer")
    run.add_argument("--out", required=True, type=Path)
    run.add_argument("--threads", type=int, default=1, help="torch threads (Snakemake passes the job's)")
    run.add_argument("--device", default="auto", help=f"{device.CHOICES} (auto: CUDA when present)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    rep = sub.add_parser("report", help="the report from the run records of a scale")
    rep.add_argument("--scale", default="quick", choices=experiments.SCALES)
    rep.add_argument("--results", required=True, type=Path)
    rep.add_argument("--out", required=True, type=Path)
    rep.add_argument("--seeds", type=parse_seed_list, default=None, metavar="K,K,...",
                     help="read only these seeds (the workflow's `seeds` override); default: the scale's own")
    rep.add_argument("--allow-stale", action="store_true",
                     help="build a draft from records whose code files differ from the tree (said in its header)")
    runs = sub.add_parser("runs", help="list the run ids of a scale")
    runs.add_argument("--scale", default="quick", choices=experiments.SCALES)
    chk = sub.add_parser("check", help="check every setting and data set of a scale before running")
    chk.add_argument("--scale", default="quick", choices=experiments.SCALES)
    args = parser.parse_args(argv)

    try:
        if args.command == "runs":
            print("\n".join(experiments.run_ids(paper, args.scale)))
        elif args.command == "check":
            from common import claims   # report code: imported here, so a run never loads it

            claims.check(paper)
            if check_more is not None:
                check_more(args.scale)
            print(f"{paper}/{args.scale}: {len(experiments.settings(paper, args.scale))} settings, data sets "
                  f"{', '.join(check(paper, config_cls, args.scale)) or 'none'}: ok")
        elif args.command == "run":
            if args.seed < 0:
                raise experiments.ConfigError(f"--seed must be a non-negative integer, got {args.seed}")
            if args.threads < 1:
                raise experiments.ConfigError(f"--threads must be >= 1, got {args.threads}")
            dev = device.resolve(args.device)
            sets = parse_sets(args.set)
            cfg = build(paper, config_cls, args.scale, args.setting, sets)
            _check_writable(args.out)
            sys.stdout.reconfigure(line_buffering=True)  # per-round lines reach a redirected log as they happen
            torch.set_num_threads(args.threads)
            seed_everything(args.seed)
            record = RunRecord(paper=paper, setting=args.setting, seed=args.seed, scale=args.scale,
                               overrides={**experiments.resolve(paper, args.scale, args.setting), **sets},
                               config={k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
                               device=device.prepare(dev))
            start = time.perf_counter()
            run_fn(cfg, args.seed, record, dev)
            record.wall_time_s = time.perf_counter() - start
            provenance.stamp(record)
            record.save(args.out)
            print(f"[{paper}] {args.setting} seed {args.seed}: {record.wall_time_s:.0f} s. "
                  f"{_progress(paper, args.scale, args.out)}")
        else:
            provenance.READ.update(seeds=args.seeds, allow_stale=args.allow_stale)
            if isinstance(report_fn, str):   # "papers.<paper>.figures": imported only to build a report, so a run
                report_fn = importlib.import_module(report_fn).report   # never loads (nor hashes) the report code
            report_fn(args.results, args.out, args.scale)
    except USER_ERRORS as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever the message holds
        return 2
    except OSError as exc:   # a full disk or a read-only folder while writing the record or the report
        print(_write_error(exc, getattr(args, "out", None)), file=sys.stderr)
        return 2
    return 0
