"""The two entry points every paper has, `run` and `report` (thin: the paper supplies the functions).

    python -m papers.<paper> run --scale quick --setting <name> --seed 0 --out results/quick/<paper>/<name>/seed0.json
    python -m papers.<paper> run --scale smoke --setting <name> --set lr=0.05 --out /tmp/x.json
    python -m papers.<paper> report --scale quick --results results/quick/<paper> --out reports/<paper>
    python -m papers.<paper> runs --scale quick       # the run ids of a scale
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from common import experiments
from common.results import RunRecord, seed_everything


def parse_sets(items: list[str]) -> dict:
    """`key=value` pairs, values parsed as YAML (so 0.1, true, [1, 2] work)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise experiments.ConfigError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(paper: str, config_cls, run_fn: Callable, report_fn: Callable, argv: list[str] | None = None) -> int:
    """`config_cls` is the paper's config dataclass, or a function of a run's overrides that returns one;
    `run_fn(cfg, seed, record)` fills `record.history` / `record.summary` / `record.bytes_sent`;
    `report_fn(results_dir, out_dir, scale)` writes the report."""
    parser = argparse.ArgumentParser(prog=f"python -m papers.{paper}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one run: a setting of experiments.yaml at a scale, one seed")
    run.add_argument("--scale", default="quick", choices=experiments.SCALES)
    run.add_argument("--setting", required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", required=True, type=Path)
    run.add_argument("--threads", type=int, default=1, help="torch threads (Snakemake passes the job's)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    rep = sub.add_parser("report", help="the report from the run records of a scale")
    rep.add_argument("--scale", default="quick", choices=experiments.SCALES)
    rep.add_argument("--results", required=True, type=Path)
    rep.add_argument("--out", required=True, type=Path)
    runs = sub.add_parser("runs", help="list the run ids of a scale")
    runs.add_argument("--scale", default="quick", choices=experiments.SCALES)
    args = parser.parse_args(argv)

    try:
        if args.command == "runs":
            print("\n".join(experiments.run_ids(paper, args.scale)))
        elif args.command == "run":
            overrides = {**experiments.resolve(paper, args.scale, args.setting), **parse_sets(args.set)}
            cls = config_cls if isinstance(config_cls, type) else config_cls(overrides)
            cfg = experiments.build_config(cls, overrides)
            torch.set_num_threads(max(1, args.threads))
            seed_everything(args.seed)
            record = RunRecord(paper=paper, setting=args.setting, seed=args.seed, scale=args.scale,
                               config={k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
            start = time.perf_counter()
            run_fn(cfg, args.seed, record)
            record.wall_time_s = time.perf_counter() - start
            record.save(args.out)
        else:
            report_fn(args.results, args.out, args.scale)
    except experiments.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    return 0
