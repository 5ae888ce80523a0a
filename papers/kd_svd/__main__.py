"""`python -m papers.kd_svd teacher|run|report|runs|check` (see common/cli.py for run, report, runs and check).

    python -m papers.kd_svd teacher --scale smoke --seed 0 --out results/smoke/kd_svd/teacher/seed0.pt
    python -m papers.kd_svd run --scale smoke --setting kd_svd --seed 0 \\
        --teacher results/smoke/kd_svd/teacher/seed0.pt --out results/smoke/kd_svd/kd_svd/seed0.json

`teacher` trains the scale's teacher (experiments.yaml `scales.<scale>.teacher`) and writes its weights, config and
test logits to --out (.pt, atomically) and its run record beside it (teacher-seed<k>.json). `run` distills a student from the
teacher given by --teacher; without it, from <out>/../../teacher/seed<seed>.pt (the workflow's path). `check` also
checks that the scale's teacher fits every setting (data set, test images, widths).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

from common import cli, device, experiments
from common.results import RunRecord, seed_everything
from papers.kd_svd.config import PAPER_ID, KDConfig, TeacherConfig, check_compatible
from papers.kd_svd.method import save_teacher, train, train_teacher


def report(results: Path, out: Path, scale: str) -> None:
    """figures.report, imported when a report is built (seaborn's import costs every run job a second)."""
    from papers.kd_svd.figures import report as build

    build(results, out, scale)


# what common.cli.main runs (tests/test_config.py and benchmarks/paper_scale.py read it); `run` needs a teacher
ENTRY = (PAPER_ID, KDConfig, train, report)


def teacher_config(scale: str, sets: dict | None = None) -> TeacherConfig:
    """The scale's teacher: experiments.yaml `scales.<scale>.teacher` over TeacherConfig's defaults."""
    spec = experiments.scale_spec(PAPER_ID, scale)
    if "teacher" not in spec:
        raise experiments.ConfigError(f"{PAPER_ID}/{scale}: experiments.yaml gives no `teacher:` for this scale")
    return experiments.build_config(TeacherConfig, {**(spec["teacher"] or {}), **(sets or {})})


def check_teacher(scale: str) -> None:
    """The scale's teacher config builds and fits every setting's config."""
    teacher = teacher_config(scale)
    as_stored = {k: getattr(teacher, k) for k in teacher.__dataclass_fields__}
    for setting in experiments.settings(PAPER_ID, scale):
        if setting == "teacher":
            raise experiments.ConfigError(f"{PAPER_ID}: 'teacher' names the cached teacher's folder; rename the "
                                          "setting")
        check_compatible(cli.build(PAPER_ID, KDConfig, scale, setting), as_stored,
                         f"of the {scale} scale (setting {setting})")


def default_teacher_path(out: Path, seed: int) -> Path:
    """results/<scale>/kd_svd/<setting>/seed<k>.json -> results/<scale>/kd_svd/teacher/seed<k>.pt"""
    return Path(out).parent.parent / "teacher" / f"seed{seed}.pt"


def teacher_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m papers.{PAPER_ID} teacher",
                                     description="train the scale's teacher once and cache it")
    parser.add_argument("--scale", default="quick", choices=experiments.SCALES)
    parser.add_argument("--seed", type=int, default=0, help="a non-negative integer")
    parser.add_argument("--out", required=True, type=Path, help="the weights, a .pt file (its record: teacher-<name>.json beside it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help=f"{device.CHOICES} (auto: CUDA when present)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a teacher key")
    args = parser.parse_args(argv)
    try:
        if args.seed < 0:
            raise experiments.ConfigError(f"--seed must be a non-negative integer, got {args.seed}")
        if args.threads < 1:
            raise experiments.ConfigError(f"--threads must be >= 1, got {args.threads}")
        if args.out.suffix != ".pt":
            raise experiments.ConfigError(f"--out must name a .pt file, got {args.out}")
        dev = device.resolve(args.device)
        cfg = teacher_config(args.scale, cli.parse_sets(args.set))
        cli._check_writable(args.out)
        sys.stdout.reconfigure(line_buffering=True)
        torch.set_num_threads(args.threads)
        seed_everything(args.seed)
        record = RunRecord(paper=PAPER_ID, setting="teacher", seed=args.seed, scale=args.scale,
                           config={k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, device=device.prepare(dev))
        start = time.perf_counter()
        model, logits = train_teacher(cfg, args.seed, record, dev)
        record.wall_time_s = time.perf_counter() - start
        save_teacher(args.out, model, cfg, logits, record)
        print(f"[{PAPER_ID}] teacher seed {args.seed}: test accuracy {record.summary['test_acc']:.4f}, "
              f"{record.wall_time_s:.0f} s -> {args.out}")
    except cli.USER_ERRORS as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except OSError as exc:   # a full disk or a read-only folder while writing the teacher
        print(cli._write_error(exc, args.out), file=sys.stderr)
        return 2
    return 0


TEACHER_HELP = ("the teacher's weights, a .pt file written by `python -m papers.kd_svd teacher` (default: "
                "<out>/../../teacher/seed<seed>.pt, where the workflow caches it)")


def check_teacher_file(path: Path | None) -> None:
    """A --teacher file that exists must be a teacher written by `teacher` (torch's own error for anything else
    advises loading it with weights_only=False, i.e. running code from an untrusted file)."""
    if path is None or not Path(path).is_file():
        return   # a missing teacher: method.load_teacher names the command that trains it
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:   # pickle, zip or torch errors: whatever the damage, the fix is the same
        blob = None
    if not (isinstance(blob, dict) and {"config", "state_dict"} <= set(blob)):
        raise experiments.ConfigError(f"--teacher {path} is not a teacher written by `python -m papers.{PAPER_ID} "
                                      "teacher` (damaged, or another file): train it again with that command or "
                                      "give the right path")


def run_help(argv: list[str]) -> int:
    """`run -h`: common.cli's help, then the option this paper adds (--teacher)."""
    extra = argparse.ArgumentParser(prog=f"python -m papers.{PAPER_ID} run", add_help=False)
    extra.add_argument_group("KD-SVD").add_argument("--teacher", type=Path, metavar="PATH", help=TEACHER_HELP)
    try:
        cli.main(PAPER_ID, KDConfig, train, report, argv)
    except SystemExit:
        print("\n" + extra.format_help().split("\n", 2)[-1].rstrip())
        raise
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["teacher"]:
        return teacher_main(argv[1:])
    run_fn = train
    if argv[:1] == ["run"] and {"-h", "--help"} & set(argv):
        return run_help(argv)
    if argv[:1] == ["run"]:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--teacher", type=Path, help=TEACHER_HELP)
        known, argv = pre.parse_known_args(argv)
        where = argparse.ArgumentParser(add_help=False)
        where.add_argument("--out", type=Path)
        where.add_argument("--seed", type=int, default=0)
        out = where.parse_known_args(argv[1:])[0]
        path = known.teacher or (default_teacher_path(out.out, out.seed) if out.out else None)
        try:
            check_teacher_file(path)
        except experiments.ConfigError as exc:
            print("error: " + " ".join(str(exc).split()), file=sys.stderr)
            return 2
        run_fn = functools.partial(train, teacher_path=path)
    return cli.main(PAPER_ID, KDConfig, run_fn, report, argv, check_more=check_teacher)


if __name__ == "__main__":
    sys.exit(main())
