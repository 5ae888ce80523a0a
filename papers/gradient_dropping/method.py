"""Gradient dropping (Aji & Heafield 2017, Sec. 2) as Marian's GPU dropper, `src/training/gradient_dropping/gpu/dropper.cu`.

Shapes: W workers, N parameters (the whole model flattened), S sampled values.

Per worker and step (`GradientDropBase::dropGraph`):
1. g <- g + residual                                        (the residual carries what was dropped)
2. t <- `find_threshold`: S = min(100k, N) values |g[i * stride]|, stride = N // S (a strided sample, not a
   random one), sorted; t = sample[max(0, floor(S * R) - 1)], an approximate R-quantile of |g|
3. residual <- g where |g| <= t; send g where |g| > t (ties are dropped)
4. the message is (int32 index, float32 value) pairs (`fromDense`), so R = 99 % cuts traffic about 50x, not 100x.
"Global" runs 2-3 once on the whole flattened gradient, as Marian's `pushGradients` does before splitting it
into shards; "local" runs them per parameter tensor. Marian's momentum option (`dropping_momentum`) is not used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap
from torch.utils.flop_counter import FlopCounterMode

from common import data as datasets
from common.models import MLP
from common.results import RunRecord, seed_everything
from common.train import check_finite, evaluate

INDEX_BYTES = 4   # int32 index of a kept entry
VALUE_BYTES = 4   # float32 value
# Elementwise passes of dropGraph over the N entries: add the residual, two if_then_else passes (|g| and a
# comparison each) and the dense-to-sparse compaction.
DROP_OPS_PER_ENTRY = 6


def sparse_bytes(nnz: int) -> int:
    return nnz * (INDEX_BYTES + VALUE_BYTES)


def dense_bytes(n: int) -> int:
    return n * VALUE_BYTES


def threshold_sample_size(n: int, sample_size: int) -> int:
    return min(sample_size, n)


def sampled_threshold(absval: torch.Tensor, drop_ratio: float, sample_size: int) -> torch.Tensor:
    """Per row of |g| [W, N]: Marian's `find_threshold` (gpu/dropper.cu) -> [W].

    The sample is |g| at i * (N // S) for i < S; with N <= sample_size it is every entry (the exact quantile).
    `kthvalue` gives the sorted sample's entry at max(0, floor(S * R) - 1) without a full sort."""
    n = absval.shape[1]
    s = threshold_sample_size(n, sample_size)
    stride = n // s
    sample = absval[:, : s * stride : stride]                            # [W, S]
    cut = max(0, int(s * drop_ratio) - 1)                                # Marian: (int)(sortSize * rate) - 1
    return sample.kthvalue(cut + 1, dim=1).values


def drop(acc: torch.Tensor, threshold: torch.Tensor, absval: torch.Tensor | None = None):
    """Split acc [W, N] into (sent, kept, mask) with sent + kept == acc exactly: sent holds |acc| > t."""
    mask = (acc.abs() if absval is None else absval) > threshold.unsqueeze(1)
    sent = torch.where(mask, acc, 0.0)
    return sent, acc - sent, mask


def dropping_ops(sizes: list[int], sample_size: int, local: bool) -> int:
    """Operations of one worker's dropGraph: DROP_OPS_PER_ENTRY per entry, plus sampling and sorting
    (S log2 S comparisons, as Marian's thrust::sort) of each threshold's sample."""
    samples = [threshold_sample_size(n, sample_size) for n in (sizes if local else [sum(sizes)])]
    return DROP_OPS_PER_ENTRY * sum(sizes) + sum(s + math.ceil(s * math.log2(s)) if s > 1 else s for s in samples)


class GradientDropper:
    """The workers' dropping state: one residual row per worker, thresholds global or per tensor."""

    def __init__(self, workers: int, sizes: list[int], drop_ratio: float, *, residual: bool = True,
                 threshold: str = "global", sample_size: int = 100_000):
        self.sizes, self.drop_ratio, self.keep_residual = sizes, drop_ratio, residual
        self.local, self.sample_size = threshold == "local", sample_size
        self.residual = torch.zeros(workers, sum(sizes))

    def __call__(self, grads: torch.Tensor, dense: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """grads [W, N] -> (messages [W, N] with zeros where dropped, kept mask [W, N]); updates the residual."""
        acc = grads + self.residual
        if dense or self.drop_ratio == 0.0:
            self.residual.zero_()
            return acc, torch.ones_like(acc, dtype=torch.bool)
        absval = acc.abs()
        if self.local:
            parts = [drop(a, self._threshold(v), v) for a, v in zip(acc.split(self.sizes, 1), absval.split(self.sizes, 1))]
            sent, kept, mask = (torch.cat(t, 1) for t in zip(*parts))
        else:
            sent, kept, mask = drop(acc, self._threshold(absval), absval)
        self.residual = kept if self.keep_residual else torch.zeros_like(kept)
        return sent, mask

    def _threshold(self, absval: torch.Tensor) -> torch.Tensor:
        return sampled_threshold(absval, self.drop_ratio, self.sample_size)


def worker_batches(n_train: int, workers: int, steps: int, batch_size: int, generator: torch.Generator):
    """IID shards, one per worker; each worker walks shuffled epochs of its shard -> index [steps, W, B]."""
    shards = torch.randperm(n_train, generator=generator).chunk(workers)
    need = steps * batch_size
    streams = []
    for shard in shards:
        epochs = math.ceil(need / len(shard))
        order = torch.cat([shard[torch.randperm(len(shard), generator=generator)] for _ in range(epochs)])
        streams.append(order[:need].view(steps, batch_size))
    return torch.stack(streams, 1)


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Matmul FLOPs of one worker's forward + backward on batch (x, y), counted by torch's FlopCounterMode
    (elementwise work, e.g. ReLU, LayerNorm and the softmax, is not counted: under 1 % for the MLP)."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def train(cfg, seed: int, record: RunRecord) -> None:
    """Simulated synchronous data-parallel training with gradient dropping (Sec. 3's MNIST setting).

    Logged per evaluation: accuracy, bytes, and what a time model needs: per worker, the cumulative operations
    (counted forward + backward FLOPs and the dropping's own work) and the bytes over its link (its push, the
    largest of the W, plus the fetch of the parameter delta)."""
    gen = seed_everything(seed)
    train_set, test_set = datasets.load(cfg.dataset, "train"), datasets.load(cfg.dataset, "test")
    if cfg.train_subset:
        train_set = train_set.subset(torch.randperm(len(train_set), generator=gen)[:cfg.train_subset])
    curve_set = test_set.subset(torch.arange(cfg.test_subset)) if cfg.test_subset else test_set
    c, h, w = train_set.shape
    model = MLP(c * h * w, cfg.hidden, train_set.num_classes, cfg.layer_norm)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    sizes = [p.numel() for p in params.values()]
    n_params, W = sum(sizes), cfg.workers
    opt = (torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam)(model.parameters(), lr=cfg.lr)
    dropper = GradientDropper(W, sizes, cfg.drop_ratio, residual=cfg.residual, threshold=cfg.threshold,
                              sample_size=cfg.sample_size)

    def loss_fn(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    worker_grads = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0))
    batches = worker_batches(len(train_set), W, cfg.steps, cfg.batch_size, gen)
    gemm = step_flops(model, train_set.normalize(train_set.x[batches[0, 0]]), train_set.y[batches[0, 0]])
    drop_ops = dropping_ops(sizes, cfg.sample_size, cfg.threshold == "local")
    # SGD applies the averaged sparse gradient as is, so the parameter delta a worker fetches is sparse
    # (the union of the kept indices); Adam's update is dense, so its fetch is dense.
    sparse_fetch = cfg.optimizer == "sgd"

    totals = dict(bytes_up=0, bytes_down=0, link_bytes=0, compute_ops=0, density=0.0)
    kept_per_tensor = torch.zeros(len(sizes), dtype=torch.float64)
    window = dict(density=0.0, loss=0.0, n=0)
    for step in range(1, cfg.steps + 1):
        idx = batches[step - 1]                                            # [W, B]
        xb = train_set.normalize(train_set.x[idx.flatten()]).view(W, cfg.batch_size, c, h, w)
        grads, losses = worker_grads({k: v.detach() for k, v in params.items()}, xb, train_set.y[idx])
        check_finite(losses.mean(), f"step {step}")
        flat = torch.cat([grads[n].reshape(W, -1) for n in names], 1)      # [W, N]
        dense_step = cfg.dense or step <= cfg.warmup_steps
        sent, mask = dropper(flat, dense=dense_step)
        update = sent.mean(0)                                              # [N]

        kept = torch.stack([m.sum(1) for m in mask.split(sizes, 1)], 1)    # [W, tensors]
        nnz = kept.sum(1)                                                  # [W]
        up = [dense_bytes(n_params) if dense_step else sparse_bytes(int(k)) for k in nnz]
        union = int(torch.count_nonzero(update))
        down = dense_bytes(n_params) if (dense_step or not sparse_fetch) else min(sparse_bytes(union), dense_bytes(n_params))
        totals["bytes_up"] += sum(up)
        totals["bytes_down"] += W * down
        totals["link_bytes"] += max(up) + down      # workers push and fetch in parallel, each over its own link
        totals["compute_ops"] += gemm + (0 if dense_step else drop_ops)
        kept_per_tensor += kept.sum(0).double() / (W * torch.tensor(sizes, dtype=torch.float64))
        density = nnz.double().mean().item() / n_params
        totals["density"] += density
        window["density"] += density
        window["loss"] += losses.mean().item()
        window["n"] += 1

        for p, g in zip(params.values(), update.split(sizes)):
            p.grad = g.view_as(p)
        opt.step()

        if step % cfg.eval_every == 0 or step == cfg.steps:
            # the curve may use a test subset; the last evaluation is always on the whole test set
            ev = evaluate(model, test_set if step == cfg.steps else curve_set)
            record.log(step=step, test_acc=ev["acc"], test_loss=ev["loss"],
                       train_loss=window["loss"] / window["n"], density=window["density"] / window["n"],
                       bytes_up=totals["bytes_up"], bytes_total=totals["bytes_up"] + totals["bytes_down"],
                       compute_ops=totals["compute_ops"], link_bytes=totals["link_bytes"])
            window = dict(density=0.0, loss=0.0, n=0)

    accs = [h["test_acc"] for h in record.history]
    record.bytes_sent = totals["bytes_up"] + totals["bytes_down"]
    record.summary = {
        "final_test_acc": accs[-1], "best_test_acc": max(accs),
        "bytes_up": totals["bytes_up"], "bytes_total": record.bytes_sent,
        "dense_bytes_up": cfg.steps * W * dense_bytes(n_params),
        "upload_reduction": cfg.steps * W * dense_bytes(n_params) / totals["bytes_up"],
        "mean_density": totals["density"] / cfg.steps,
        "step_flops": gemm, "dropping_ops": drop_ops,
        "compute_ops": totals["compute_ops"], "link_bytes": totals["link_bytes"],
        "n_params": n_params,
        **{f"kept_{n}": float(v) / cfg.steps for n, v in zip(names, kept_per_tensor)},
    }
