"""`python -m common.reproduce BUILT PUBLISHED`: does a freshly built report give the published numbers?

Compares every table (tables/*.csv) cell by cell and every claim of claims.json (verdict, mean, std, per-seed
values, robustness panel, under budget), ignoring what legitimately changes (the header's commit and date, figure
bytes). Runs are deterministic on a CPU, so a difference is news: it prints the files and values that moved.
Exit 0 either way (a moved number is a finding, not a failure); the first line says which.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _rows(path: Path) -> list[list[str]]:
    with path.open() as f:
        return list(csv.reader(f))


def differences(built: Path, published: Path, limit: int = 20) -> list[str]:
    out = []
    for table in sorted({p.name for p in (built / "tables").glob("*.csv")} |
                        {p.name for p in (published / "tables").glob("*.csv")}):
        a, b = built / "tables" / table, published / "tables" / table
        if not (a.exists() and b.exists()):
            out.append(f"tables/{table}: only in the {'new build' if a.exists() else 'published report'}")
            continue
        ra, rb = _rows(a), _rows(b)
        if len(ra) != len(rb):
            out.append(f"tables/{table}: {len(ra)} rows now, {len(rb)} published")
        for i, (x, y) in enumerate(zip(ra, rb)):
            for j, (u, v) in enumerate(zip(x, y)):
                if u != v:
                    col = ra[0][j] if ra and j < len(ra[0]) else j
                    out.append(f"tables/{table} row {i} [{col}]: {v!r} published, {u!r} now")
    new = {c["id"]: c for c in json.loads((built / "claims.json").read_text())}
    old = {c["id"]: c for c in json.loads((published / "claims.json").read_text())} \
        if (published / "claims.json").exists() else {}
    for cid in sorted(set(new) | set(old)):
        if cid not in new or cid not in old:
            out.append(f"claim {cid}: only in the {'new build' if cid in new else 'published report'}")
            continue
        for key in ("verdict", "origin", "mean", "std", "per_seed", "robustness", "under_budget"):
            if new[cid].get(key) != old[cid].get(key):
                out.append(f"claim {cid} {key}: {old[cid].get(key)!r} published, {new[cid].get(key)!r} now")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def main(argv: list[str]) -> int:
    built, published = Path(argv[0]), Path(argv[1])
    if not (published / "claims.json").exists():
        print(f"reproduce: no published report at {published} to compare with; this build will be published")
        return 0
    moved = differences(built, published)
    if moved:
        print(f"reproduce: the new build of {published} DIFFERS from the published report in {len(moved)} place(s):")
        print("\n".join(f"  {m}" for m in moved))
    else:
        print(f"reproduce: every number and verdict of {published} (tables/*.csv, claims.json) equals the new build")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
