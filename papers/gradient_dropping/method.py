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
import time

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
                 threshold: str = "global", sample_size: int = 100_000,
                 device: torch.device | str = "cpu"):
        self.sizes, self.drop_ratio, self.keep_residual = sizes, drop_ratio, residual
        self.local, self.sample_size = threshold == "local", sample_size
        self.residual = torch.zeros(workers, sum(sizes), device=device)

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
    """IID shards, one per worker; each worker walks shuffled epochs of its shard -> index [steps, W, B], drawn
    on the generator's device."""
    shards = torch.randperm(n_train, generator=generator, device=generator.device).chunk(workers)
    need = steps * batch_size
    streams = []
    for shard in shards:
        epochs = math.ceil(need / len(shard))
        order = torch.cat([shard[torch.randperm(len(shard), generator=generator, device=generator.device)]
                           for _ in range(epochs)])
        streams.append(order[:need].view(steps, batch_size))
    return torch.stack(streams, 1)


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Matmul FLOPs of one worker's forward + backward on batch (x, y), counted by torch's FlopCounterMode
    (elementwise work, e.g. ReLU, LayerNorm and the softmax, is not counted: under 1 % for the MLP)."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


class Ledger:
    """The run's bytes, operations and density. A step's counts stay on the device (no per-step read) until
    `close` reads the evaluation window's at once and adds them up on the host, in step order."""

    def __init__(self, workers: int, n_params: int, sparse_fetch: bool, gemm: int, drop_ops: int):
        self.W, self.n_params, self.sparse_fetch = workers, n_params, sparse_fetch
        self.gemm, self.drop_ops = gemm, drop_ops
        self.totals = dict(bytes_up=0, bytes_down=0, link_bytes=0, compute_ops=0, density=0.0)
        self.window = []   # per step: (step, dense?, [nnz per worker, union, mean nnz, loss] on the device)

    def add(self, step: int, dense_step: bool, nnz: torch.Tensor, update: torch.Tensor, loss: torch.Tensor):
        """nnz [W] entries each worker kept, update [N] the averaged message, loss the step's mean loss."""
        counts = torch.cat([nnz, torch.count_nonzero(update).view(1)]).double()   # exact below 2^53
        row = torch.cat([counts, nnz.double().mean().view(1), loss.double().view(1)])
        self.window.append((step, dense_step, row))

    def close(self) -> dict:
        """The window's mean train loss and density; its steps' bytes, operations and density join the totals."""
        rows, W, t = torch.stack([row for _, _, row in self.window]).tolist(), self.W, self.totals
        loss = density_sum = 0.0
        for (step, dense_step, _), row in zip(self.window, rows):
            check_finite(row[W + 2], f"step {step}")
            up = [dense_bytes(self.n_params) if dense_step else sparse_bytes(int(k)) for k in row[:W]]
            down = (dense_bytes(self.n_params) if dense_step or not self.sparse_fetch
                    else min(sparse_bytes(int(row[W])), dense_bytes(self.n_params)))
            t["bytes_up"] += sum(up)
            t["bytes_down"] += W * down
            t["link_bytes"] += max(up) + down      # workers push and fetch in parallel, each over its own link
            t["compute_ops"] += self.gemm + (0 if dense_step else self.drop_ops)
            density = row[W + 1] / self.n_params
            t["density"] += density
            density_sum += density
            loss += row[W + 2]
        n, self.window = len(self.window), []
        return dict(train_loss=loss / n, density=density_sum / n)


def train(cfg, seed: int, record: RunRecord, device: torch.device | str = "cpu") -> None:
    """Simulated synchronous data-parallel training with gradient dropping (Sec. 3's MNIST setting) on `device`.

    The data are loaded and subsampled, and the model initialised, on the CPU (the same seed gives the same
    start on any device), then moved once."""
    gen = seed_everything(seed)
    train_set, test_set = datasets.load(cfg.dataset, "train"), datasets.load(cfg.dataset, "test")
    if cfg.train_subset:
        pick = torch.randperm(len(train_set), generator=gen, device=gen.device)[:cfg.train_subset]
        train_set = train_set.subset(pick)
    curve_set = test_set.subset(torch.arange(cfg.test_subset, device="cpu")) if cfg.test_subset else test_set
    c, h, w = train_set.shape
    model = MLP(c * h * w, cfg.hidden, train_set.num_classes, cfg.layer_norm).to(device)
    simulate(cfg, model, *(d.to(device) for d in (train_set, test_set, curve_set)), gen, record)


