"""Seconds per KD-SVD student step by method, the networks in NCHW (as run) against channels-last (NHWC) memory.

    python benchmarks/kd_svd_step.py                    # quick-scale networks, batch 128, 1 thread
    python benchmarks/kd_svd_step.py --threads 2 --out benchmarks/results/kd_svd_step.json

One step = papers.kd_svd.method.StudentStep (teacher forward, student forward, the method's backward passes) and
an SGD step, on a fixed random batch of 32×32 RGB images; the teacher is untrained (its weights do not change
the cost). The quick scale's widths (8, 8, 16, 32), student 1 block per stage, teacher 2. The median of `--steps`
after 2 warm-up steps. A measurement on whatever machine runs it, never a test.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from papers.kd_svd import method  # noqa: E402
from papers.kd_svd.config import KDConfig  # noqa: E402
from papers.kd_svd.losses import hint_regressors  # noqa: E402

WIDTHS = (8, 8, 16, 32)


def seconds_per_step(cfg: KDConfig, memory_format: torch.memory_format, x, y, steps: int) -> float:
    torch.manual_seed(0)
    student = method.build_network(cfg, (3, 32, 32), 10).to(memory_format=memory_format)
    teacher = method.freeze(method.build_network(method.TeacherConfig(widths=WIDTHS, blocks=2), (3, 32, 32), 10)
                            .to(memory_format=memory_format))
    regressors = hint_regressors(WIDTHS[1:], WIDTHS[1:]) if cfg.method == "fitnets" else nn.ModuleList()
    step = method.StudentStep(cfg, student, teacher, regressors)
    step.stage = "main" if cfg.method not in ("fitnets", "fsp") else "init"
    optimizer = torch.optim.SGD(step.params, lr=0.01)
    x = x.contiguous(memory_format=memory_format)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step(x, y, 1)
        step.probe = False
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["student", "hinton", "kd_svd", "kd_eid"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(10, (args.batch,), generator=g)
    rows = []
    for name in args.methods:
        cfg = KDConfig(method=name, dataset="cifar10", widths=WIDTHS, init_epochs=1)
        row = {"method": name, **{fmt: round(seconds_per_step(cfg, mf, x, y, args.steps), 4) for fmt, mf in
                                  (("nchw_s", torch.contiguous_format), ("nhwc_s", torch.channels_last))}}
        row["speedup"] = round(row["nchw_s"] / row["nhwc_s"], 2)
        rows.append(row)
        print(f"{name:10s} NCHW {row['nchw_s']:.3f} s  NHWC {row['nhwc_s']:.3f} s  x{row['speedup']}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": args.threads, "batch": args.batch, "torch": torch.__version__,
                                        "machine": platform.processor() or platform.machine(), "rows": rows},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
