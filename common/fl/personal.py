"""Personalised evaluation shared by the personalised-FL papers (Per-FedAvg, pFedHN): each client's own split as
padded index sets, and one model per client evaluated on its split as one vmapped computation.

Shapes: U clients, L the longest split (shorter ones padded, padding weighted 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from common.fl import local


def padded(index_sets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Index sets of different lengths as [U, L] indices (0 where padded) and [U, L] weights (1 real, 0 pad)."""
    L = max(1, max(len(p) for p in index_sets))
    idx = torch.zeros(len(index_sets), L, dtype=torch.long, device="cpu")
    weight = torch.zeros(len(index_sets), L, device="cpu")
    for u, p in enumerate(index_sets):
        idx[u, :len(p)] = p
        weight[u, :len(p)] = 1.0
    return idx, weight


def gather(data, idx: torch.Tensor) -> torch.Tensor:
    """Normalised images at indices idx [..] of `data`: [.., C, H, W]."""
    return data.normalize(data.x[idx.flatten()]).view(*idx.shape, *data.shape)


def per_client_counts(model: nn.Module, params: dict, buffers: dict, data, index_sets: list[torch.Tensor],
                      batch_size: int = 1000) -> torch.Tensor:
    """[U, 3] (correct, summed cross-entropy, samples) of client u's model, params stacked [U, ...], on its own
    split index_sets[u] (on the data's device), in batches of `batch_size`. Client by client: a vmapped
    convolution over clients' weights is several times slower on a CPU. Stays on the device."""
    rows = []
    for u, idx in enumerate(index_sets):
        p = {n: v[u] for n, v in params.items()}
        row = torch.zeros(3, device=data.device)
        for lo in range(0, len(idx), batch_size):
            i = idx[lo:lo + batch_size]
            logits = local.forward(model, p, buffers, data.normalize(data.x[i]))                # [b, C]
            y = data.y[i]
            row += torch.stack([(logits.argmax(-1) == y).sum().float(),
                                F.cross_entropy(logits, y, reduction="sum"), logits.new_tensor(float(len(i)))])
        rows.append(row)
    return torch.stack(rows)
