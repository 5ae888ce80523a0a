"""Speed of prompt tuning against model tuning and a linear probe: optimiser steps per second.

    python benchmarks/prompt_tuning_speed.py                    # MiniLM, batch 32, T = 64, 1 thread
    python benchmarks/prompt_tuning_speed.py --threads 2 --out benchmarks/results/prompt_tuning_speed.json

One step = forward, cross-entropy, backward, Adafactor step, on a fixed batch of B = 32 sequences of T = 64
real tokens (random ids, no padding). Prompt tuning runs P + T positions through the frozen encoder and
backpropagates through it to the prompt without weight gradients; model tuning runs T positions and computes
every weight's gradient; the linear probe needs no backward through the encoder at all.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from papers.prompt_tuning import prompts as pt  # noqa: E402
from papers.prompt_tuning.backbones import count_parameters, load_backbone  # noqa: E402


def steps_per_second(clf, ids, mask, y, lr: float, warmup: int, steps: int) -> float:
    opt = pt.adafactor([p for p in clf.parameters() if p.requires_grad], lr=lr)
    clf.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(clf(ids, mask), y).backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.batch, args.length), generator=g)  # [B, T]
    mask = torch.ones_like(ids)
    y = torch.randint(2, (args.batch,), generator=g)
    settings = {"prompt P=20": (lambda b: pt.prompt_tuning(b, 2, 20, "vocab"), pt.LR),
                "prompt P=100": (lambda b: pt.prompt_tuning(b, 2, 100, "vocab"), pt.LR),
                "model tuning": (lambda b: pt.model_tuning(b, 2), 1e-3),
                "linear probe": (lambda b: pt.linear_probe(b, 2), pt.LR)}
    rows = []
    for name, (build, lr) in settings.items():
        clf = build(load_backbone(args.backbone))
        rate = steps_per_second(clf, ids, mask, y, lr, warmup=2, steps=args.steps)
        trainable = count_parameters(clf, trainable_only=True)
        rows.append({"setting": name, "steps_per_s": round(rate, 3), "trainable": trainable})
        print(f"{name:14s} {rate:7.2f} steps/s  {trainable:>11,d} trainable parameters", flush=True)
    record = {"backbone": args.backbone, "batch": args.batch, "length": args.length, "threads": args.threads,
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
