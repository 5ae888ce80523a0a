"""Batched CIFAR-style augmentation on uint8 / normalised tensors, with its randomness drawn up front.

The random choices (crop offsets, flips, cutout centres) are drawn once per client and round from that
client's generator, so the sequential and the vectorised training paths see identical batches.
"""
from __future__ import annotations

import torch

PAD = 4          # RandomCrop(32, padding=4)
CUTOUT = 16      # Cutout(16) as FedNTD's CIFAR loader


def draw(kind: str, shape: tuple[int, ...], side: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random parameters for `shape` samples (e.g. [S, B]): crop offsets, flips and cutout centres, drawn on the
    generator's device (the CPU: the plan is moved to the run's device once per round)."""
    if kind == "none":
        return {}
    on = {"generator": generator, "device": generator.device}
    params = {"dy": torch.randint(0, 2 * PAD + 1, shape, **on),
              "dx": torch.randint(0, 2 * PAD + 1, shape, **on),
              "flip": torch.rand(shape, **on) < 0.5}
    if kind == "flip_crop_cutout":
        params["cy"] = torch.randint(0, side, shape, **on)
        params["cx"] = torch.randint(0, side, shape, **on)
    return params


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Zero-pad by 4, crop back to H x W at offsets (dy, dx), flip horizontally where `flip`: x [N, C, H, W]."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    arange = lambda k: torch.arange(k, device=x.device)  # noqa: E731
    rows = (dy.view(n, 1) + arange(h)).view(n, 1, h, 1)
    cols = dx.view(n, 1) + arange(w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols).view(n, 1, 1, w)
    return padded[arange(n).view(n, 1, 1, 1), arange(c).view(1, c, 1, 1), rows, cols]


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int = CUTOUT) -> torch.Tensor:
    """Zero rows [cy - size//2, cy + size//2) and the same columns, clipped at the border: a size x size square
    away from the border (DeVries & Taylor 2017, `Cutout.__call__`: y1 = clip(y - L//2), y2 = clip(y + L//2))."""
    n, _, h, w = x.shape
    ys, xs = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
    cy, cx, half = cy.view(n, 1, 1), cx.view(n, 1, 1), size // 2
    inside = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)
    return x * (~inside).unsqueeze(1)


def apply(x_uint8: torch.Tensor, normalize, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Augment a uint8 batch [N, C, H, W] with params flattened to [N], then normalise."""
    if params:
        x_uint8 = crop_flip(x_uint8, params["dy"], params["dx"], params["flip"])
    x = normalize(x_uint8)
    if "cy" in params:
        x = cutout(x, params["cy"], params["cx"])
    return x
