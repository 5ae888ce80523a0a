"""Boundary-oriented episodic learning, FedDG Sec. 3.3 (Liu et al., CVPR 2021), and a classification analogue.

Shapes: B images, S structures (mask channels: optic disc and cup in the paper, the digit here), D feature
channels, H x W pixels, N embeddings.

The released code (`train_ELCFS.py`, `dataloaders/fundus_dataloader.py::_get_coutour_sample`):
- boundary   = mask - erode(mask, 1 iteration), background ring = dilate(mask, 5 iterations) - mask, both with
  scipy.ndimage's default structure (the 4-neighbour cross) and border value 0;
- an embedding per image and mask: the masked average of the last decoder feature map
  (`extract_contour_embedding`: sum(mask * features) / sum(mask)), for the inner pass (theta, raw images) and
  the outer pass (fast weights theta', frequency-transformed images), with the raw images' masks for both;
- boundary embeddings labelled 1 and background ones 0, fed to
  `pytorch_metric_learning.losses.NTXentLoss(temperature=0.05)` per structure, summed over structures.
That loss (the code's form of the paper's InfoNCE, Eqs. 4-5) on cosine similarities s_ij and labels y:

    l(a, p) = -log( exp(s_ap / tau) / (exp(s_ap / tau) + sum_{n: y_n != y_a} exp(s_an / tau)) ),
    L = mean of l(a, p) over the ordered pairs a != p with y_a = y_p.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TAU = 0.05               # `NTXentLoss(temperature=0.05)` in train_ELCFS.py
BACKGROUND_ITERATIONS = 5  # `binary_dilation(..., iterations=5)` in _get_coutour_sample


SMOOTH = 1e-5              # `utils/losses.py::dice_loss`: smooth = 1e-5 in numerator and denominator


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The code's soft Dice loss (`utils/losses.py::dice_loss`) on sigmoid(logits): per channel
    1 - (2 sum(p t) + 1e-5) / (sum p + sum t + 1e-5) over the whole batch, averaged over channels.
    logits, target [B, S, H, W] -> scalar. Equal to MONAI's DiceLoss(sigmoid=True, batch=True, smooth 1e-5)
    (tested; written out because importing MONAI costs every run several seconds)."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape")
    p, t = torch.sigmoid(logits), target.to(logits.dtype)
    dims = (0, 2, 3)                                                                  # all but the channel
    dice = (2 * (p * t).sum(dims) + SMOOTH) / (p.sum(dims) + t.sum(dims) + SMOOTH)    # [S]
    return (1 - dice).mean()


def check_mask_shape(mask: torch.Tensor) -> None:
    if mask.dim() != 4:
        raise ValueError(f"masks must be [B, S, H, W], got shape {tuple(mask.shape)}")


def cross_max(x: torch.Tensor, pad_value: float) -> torch.Tensor:
    """Max over each pixel's 4-neighbour cross (scipy's default 2-D structure), outside = pad_value.
    x [B, S, H, W] float -> [B, S, H, W]."""
    padded = F.pad(x, (1, 1, 1, 1), value=pad_value)
    vertical = F.max_pool2d(padded[..., :, 1:-1], (3, 1), stride=1)                 # [B, S, H, W]
    horizontal = F.max_pool2d(padded[..., 1:-1, :], (1, 3), stride=1)
    return torch.maximum(vertical, horizontal)


def erode(mask: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """Binary erosion (scipy.ndimage.binary_erosion, cross structure, border value 0), batched.
    mask [B, S, H, W] (bool or 0/1) -> bool [B, S, H, W]."""
    check_mask_shape(mask)
    outside = 1.0 - mask.float()
    for _ in range(iterations):
        outside = cross_max(outside, pad_value=1.0)
    return outside == 0


def dilate(mask: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """Binary dilation (scipy.ndimage.binary_dilation, cross structure, border value 0), batched.
    mask [B, S, H, W] -> bool [B, S, H, W]."""
    check_mask_shape(mask)
    inside = mask.float()
    for _ in range(iterations):
        inside = cross_max(inside, pad_value=0.0)
    return inside > 0


def boundary_and_background(mask: torch.Tensor, background_iterations: int = BACKGROUND_ITERATIONS
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The boundary mask - erode(mask) and the background ring dilate(mask, 5) - mask (`_get_coutour_sample`).
    mask [B, S, H, W] -> two bool [B, S, H, W]."""
    mask = mask.bool()
    return mask & ~erode(mask), dilate(mask, background_iterations) & ~mask


