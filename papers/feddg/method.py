"""ELCFS (FedDG Sec. 3, Liu et al., CVPR 2021) on the shared FL engine: the episodic step as a pure function of
the parameters, the clients' local training with it, and the test of the unseen domain.

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

The federated loop is the shared engine's (`common/fl`): every round each source client trains one epoch
from the global model, with its own Adam kept across rounds (`optimizer_clients` in the code; the
optimiser's state is never averaged), then the server averages the parameters weighted by the clients' sizes
(`update_global_model`) and tests the average on the unseen domain after every round.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common.fl import local
from common.fl.aggregation import stack_states
from common.fl.engine import ClientUpdate, Method, run_federated
from common.train import DivergenceError, check_finite, predict_logits
from papers.feddg import fourier, losses
from papers.feddg import models as _models  # noqa: F401  (registers feddg_unet and feddg_cnn)
from papers.feddg.federation import DomainFederation
from papers.feddg.metrics import predict_masks, segmentation_scores

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
    scalar (the labels bound in); contrast_loss(features_inner, features_outer) -> scalar.
    The ablation's lower rungs: meta_step_size = 0 makes theta' = theta (the raw and the transformed batch
    both trained on theta: CFSI as augmentation) and skips the inner gradient; contrast_weight = 0 skips the
    contrastive loss."""
    if x_raw.shape != x_freq.shape:
        raise ValueError(f"raw and transformed batches differ in shape: {tuple(x_raw.shape)} vs "
                         f"{tuple(x_freq.shape)}")
    buffers = dict(model.named_buffers())
    out_inner, feat_inner = functional_call(model, (params, buffers), (x_raw,), {"return_features": True})
    inner = task_loss(out_inner)
    fast = params
    if meta_step_size:
        grads = torch.autograd.grad(inner, list(params.values()), retain_graph=True)  # no create_graph
        fast = fast_weights(params, dict(zip(params, grads)), meta_step_size, clip_value)
    out_outer, feat_outer = functional_call(model, (fast, buffers), (x_freq,), {"return_features": True})
    outer = task_loss(out_outer)
    contrast = contrast_loss(feat_inner, feat_outer) if contrast_weight else inner.new_zeros(())
    return EpisodicLosses(inner + outer + contrast_weight * contrast, inner, outer, contrast), fast


# ---------------------------------------------------------------------------------------------- the federation
TRANSFORM_STREAM = 7_919   # the transform's draws (bank partners, lam) use a generator apart from the batches'
N_EXAMPLES = 6             # unseen test images whose final predicted masks a run keeps (the report's figure)


@dataclass(frozen=True)
class Batches:
    """A client's batches of one round on the run's device, [S, B, ...] as the plan's rows (padding included):
    images in [0, 1] [S, B, C, H, W], their transformed copies (or None), digit classes [S, B], stroke masks
    and the boundary / background rings (bool [S, B, 1, H, W])."""

    x: torch.Tensor
    x_freq: torch.Tensor | None
    y: torch.Tensor
    mask: torch.Tensor
    boundary: torch.Tensor
    background: torch.Tensor

    def step(self, s: int, n: int) -> "Batches":
        """Step s's first n (real) samples."""
        return Batches(*(None if v is None else v[s, :n] for v in (self.x, self.x_freq, self.y, self.mask,
                                                                    self.boundary, self.background)))


