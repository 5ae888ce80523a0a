"""Gradient dropping (Aji & Heafield 2017, Sec. 2) as Marian's `src/training/gradient_dropping/`.

Shapes: W workers, N parameters (the whole model flattened), S sampled values.

Per worker and step:
1. g <- g + residual                                        (the residual carries what was dropped)
2. t <- the R-quantile of |g|, estimated on <= 100k sampled entries: sort the sample and take the
   value at index floor(S * R) - 1 (Marian's CPU dropper samples uniform random indices)
3. send g where |g| > t (ties are dropped), residual <- g where |g| <= t
4. the message is (int32 index, float32 value) pairs, so R = 99 % cuts traffic about 50x, not 100x.
"Global" runs 2-3 once on the whole flattened model (Marian flattens every parameter into one
tensor); "local" runs them per parameter tensor.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from common import data as datasets
from common.models import MLP
from common.results import RunRecord, seed_everything
from common.train import check_finite, evaluate

INDEX_BYTES = 4   # int32 index of a kept entry
VALUE_BYTES = 4   # float32 value


def sparse_bytes(nnz: int) -> int:
    return nnz * (INDEX_BYTES + VALUE_BYTES)


def dense_bytes(n: int) -> int:
    return n * VALUE_BYTES


def sampled_threshold(absval: torch.Tensor, drop_ratio: float, sample_size: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Per row of |g| [W, N]: the approximate drop_ratio-quantile from <= sample_size uniform samples -> [W].

    With N <= sample_size every entry is used, so the quantile is exact."""
    rows, n = absval.shape
    if n > sample_size:
        idx = torch.randint(n, (rows, sample_size), generator=generator)
        absval = absval.gather(1, idx)
    k = max(1, math.floor(absval.shape[1] * drop_ratio))  # sorted index k - 1 == k-th smallest
    return absval.kthvalue(k, dim=1).values


def drop(acc: torch.Tensor, threshold: torch.Tensor, absval: torch.Tensor | None = None):
    """Split acc [W, N] into (sent, kept, mask) with sent + kept == acc exactly: sent holds |acc| > t."""
    mask = (acc.abs() if absval is None else absval) > threshold.unsqueeze(1)
    sent = acc * mask
    return sent, acc - sent, mask


class GradientDropper:
    """The workers' dropping state: one residual row per worker, thresholds global or per tensor."""

    def __init__(self, workers: int, sizes: list[int], drop_ratio: float, *, residual: bool = True,
                 threshold: str = "global", sample_size: int = 100_000, generator: torch.Generator | None = None):
        self.sizes, self.drop_ratio, self.keep_residual = sizes, drop_ratio, residual
        self.local, self.sample_size = threshold == "local", sample_size
        self.generator = generator or torch.Generator().manual_seed(0)
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
        return sampled_threshold(absval, self.drop_ratio, self.sample_size, self.generator)


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


def train(cfg, seed: int, record: RunRecord) -> None:
    """Simulated synchronous data-parallel training with gradient dropping (Sec. 3's MNIST setting)."""
    gen = seed_everything(seed)
    train_set, test_set = datasets.load(cfg.dataset, "train"), datasets.load(cfg.dataset, "test")
    if cfg.train_subset:
        train_set = train_set.subset(torch.randperm(len(train_set), generator=gen)[:cfg.train_subset])
    if cfg.test_subset:
        test_set = test_set.subset(torch.arange(cfg.test_subset))
    c, h, w = train_set.shape
    model = MLP(c * h * w, cfg.hidden, train_set.num_classes, cfg.layer_norm)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    sizes = [p.numel() for p in params.values()]
    n_params, W = sum(sizes), cfg.workers
    opt = (torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam)(model.parameters(), lr=cfg.lr)
    dropper = GradientDropper(W, sizes, cfg.drop_ratio, residual=cfg.residual, threshold=cfg.threshold,
                              sample_size=cfg.sample_size, generator=gen)

    def loss_fn(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    worker_grads = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0))
    batches = worker_batches(len(train_set), W, cfg.steps, cfg.batch_size, gen)
    bandwidth = cfg.bandwidth_gbps * 1e9 / 8  # bytes per second
    # SGD applies the averaged sparse gradient as is, so the parameter delta a worker fetches is sparse
    # (the union of the kept indices); Adam's update is dense, so its fetch is dense.
    sparse_fetch = cfg.optimizer == "sgd"

    totals = dict(bytes_up=0, bytes_down=0, compute_s=0.0, modelled_s=0.0, density=0.0)
    kept_per_tensor = torch.zeros(len(sizes))
    window = dict(density=0.0, loss=0.0, n=0)
    for step in range(1, cfg.steps + 1):
        t0 = time.perf_counter()
        idx = batches[step - 1]                                            # [W, B]
        xb = train_set.normalize(train_set.x[idx.flatten()]).view(W, cfg.batch_size, c, h, w)
        grads, losses = worker_grads({k: v.detach() for k, v in params.items()}, xb, train_set.y[idx])
        flat = torch.cat([grads[n].reshape(W, -1) for n in names], 1)      # [W, N]
        dense_step = cfg.dense or step <= cfg.warmup_steps
        sent, mask = dropper(flat, dense=dense_step)
        compute = time.perf_counter() - t0
        check_finite(losses.mean(), f"step {step}")

        nnz = mask.sum(1)                                                  # [W]
        up = [dense_bytes(n_params) if dense_step else sparse_bytes(int(k)) for k in nnz]
        union = int(mask.any(0).sum())
        down = sparse_bytes(union) if (sparse_fetch and not dense_step) else dense_bytes(n_params)
        down = min(down, dense_bytes(n_params))
        totals["bytes_up"] += sum(up)
        totals["bytes_down"] += W * down
        totals["compute_s"] += compute
        # workers compute in parallel (W-th of the simulated time), then push and fetch over their own link
        totals["modelled_s"] += compute / W + (max(up) + down) / bandwidth
        kept_per_tensor += torch.stack([m.sum() for m in mask.split(sizes, 1)]) / (W * torch.tensor(sizes))
        density = nnz.float().mean().item() / n_params
        totals["density"] += density
        window["density"] += density
        window["loss"] += losses.mean().item()
        window["n"] += 1

        for p, g in zip(params.values(), (sent.mean(0)).split(sizes)):
            p.grad = g.view_as(p)
        opt.step()

        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate(model, test_set)
            record.log(step=step, test_acc=ev["acc"], test_loss=ev["loss"],
                       train_loss=window["loss"] / window["n"], density=window["density"] / window["n"],
                       bytes_up=totals["bytes_up"], bytes_total=totals["bytes_up"] + totals["bytes_down"],
                       modelled_time_s=totals["modelled_s"], compute_time_s=totals["compute_s"])
            window = dict(density=0.0, loss=0.0, n=0)

    accs = [h["test_acc"] for h in record.history]
    record.bytes_sent = totals["bytes_up"] + totals["bytes_down"]
    record.summary = {
        "final_test_acc": accs[-1], "best_test_acc": max(accs),
        "bytes_up": totals["bytes_up"], "bytes_total": record.bytes_sent,
        "dense_bytes_up": cfg.steps * W * dense_bytes(n_params),
        "upload_reduction": cfg.steps * W * dense_bytes(n_params) / totals["bytes_up"],
        "mean_density": totals["density"] / cfg.steps,
        "modelled_time_s": totals["modelled_s"], "compute_time_s": totals["compute_s"],
        "n_params": n_params,
        **{f"kept_{n}": float(v) / cfg.steps for n, v in zip(names, kept_per_tensor)},
    }
