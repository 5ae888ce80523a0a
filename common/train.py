"""Centralised training and evaluation shared by the papers: batch sampling from in-memory tensors,
batched evaluation, the divergence check, and a seeded epoch loop (`TrainConfig`, `train_epochs`) with SGD,
a step or cosine learning-rate schedule and per-batch augmentation, used by KD-SVD's teachers and students."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from common import augment
from common.data import Dataset
from common.experiments import check


class DivergenceError(RuntimeError):
    """A loss became NaN or infinite."""


def check_finite(loss: torch.Tensor | float, where: str) -> None:
    value = float(loss)
    if not math.isfinite(value):
        raise DivergenceError(f"loss is {value} at {where}: the run diverged. Lower the learning rate "
                              "(the config's `lr`) or check the inputs' normalisation.")


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False):
    """Index tensors of one shuffled epoch over n samples."""
    perm = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last else n
    return [perm[i:i + batch_size] for i in range(0, stop, batch_size)]


def random_batch(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """batch_size indices drawn without replacement from range(n) (with replacement if n < batch_size)."""
    if n >= batch_size:
        return torch.randperm(n, generator=generator)[:batch_size]
    return torch.randint(n, (batch_size,), generator=generator)


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset, batch_size: int = 256) -> torch.Tensor:
    """Logits [N, K] of `model` in eval mode over the whole data set, in batches."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(data.normalize(data.x[i:i + batch_size])) for i in range(0, len(data), batch_size)])
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 256) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy on a whole data set."""
    logits = predict_logits(model, data, batch_size)
    return {"acc": (logits.argmax(1) == data.y).float().mean().item(),
            "loss": F.cross_entropy(logits, data.y).item()}


# ------------------------------------------------------------------------------------- centralised training
# Shared by the papers that train one model on one data set (KD-SVD's teachers and students): the data live on
# the run's device as uint8 tensors; each epoch's batch order and augmentation are drawn at once on a CPU
# generator (so a seed gives the same batches on any device) and moved in one copy; the inner loop cuts batches
# on the device and reads the host once per epoch (the mean loss, for the divergence check).
SCHEDULES = ("step", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Centralised training: data, SGD with (Nesterov) momentum, the learning-rate schedule, evaluation.

    `lr_schedule`: "step" multiplies `lr` by `lr_gamma` at each fraction of `epochs` in `lr_milestones` (counted
    in whole epochs, as KD_methods_with_TF's learning_rate_scheduler), "cosine" anneals it per step to 0,
    "constant" keeps it. `train_fraction` < 1 trains on a class-stratified subset drawn with the run's seed."""

    dataset: str = "cifar10"
    train_split: str = "train"
    train_fraction: float = 1.0       # share of the training split, stratified per class (seeded)
    test_subset: int = 0              # 0 = the whole test split, else its first n images
    augment: str = "flip_crop"        # none | flip_crop | flip_crop_cutout (common/augment.py, per batch)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    lr_schedule: str = "step"
    lr_milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    lr_gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    eval_every: int = 1               # evaluate every k epochs (and always after the last)
    eval_batch_size: int = 500

    def __post_init__(self):
        check(0 < self.train_fraction <= 1, f"train_fraction must be in (0, 1], got {self.train_fraction}")
        check(self.test_subset >= 0, f"test_subset must be >= 0 (0 = the whole test split), got {self.test_subset}")
        check(self.augment in ("none", "flip_crop", "flip_crop_cutout"),
              f"augment must be none, flip_crop or flip_crop_cutout, got {self.augment!r}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {', '.join(SCHEDULES)}, got "
              f"{self.lr_schedule!r}")
        check(all(0 < m < 1 for m in self.lr_milestones) and list(self.lr_milestones) == sorted(self.lr_milestones),
              f"lr_milestones must be increasing fractions of the epochs in (0, 1), got {self.lr_milestones}")
        check(0 < self.lr_gamma <= 1, f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")


def lr_at(cfg: TrainConfig, epoch: int, fraction: float = 0.0) -> float:
    """The learning rate `fraction` of the way through epoch `epoch` (0-based)."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch + fraction) / cfg.epochs))
    if cfg.lr_schedule == "step":
        passed = sum(epoch >= int(cfg.epochs * m) for m in cfg.lr_milestones)
        return cfg.lr * cfg.lr_gamma ** passed
    return cfg.lr


def sgd(params, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with the config's momentum, Nesterov flag and weight decay (added to every parameter's gradient, as
    TF's l2_regularizer on every weight, bias and BN scale: the gradient of wd/2 ‖w‖²)."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def stratified_subset(y: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of round(fraction · n_c) random samples of every class c, sorted; all indices when fraction = 1."""
    if fraction >= 1:
        return torch.arange(len(y))
    y = y.cpu()
    keep = []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        take = max(1, round(fraction * len(members)))
        keep.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(keep).sort().values


def load_split(cfg: TrainConfig, seed: int, device: torch.device | str) -> tuple[Dataset, Dataset]:
    """(train, test) on `device`: the training split's stratified `train_fraction` (drawn with `seed`) and the
    first `test_subset` test images (all when 0)."""
    from common import data as datasets

    train = datasets.load(cfg.dataset, cfg.train_split)
    test = datasets.load(cfg.dataset, "test")
    if cfg.train_fraction < 1:
        train = train.subset(stratified_subset(train.y, cfg.train_fraction, torch.Generator().manual_seed(seed)))
    if cfg.test_subset:
        test = test.subset(torch.arange(min(cfg.test_subset, len(test))))
    return train.to(device), test.to(device)


def epoch_plan(n: int, cfg: TrainConfig, side: int, generator: torch.Generator,
               device: torch.device | str) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """One epoch's batches: (indices [b], augmentation parameters [b] each) on `device`. The shuffle and the
    augmentation are drawn on the CPU generator and moved in one copy each; the last batch may be short."""
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    params = {k: v.to(device) for k, v in augment.draw(cfg.augment, (n,), side, generator).items()}
    return [(perm[i:i + cfg.batch_size], {k: v[i:i + cfg.batch_size] for k, v in params.items()})
            for i in range(0, n, cfg.batch_size)]


def train_epochs(model: nn.Module, train: Dataset, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                 step: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], generator: torch.Generator,
                 where: str = "training", first_epoch: int = 0) -> Iterator[tuple[int, float, float]]:
    """The seeded epoch loop. Per batch: the learning rate of the schedule, the augmented and normalised batch
    x [b, C, H, W] with labels y [b], `optimizer.zero_grad()`, `loss = step(x, y, epoch)` (which fills the
    gradients and returns the detached loss), `optimizer.step()`. Yields (epochs done, mean loss, seconds per
    step) after each epoch; the mean loss is the loop's one read of the device, checked to be finite."""
    side = train.shape[-1]
    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        plan = epoch_plan(len(train), cfg, side, generator, train.device)
        total = torch.zeros((), device=train.device)
        start = time.perf_counter()
        for i, (idx, aug) in enumerate(plan):
            set_lr(optimizer, lr_at(cfg, epoch, i / len(plan)))
            x = augment.apply(train.x[idx], train.normalize, aug)
            optimizer.zero_grad(set_to_none=True)
            total += step(x, train.y[idx], epoch)
            optimizer.step()
        mean = float(total) / len(plan)
        check_finite(mean, f"{where}, epoch {epoch + 1}")
        yield epoch + 1, mean, (time.perf_counter() - start) / len(plan)


def due(epoch: int, cfg: TrainConfig) -> bool:
    """Whether to evaluate after `epoch` epochs (every eval_every, and after the last)."""
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> dict[str, float]:
    """Stanton et al. (2021), "Does knowledge distillation really work?": top-1 agreement, the share of inputs
    where student and teacher predict the same class, and the mean predictive KL(p_T ‖ p_S) at temperature 1
    (nats); logits [N, K]."""
    log_p_S, log_p_T = F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1)
    kl = (log_p_T.exp() * (log_p_T - log_p_S)).sum(1).mean()
    top1 = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
    return {"agreement": top1.item(), "kl_teacher_student": kl.item()}