def simulate(cfg, model: torch.nn.Module, train_set: datasets.Dataset, test_set: datasets.Dataset,
             curve_set: datasets.Dataset, gen: torch.Generator, record: RunRecord) -> None:
    """The training loop on the data's device (the workers' batches are drawn from `gen` on the CPU, once).

    Logged per evaluation: accuracy, bytes, and what a time model needs: per worker, the cumulative operations
    (counted forward + backward FLOPs and the dropping's own work) and the bytes over its link (its push, the
    largest of the W, plus the fetch of the parameter delta). A step reads nothing back from the device: its
    kept counts, density and loss stay there until the evaluation that closes its window reads them at once."""
    device, (c, h, w) = train_set.device, train_set.shape
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    sizes = [p.numel() for p in params.values()]
    n_params, W = sum(sizes), cfg.workers
    opt = (torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam)(model.parameters(), lr=cfg.lr)
    dropper = GradientDropper(W, sizes, cfg.drop_ratio, residual=cfg.residual, threshold=cfg.threshold,
                              sample_size=cfg.sample_size, device=device)

    def loss_fn(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    worker_grads = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0))
    batches = worker_batches(len(train_set), W, cfg.steps, cfg.batch_size, gen).to(device)
    gemm = step_flops(model, train_set.normalize(train_set.x[batches[0, 0]]), train_set.y[batches[0, 0]])
    drop_ops = dropping_ops(sizes, cfg.sample_size, cfg.threshold == "local")
    # SGD applies the averaged sparse gradient as is, so the parameter delta a worker fetches is sparse
    # (the union of the kept indices); Adam's update is dense, so its fetch is dense.
    sparse_fetch = cfg.optimizer == "sgd"

    ledger = Ledger(W, n_params, sparse_fetch, gemm, drop_ops)
    kept_per_tensor = torch.zeros(len(sizes), dtype=torch.float64, device=device)
    tensor_sizes = W * torch.tensor(sizes, dtype=torch.float64, device=device)
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        idx = batches[step - 1]                                            # [W, B]
        xb = train_set.normalize(train_set.x[idx.flatten()]).view(W, cfg.batch_size, c, h, w)
        grads, losses = worker_grads({k: v.detach() for k, v in params.items()}, xb, train_set.y[idx])
        flat = torch.cat([grads[n].reshape(W, -1) for n in names], 1)      # [W, N]
        dense_step = cfg.dense or step <= cfg.warmup_steps
        sent, mask = dropper(flat, dense=dense_step)
        update = sent.mean(0)                                              # [N]

        kept = torch.stack([m.sum(1) for m in mask.split(sizes, 1)], 1)    # [W, tensors]
        kept_per_tensor += kept.sum(0).double() / tensor_sizes
        ledger.add(step, dense_step, kept.sum(1), update, losses.mean())

        for p, g in zip(params.values(), update.split(sizes)):
            p.grad = g.view_as(p)
        opt.step()

        if step % cfg.eval_every == 0 or step == cfg.steps:
            window = ledger.close()                            # the window's one read from the device
            # the curve may use a test subset; the last evaluation is always on the whole test set
            ev = evaluate(model, test_set if step == cfg.steps else curve_set)
            totals = ledger.totals
            record.log(step=step, test_acc=ev["acc"], test_loss=ev["loss"], **window,
                       bytes_up=totals["bytes_up"], bytes_total=totals["bytes_up"] + totals["bytes_down"],
                       compute_ops=totals["compute_ops"], link_bytes=totals["link_bytes"],
                       time_s=time.perf_counter() - start)

    totals = ledger.totals
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
        **{f"kept_{n}": v / cfg.steps for n, v in zip(names, kept_per_tensor.tolist())},
    }