class ELCFS(Method):
    """Every rung of the paper's ablation on the engine (`cfg.method`, see config.py): `client_update` is the
    code's local epoch (Adam per client, the episodic step per batch), `evaluate` its test of the unseen site."""

    vectorizable = False

    def __init__(self, cfg, fed: DomainFederation, model: nn.Module):
        super().__init__(cfg, fed, model)
        self.nets: dict[int, nn.Module] = {}
        self.optimizers: dict[int, torch.optim.Optimizer] = {}

    def client_net(self, client: int, state: dict) -> nn.Module:
        """The client's own network (`net_clients[i]`) loaded with the global model, and its Adam."""
        if client not in self.nets:
            self.nets[client] = copy.deepcopy(self.model)
            self.optimizers[client] = torch.optim.Adam(self.nets[client].parameters(), lr=self.cfg.lr,
                                                       betas=(0.9, 0.999))
        net = self.nets[client]
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(state[n])
        return net

    def round_batches(self, idx: torch.Tensor, client: int, generator: torch.Generator) -> Batches:
        """The images at idx [S, B] (on the device) and, for the methods that use it, their transformed copies,
        all of the round at once: CFSI (Eq. 2, lam ~ U(0, 1), band L) or the code's DC swap, each image towards
        a random other client's bank amplitude (partners and lam drawn on the CPU `generator`, moved once)."""
        fed, cfg = self.fed, self.cfg
        flat = idx.flatten()
        x = fed.train.normalize(fed.train.x[flat])                                 # [S B, C, H, W]
        x_freq = None
        if cfg.uses_transform and cfg.freq_transform == "interpolate":
            x_freq = fourier.transform_batch(x, fed.bank, client, cfg.band, generator)
        elif cfg.uses_transform:
            x_freq = fourier.dc_swap(x, fed.bank.draw(client, len(flat), generator)).clamp(0.0, 1.0)
        shaped = lambda v: None if v is None else v.view(*idx.shape, *v.shape[1:])  # noqa: E731
        return Batches(shaped(x), shaped(x_freq), fed.train.y[idx], *(shaped(m[flat]) for m in (
            fed.masks, fed.boundary, fed.background)))

    def local_loss(self, net: nn.Module, b: Batches) -> torch.Tensor:
        """The method's loss on one batch: the task loss (soft Dice / cross-entropy) on the raw images, or the
        episodic step with the method's meta step and contrast weight (`FedDGConfig.episode`)."""
        cfg = self.cfg
        segmentation = cfg.task == "segmentation"
        task = (lambda out: losses.dice_loss(out, b.mask)) if segmentation else (
            lambda out: F.cross_entropy(out, b.y))
        if b.x_freq is None:
            return task(net(b.x))
        if segmentation:
            contrast = lambda fi, fo: losses.boundary_contrastive_loss(  # noqa: E731
                fi, fo, b.boundary, b.background, cfg.contrast_tau)
        else:
            contrast = lambda zi, zo: losses.class_contrastive_loss(zi, zo, b.y, cfg.contrast_tau)  # noqa: E731
        step, _ = episodic_step(net, dict(net.named_parameters()), b.x, b.x_freq, task, contrast, **cfg.episode())
        return step.total

    def client_update(self, state: dict, clients: list[int], round_: int) -> ClientUpdate:
        """One local epoch per client in the engine's seeded batch plan (a partial last batch as the code's
        DataLoader; its padding is transformed with the rest, then cut off), one Adam step per batch; the mean
        loss per client is read once per client."""
        cfg, fed = self.cfg, self.fed
        plan = local.make_plan(fed.parts, clients, cfg, fed.seed, round_, fed.train.shape[-1]).to(fed.device)
        trained, loss = [], torch.zeros(len(clients), device=fed.device)
        for k, c in enumerate(clients):
            net, optimizer = self.client_net(c, state), self.optimizers[c]
            generator = local.client_generator(fed.seed + TRANSFORM_STREAM, round_, c)
            batches = self.round_batches(plan.idx[k, :plan.n_steps[k]], c, generator)
            for s in range(plan.n_steps[k]):
                total = self.local_loss(net, batches.step(s, plan.n_real[k][s]))
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                loss[k] += total.detach()
            check_finite(loss[k], f"client {c} ({fed.client_domains[c]}) in round {round_}")
            loss[k] /= max(1, plan.n_steps[k])
            trained.append({n: p.detach().clone() for n, p in net.named_parameters()})
        return ClientUpdate(clients, stack_states(trained), {}, self.client_sizes(clients), loss)

    def evaluate(self, state: dict, round_: int) -> dict:
        """The global model on the unseen domain (segmentation: Dice, HD95 and the share of empty predictions;
        classification: accuracy); in the last round also on the source domains' own test images ("seen")."""
        cfg, fed = self.cfg, self.fed
        model = self.model_with(state)
        if cfg.task == "classification":
            out = super().evaluate(state, round_)
            if round_ == cfg.rounds:
                out["seen_acc"] = (predict_logits(model, fed.seen).argmax(1) == fed.seen.y).float().mean().item()
            return out
        scores = segmentation_scores(model, fed.test, fed.test_masks, cfg.threshold, cfg.largest_component)
        out = {f"test_{k}": v for k, v in scores.items()}
        if round_ == cfg.rounds:
            seen = segmentation_scores(model, fed.seen, fed.seen_masks, cfg.threshold, cfg.largest_component)
            out.update({f"seen_{k}": v for k, v in seen.items()})
        return out


def mask_rows(mask: torch.Tensor) -> list[str]:
    """A bool mask [H, W] as H strings of 0 / 1 (readable in the run record)."""
    return ["".join("1" if v else "0" for v in row) for row in mask.cpu().tolist()]


def summarise(history: list[dict], task: str) -> dict:
    """Final-round and best-round results on the unseen domain (the code tests it every round and keeps every
    checkpoint, so the paper's numbers may be selected on the test site: we report both). Segmentation's best
    round is the best-Dice round, and its HD95 is that round's."""
    last = history[-1]
    if task == "classification":
        return {"final_seen_acc": last["seen_acc"]}
    best = max(range(len(history)), key=lambda i: (history[i]["test_dice"], -i))
    return {"final_dice": last["test_dice"], "final_hd95": last["test_hd95"], "final_empty": last["test_empty"],
            "best_dice": history[best]["test_dice"], "best_hd95": history[best]["test_hd95"],
            "best_round": history[best]["round"], "final_seen_dice": last["seen_dice"],
            "final_seen_hd95": last["seen_hd95"]}


def train(cfg, seed: int, record, device: torch.device | str = "cpu") -> None:
    """One run: the federation, the engine's rounds, then the summary (and, for segmentation, the final
    model's masks of the first unseen test images, for the report's figure)."""
    fed = DomainFederation.build(cfg, seed, device)
    try:
        method = run_federated(cfg, seed, record, ELCFS, fed=fed)
    except DivergenceError as exc:
        raise DivergenceError(f"{cfg.method}: {exc}") from None
    record.summary.update(summarise(record.history, cfg.task),
                          bank_bytes=fed.bank.amplitudes.numel() * fed.bank.amplitudes.element_size())
    if cfg.task == "segmentation":
        examples = fed.test.subset(torch.arange(N_EXAMPLES, device=fed.device))
        masks = predict_masks(method.model_with(method.final_state), examples, cfg.threshold, cfg.largest_component)
        record.summary["example_masks"] = [mask_rows(m[0]) for m in masks]
