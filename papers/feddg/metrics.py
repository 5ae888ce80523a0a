"""The segmentation test of `train_ELCFS.py::test` / `test_ELCFS.py`, scored as MONAI's metrics.

Shapes: T images, H x W pixels, one mask channel.

The code thresholds the sigmoid output at 0.75, keeps the largest connected component
(`utils/util.py::_connectivity_region_analysis`: `ndimage.label`, 4-connectivity in the image plane), and scores
every image with Dice 2 |P n G| / (|P| + |G|) and HD95 (medpy's `binary.hd95`), then averages over images. We
compute MONAI's `DiceMetric` and `compute_hausdorff_distance(percentile=95)` for all images at once (MONAI's
HD95 loops over images at about 5 ms each, and importing MONAI costs every run several seconds);
tests/test_feddg.py checks both equal MONAI's. Two cases the code leaves undefined: an empty prediction after
thresholding has HD95 = the image diagonal (the largest distance there is; medpy raises, MONAI returns NaN),
and its largest component stays empty (the code's `argmax` over the sizes then picks the background label and
returns an all-ones mask).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from common.data import Dataset
from papers.feddg.losses import erode


def largest_component(masks: torch.Tensor) -> torch.Tensor:
    """Each image's largest 4-connected component (ties: the first in scan order, as the code's `np.argmax`),
    every image labelled in one `ndimage.label` call whose structure links no two images.
    bool [T, 1, H, W] -> bool [T, 1, H, W]."""
    flat = masks[:, 0].cpu().numpy()                                             # [T, H, W]
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)                      # the in-plane cross only
    labels, n = ndimage.label(flat, structure=structure)                        # [T, H, W]: 0, 1..n in scan order
    sizes = np.bincount(labels.ravel(), minlength=n + 1)                        # [n + 1]
    where = np.flatnonzero(labels)
    image_of = np.zeros(n + 1, dtype=np.int64)                                  # [n + 1], the image of each label
    image_of[labels.ravel()[where]] = where // (flat.shape[1] * flat.shape[2])
    key = sizes.astype(np.int64) * (n + 1) + (n - np.arange(n + 1))             # larger first, then lower label
    best = np.full(len(flat), -1, dtype=np.int64)                               # [T]
    np.maximum.at(best, image_of[1:], key[1:])
    keep = np.zeros(n + 1, dtype=bool)
    keep[n - best[best >= 0] % (n + 1)] = True
    return torch.from_numpy(keep[labels]).unsqueeze(1).to(masks.device)


@torch.no_grad()
def predict_masks(model: nn.Module, data: Dataset, threshold: float, keep_largest: bool,
                  batch_size: int = 500) -> torch.Tensor:
    """sigmoid(logits) > threshold, then (optionally) the largest component: bool [T, 1, H, W]."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(data.normalize(data.x[i:i + batch_size])) for i in range(0, len(data), batch_size)])
    model.train(was_training)
    masks = torch.sigmoid(logits) > threshold
    return largest_component(masks) if keep_largest else masks


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice 2 |P n G| / (|P| + |G|) of each image (the code's `_eval_dice`, MONAI's DiceMetric with
    include_background and ignore_empty off: tested equal): bool [T, 1, H, W] x 2 -> [T]; an empty
    prediction of a non-empty mask scores 0."""
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    return 2 * (p * t).sum(1) / (p.sum(1) + t.sum(1)).clamp_min(1.0)


def nearest_distances(edges: torch.Tensor) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest `edges` pixel of its own image, float64 [T, H, W]
    (NaN in an image without edges): one exact `distance_transform_edt` over the stack, the images set
    further apart than any two pixels of one image."""
    flat = edges[:, 0].cpu().numpy()                                             # [T, H, W]
    if not flat.any():
        return np.full(flat.shape, np.nan)
    apart = float(sum(flat.shape[1:]))                                          # > the image diagonal
    dist = ndimage.distance_transform_edt(~flat, sampling=(apart, 1.0, 1.0))
    dist[~flat.any((1, 2))] = np.nan
    return dist


def directed_percentile(dist: np.ndarray, edges: torch.Tensor, q: float) -> torch.Tensor:
    """Per image, the q-th quantile (linear, as torch.quantile) of `dist` [T, H, W] over the `edges` pixels
    (bool [T, 1, H, W]): [T], NaN without edges."""
    values = torch.from_numpy(dist).flatten(1)                                  # [T, H W]
    values = values.masked_fill(~edges[:, 0].cpu().flatten(1), float("nan"))
    return torch.nanquantile(values, q, dim=1)


def hd95_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI's `compute_hausdorff_distance(percentile=95)` of each image, vectorised: the edges are
    mask ^ erode(mask) (scipy's cross, border 0: `get_mask_edges`), the distances the exact Euclidean ones between
    edge pixels, HD95 the larger of the two directed 95th percentiles (`torch.quantile`). bool [T, 1, H, W]
    x 2 -> [T] on pred's device; an empty prediction (or mask) gets the image diagonal (MONAI: NaN).
    tests/test_feddg.py checks it equals MONAI's."""
    edges_pred, edges_target = (m & ~erode(m) for m in (pred.bool(), target.bool()))
    hd = torch.maximum(directed_percentile(nearest_distances(edges_target), edges_pred, 0.95),
                       directed_percentile(nearest_distances(edges_pred), edges_target, 0.95))
    diagonal = math.hypot(*pred.shape[-2:])
    return torch.nan_to_num(hd, nan=diagonal).float().to(pred.device)


def segmentation_scores(model: nn.Module, data: Dataset, masks: torch.Tensor, threshold: float,
                        keep_largest: bool) -> dict[str, float]:
    """Mean Dice and HD95 over the images of `data` (with their masks), and the share of empty predictions."""
    pred = predict_masks(model, data, threshold, keep_largest)
    empty = ~pred.flatten(1).any(1)
    return {"dice": dice_per_image(pred, masks).mean().item(), "hd95": hd95_per_image(pred, masks).mean().item(),
            "empty": empty.float().mean().item()}
