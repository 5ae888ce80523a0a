"""The episodic step of ELCFS (FedDG Sec. 3.3, Liu et al., CVPR 2021) as a pure function of the parameters.

`train_ELCFS.py`, per batch of a client (x_raw its images, x_freq the same images after
`fourier.transform_batch`):

    L_in    = task(f_theta(x_raw))                                  meta-train on the raw batch
    g       = grad_theta L_in                  (autograd.grad without create_graph: first-order meta-learning)
    theta'  = theta - meta_step_size * clamp(g, -clip_value, clip_value)      (1e-3 and 100 in the code)
    L_out   = task(f_theta'(x_freq))                                meta-test on the transformed batch
    L_cont  = boundary (or class) contrastive loss of the inner and outer feature maps
    L       = L_in + L_out + 0.1 L_cont,  one optimiser step on theta (Adam, lr 1e-3, in the code)

The task loss is the soft Dice on sigmoid outputs for segmentation (`losses.dice_loss`), cross-entropy for the
classification analogue. The fast weights depend on theta only through the identity: d theta' / d theta = I.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

META_STEP_SIZE = 1e-3   # --meta_step_size
CLIP_VALUE = 100.0      # --clip_value
CONTRAST_WEIGHT = 0.1   # loss_outer = loss_outer_1_dice + cont_loss * 0.1


@dataclass(frozen=True)
class EpisodicLosses:
    """The step's scalar losses; `total` carries the graph to theta."""

    total: torch.Tensor
    inner: torch.Tensor
    outer: torch.Tensor
    contrast: torch.Tensor


def fast_weights(params: dict, grads: dict, lr: float, clip_value: float) -> dict:
    """theta' = theta - lr * clamp(g, -clip_value, clip_value), per parameter tensor."""
    return {n: p - lr * grads[n].clamp(-clip_value, clip_value) for n, p in params.items()}


def episodic_step(model: nn.Module, params: dict, x_raw: torch.Tensor, x_freq: torch.Tensor,
                  task_loss: Callable[[torch.Tensor], torch.Tensor],
                  contrast_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  meta_step_size: float = META_STEP_SIZE, clip_value: float = CLIP_VALUE,
                  contrast_weight: float = CONTRAST_WEIGHT) -> tuple[EpisodicLosses, dict]:
    """One episode: returns the losses (backpropagate `total`) and the fast weights theta'.

    model: called as model(x, return_features=True) -> (output, features); params: its parameters
    (requiring grad; the model's own buffers are used); x_raw, x_freq [B, C, H, W]; task_loss(output) ->
    scalar (the labels bound in); contrast_loss(features_inner, features_outer) -> scalar."""
    if x_raw.shape != x_freq.shape:
        raise ValueError(f"raw and transformed batches differ in shape: {tuple(x_raw.shape)} vs "
                         f"{tuple(x_freq.shape)}")
    buffers = dict(model.named_buffers())
    out_inner, feat_inner = functional_call(model, (params, buffers), (x_raw,), {"return_features": True})
    inner = task_loss(out_inner)
    grads = torch.autograd.grad(inner, list(params.values()), retain_graph=True)     # no create_graph
    fast = fast_weights(params, dict(zip(params, grads)), meta_step_size, clip_value)
    out_outer, feat_outer = functional_call(model, (fast, buffers), (x_freq,), {"return_features": True})
    outer = task_loss(out_outer)
    contrast = contrast_loss(feat_inner, feat_outer)
    return EpisodicLosses(inner + outer + contrast_weight * contrast, inner, outer, contrast), fast
