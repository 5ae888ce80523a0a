"""`python -m common.validate --scale S [--device D] [PAPER ...]`: the fail-before-running check of the workflow,
run by Snakemake while it parses (workflow/rules/common.smk), before any job.

With --device (given when the jobs run on this machine): the device exists here (`common.device.resolve`).
For each paper: `python -m papers.<paper> check --scale S` in this one process (every setting's config builds,
every claim names known settings, kinds and origins, every data set is present and intact). Prints the first
problem as one line `error: ...` and exits 2; prints nothing else on success.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import sys


def check_paper(paper: str, scale: str) -> str | None:
    """The paper's one-line error, or None when the scale checks out."""
    argv, sys.argv = sys.argv, [f"papers.{paper}", "check", "--scale", scale]
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            runpy.run_module(f"papers.{paper}", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    if code:
        return " ".join(err.getvalue().split()) or f"error: {paper}: its check failed (exit {code})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.validate")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--device")
    parser.add_argument("papers", nargs="+")
    args = parser.parse_args(argv)
    if args.device:
        from common import device, experiments

        try:
            device.resolve(args.device)
        except experiments.ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for paper in args.papers:
        problem = check_paper(paper, args.scale)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
