"""Centralised training and evaluation shared by the papers: batch sampling from in-memory tensors,
batched evaluation, and the divergence check."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from common.data import Dataset


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