def masked_average(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image and structure, the mean feature over the mask (`extract_contour_embedding`).
    features [B, D, H, W], mask [B, S, H, W] -> [B, S, D]. An empty mask gives a zero embedding (the code's
    division gives NaN)."""
    if features.shape[0] != mask.shape[0] or features.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} and masks {tuple(mask.shape)} must share B, H "
                         "and W")
    mask = mask.to(features.dtype)
    total = torch.einsum("bshw,bdhw->bsd", mask, features)                          # [B, S, D]
    return total / mask.sum((-2, -1)).clamp_min(1.0).unsqueeze(-1)


def nt_xent(embeddings: torch.Tensor, labels: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """pytorch_metric_learning's NTXentLoss, as the code uses it: embeddings [N, D], labels [N] -> scalar.
    Mean over ordered positive pairs of softplus(logsumexp_negatives(a) - s_ap / tau), which equals
    -log(e^{s_ap/tau} / (e^{s_ap/tau} + sum_n e^{s_an/tau})); 0 without a positive or a negative pair."""
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"need embeddings [N, D] and labels [N], got {tuple(embeddings.shape)} and "
                         f"{tuple(labels.shape)}")
    z = F.normalize(embeddings, dim=1)
    logits = z @ z.T / tau                                                           # [N, N]
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    # no branch on the data (a host read per call on a GPU): the non-negatives are filled with the dtype's
    # lowest value, finite so that a row without negatives gets softplus(-huge) = 0 and no NaN gradient
    negatives = torch.logsumexp(logits.masked_fill(same, torch.finfo(logits.dtype).min), dim=1)   # [N]
    terms = F.softplus(negatives[:, None] - logits) * positive                               # [N, N]
    return terms.sum() / positive.sum().clamp_min(1)


def boundary_contrastive_loss(features_inner: torch.Tensor, features_outer: torch.Tensor,
                              boundary: torch.Tensor, background: torch.Tensor,
                              tau: float = TAU) -> torch.Tensor:
    """Eqs. 4-5 as `train_ELCFS.py`: per structure s, NT-Xent over the 4B embeddings [inner boundary, outer
    boundary, inner background, outer background] labelled [1, 1, 0, 0]; summed over structures.
    features_* [B, D, H, W] (inner: theta on raw images, outer: theta' on transformed ones);
    masks [B, S, H, W]."""
    if features_inner.shape != features_outer.shape:
        raise ValueError(f"inner and outer features differ in shape: {tuple(features_inner.shape)} vs "
                         f"{tuple(features_outer.shape)}")
    embed = lambda f, m: masked_average(f, m).transpose(0, 1)                        # noqa: E731  [S, B, D]
    per_structure = torch.cat([embed(features_inner, boundary), embed(features_outer, boundary),
                               embed(features_inner, background), embed(features_outer, background)], 1)
    B = features_inner.shape[0]
    labels = torch.cat([features_inner.new_ones(2 * B), features_inner.new_zeros(2 * B)])   # [4B]
    return sum(nt_xent(h, labels, tau) for h in per_structure)                       # h [4B, D]


def class_contrastive_loss(z_raw: torch.Tensor, z_transformed: torch.Tensor, y: torch.Tensor,
                           tau: float = TAU) -> torch.Tensor:
    """Adaptation for classification (not in the paper): the same NT-Xent over the raw and transformed images'
    embeddings [B, D] each, positives = same class (the two views of an image included), negatives = other
    classes: a supervised contrastive loss in the form of the paper's boundary loss (Sec. 3.3 of the paper)."""
    if z_raw.shape != z_transformed.shape:
        raise ValueError(f"raw and transformed embeddings differ in shape: {tuple(z_raw.shape)} vs "
                         f"{tuple(z_transformed.shape)}")
    return nt_xent(torch.cat([z_raw, z_transformed]), torch.cat([y, y]), tau)
