"""Diagnostics, not timings: why KD-SVD, KD-EID and the no-alignment ablation part ways at the quick scale.

    python benchmarks/kd_svd_diagnostics.py --out benchmarks/results/kd_svd_diagnostics.json   # ~16 min, 1 thread

Needs the quick scale's cached teachers, `results/quick/kd_svd/teacher/seed<k>.pt` for seeds 0, 1 and `--seed`
(`snakemake -c2 reports/kd_svd`). Two parts:

- `signs`: a singular vector's sign is arbitrary. Align_rsv turns the student's vectors to the teacher's, but the
  teacher's own sign is whatever the decomposition returns, and the RBF relation between consecutive points,
  exp(−(v_l[i] − v_{l−1}[j])² / 8), changes when one point's vector flips. The stage outputs end in a ReLU, so
  each [HW, C] matrix is non-negative and its leading right singular vector has one sign throughout. Per point
  and route ("svd": torch.linalg.svd, KD-SVD; "eid": eigh of the Gram matrix, KD-EID): the share of test images
  whose teacher vector comes out positive; the two routes' losses and gradients (w.r.t. the student's maps) as
  run and with every teacher vector turned positive first. Teacher: seed 0's; "student": seed 1's teacher (the
  same widths, trained).
- `alignment`: the quick scale's KD-SVD and KD-EID runs of `--seed` again (32 epochs; with the same seed each
  retraces the workflow's run, whose record holds the same gradient ratios), recording per epoch the share of
  training images where Align_rsv picks a candidate other than the student's leading vector, per point, beside
  ‖g_KD‖ / ‖g_CE‖ on the epoch's first batch (before the clip).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.experiments import build_config  # noqa: E402
from common.results import RunRecord, seed_everything  # noqa: E402
from common.train import load_split  # noqa: E402
from papers.kd_svd import losses  # noqa: E402
from papers.kd_svd.config import KDConfig, TeacherConfig  # noqa: E402
from papers.kd_svd.method import build_network, fixed_batch, train  # noqa: E402
from papers.kd_svd.svd import feature_matrix, truncated_svd  # noqa: E402

TEACHERS = Path("results/quick/kd_svd/teacher")
QUICK_STUDENT = dict(dataset="cifar10", train_split="train", train_fraction=0.1, widths=[8, 8, 16, 32],
                     epochs=32, batch_size=32, lr=0.1, lr_schedule="cosine", eval_every=4)   # scales.quick.base


def load(path: Path, shape, num_classes: int):
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = build_network(build_config(TeacherConfig, dict(blob["config"])), shape, num_classes)
    net.load_state_dict(blob["state_dict"])
    return net.eval().double()


@contextlib.contextmanager
def positive_teacher_vectors(enabled: bool):
    """While enabled, losses.truncated_svd returns every K = 1 vector turned to a positive sum (the student's
    candidates are then turned back by Align_rsv, so only the teacher's sign matters)."""
    original = losses.truncated_svd

    def turned(X, n, route="svd"):
        s, V = original(X, n, route)
        return (s, V * torch.sign(V.sum(1, keepdim=True))) if n == 1 else (s, V)
    losses.truncated_svd = turned if enabled else original
    try:
        yield
    finally:
        losses.truncated_svd = original


@contextlib.contextmanager
def count_picks(counts: dict):
    """While active, every Align_rsv call appends, under its channel count, the share of images whose chosen
    candidate is not the student's leading vector."""
    original = losses.align_rsv

    def counted(V_S, V_T):
        cos = (V_S.mT @ V_T).detach().abs()[..., 0]                               # [B, K + 3]
        counts[V_S.shape[1]].append((cos.argmax(1) != 0).double().mean().item())
        return original(V_S, V_T)
    losses.align_rsv = counted
    try:
        yield
    finally:
        losses.align_rsv = original


def signs(images: int) -> dict:
    cfg = build_config(TeacherConfig, dict(torch.load(TEACHERS / "seed0.pt", map_location="cpu",
                                                      weights_only=True)["config"]))
    _, test = load_split(cfg, 0, "cpu")
    x = fixed_batch(test, images).double()
    teacher, student = (load(TEACHERS / f"seed{k}.pt", test.shape, test.num_classes) for k in (0, 1))
    with torch.no_grad():
        ft, fs0 = teacher(x, maps=True)[1], student(x, maps=True)[1]
    out = {"images": images, "nonnegative_teacher_maps": all(bool((f >= 0).all()) for f in ft)}
    grads = {}
    for route in ("svd", "eid"):
        out[route] = {"positive_teacher_share": [
            (truncated_svd(feature_matrix(f), 1, route)[1].sum(1) > 0).double().mean().item() for f in ft]}
        for positive in (False, True):
            fs = [f.clone().requires_grad_() for f in fs0]
            with positive_teacher_vectors(positive):
                value = losses.kd_svd_loss(fs, ft, 1, route)
            grads[route, positive] = torch.autograd.grad(value, fs)
            out[route]["loss_per_image_" + ("teacher_positive" if positive else "as_run")] = value.item() / images
    for positive in (False, True):
        out["gradient_cosine_svd_eid_" + ("teacher_positive" if positive else "as_run")] = [
            ((a * b).sum() / (a.norm() * b.norm())).item() for a, b in zip(grads["svd", positive],
                                                                            grads["eid", positive])]
    return out


def alignment(method: str, seed: int) -> list[dict]:
    cfg = build_config(KDConfig, dict(QUICK_STUDENT, method=method))
    counts, rows = collections.defaultdict(list), []
    record = RunRecord(paper="kd_svd", setting=method, seed=seed, scale="quick", config={})
    log = record.log

    def log_with_picks(**row):
        rows.append({"epoch": row["epoch"], "grad_ratio": row["grad_ratio"],
                     "non_leading_pick_share": {c: sum(v) / len(v) for c, v in sorted(counts.items())}})
        counts.clear()
        log(**row)
    record.log = log_with_picks
    seed_everything(seed)
    with count_picks(counts):
        train(cfg, seed, record, "cpu", TEACHERS / f"seed{seed}.pt")
    rows[-1]["test_acc"] = record.summary["final_test_acc"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="test images for the sign part")
    ap.add_argument("--seed", type=int, default=2, help="the quick runs to retrace in the alignment part")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"signs": signs(args.images), "alignment": {m: alignment(m, args.seed) for m in ("kd_svd", "kd_eid")}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
