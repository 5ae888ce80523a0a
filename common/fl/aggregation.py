"""Aggregation of client models held as stacked state dicts ({name: tensor [K, ...]})."""
from __future__ import annotations

import torch


def stack_states(states: list[dict]) -> dict:
    """[{name: tensor}] * K -> {name: tensor [K, ...]}."""
    return {n: torch.stack([s[n] for s in states]) for n in states[0]}


def unstack(stacked: dict, k: int) -> dict:
    return {n: t[k] for n, t in stacked.items()}


def weighted_average(stacked: dict, weights: torch.Tensor) -> dict:
    """sum_k weights[k] * t[k] for every tensor (on the tensors' device; `weights` may be a CPU tensor); integer tensors (BatchNorm's num_batches_tracked) are
    averaged in float and rounded back to their dtype."""
    out = {}
    for n, t in stacked.items():
        w = weights.to(t.device, torch.float64 if not t.is_floating_point() else t.dtype).view(-1, *[1] * (t.dim() - 1))
        avg = (w * t.to(w.dtype)).sum(0)
        out[n] = avg if t.is_floating_point() else avg.round().to(t.dtype)
    return out


def state_bytes(state: dict) -> int:
    """Bytes of a state dict as sent over the wire (dense)."""
    return sum(t.numel() * t.element_size() for t in state.values())
