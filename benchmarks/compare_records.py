"""Do two sets of run records hold the same numbers? (e.g. the same runs before and after a refactor, or on
CPU and on a GPU)

    python benchmarks/compare_records.py BEFORE_DIR AFTER_DIR [--atol 0]

Compares every `<setting>/seed<k>.json` present in both folders: the config, the summary and the history
(times, the commit, the device and the creation date aside). With --atol 0 (default) the numbers must be
bit-identical; prints each difference and exits 1 if any.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

IGNORED = {"wall_time_s", "created", "commit", "device", "threads", "time_s"}


def differences(a, b, atol: float, where: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in a or k not in b:
                yield f"{where}.{k}: only in {'after' if k in b else 'before'}"
            else:
                yield from differences(a[k], b[k], atol, f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, atol, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= atol):
            yield f"{where}: {a!r} != {b!r}"
    elif a != b:
        yield f"{where}: {a!r} != {b!r}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--atol", type=float, default=0.0)
    args = parser.parse_args()
    paths = sorted(p.relative_to(args.before) for p in args.before.rglob("seed*.json"))
    both = [p for p in paths if (args.after / p).exists()]
    bad = 0
    for rel in both:
        diffs = list(differences(json.loads((args.before / rel).read_text()),
                                 json.loads((args.after / rel).read_text()), args.atol))
        bad += bool(diffs)
        for d in diffs[:5]:
            print(f"{rel}{d}")
    print(f"{len(both)} runs compared, {bad} differ" + (f" (atol {args.atol})" if args.atol else " (bit for bit)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
