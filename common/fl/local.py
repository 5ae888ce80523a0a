"""Local training of the sampled clients: one plan of batches, two paths that follow it.

Shapes: K sampled clients, S steps (the most any client takes this round), B batch size.

`make_plan` draws every client's batches for the round from that client's own generator (seeded by
run seed, round and client id), so the plan, and therefore the result, does not depend on which path
runs it or on which other clients were sampled. A client with fewer steps than S is masked out of the
remaining steps; a partial last batch of an epoch is padded and its padding weighted 0 (the padding is
always the batch's tail). The sequential path cuts the padding off and runs the genuine short batch, as a
DataLoader does, so BatchNorm's batch statistics and running averages never see a padded copy; the
vectorised path keeps fixed shapes and is used with BatchNorm only when every batch is whole.

- `train_vectorized`: the K clients as one computation, torch.func.vmap over stacked parameters
  (functional_call + grad), with SGD (momentum, weight decay, optional gradient-norm clipping) written out
  functionally.
- `train_sequential`: client after client with torch.optim.SGD, the reference.
Both call the method's `loss(params, buffers, x, y, w, shared, mine)`, so a method's local-loss term is
written once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from common import augment
from common.train import check_finite


@dataclass
class Plan:
    idx: torch.Tensor      # [K, S, B] sample indices into the training tensor (0 where padded)
    weight: torch.Tensor   # [K, S, B] 1.0 for a real sample, 0.0 for padding
    active: torch.Tensor   # [K, S] whether the client takes step s
    aug: dict              # augmentation parameters, each [K, S, B]
    # host copies of the counts the loops branch on, so a loop on a GPU never waits for the device to answer
    n_steps: list[int] | None = None      # [K] steps each client takes
    n_real: list[list[int]] | None = None  # [K][S] real (unpadded) samples in each step

    def __post_init__(self):
        if self.n_steps is None:
            self.n_steps = self.active.sum(1).tolist()
            self.n_real = self.weight.count_nonzero(-1).tolist()

    @property
    def steps(self) -> int:
        return self.idx.shape[1]

    @property
    def full_batches(self) -> bool:
        """Every step a client takes has a whole batch (what BatchNorm needs to be path-independent)."""
        B = self.idx.shape[2]
        return all(r == B for n, row in zip(self.n_steps, self.n_real) for r in row[:n])

    def to(self, device: torch.device) -> "Plan":
        """The plan's tensors on the run's device: one copy per round (the draws are made on the CPU)."""
        return Plan(self.idx.to(device), self.weight.to(device), self.active.to(device),
                    {n: v.to(device) for n, v in self.aug.items()}, self.n_steps, self.n_real)

    def reordered(self, order: list[int]) -> "Plan":
        """The same plan with its clients in `order`."""
        index = torch.tensor(order, device=self.idx.device)
        return Plan(self.idx[index], self.weight[index], self.active[index],
                    {n: v[index] for n, v in self.aug.items()}, [self.n_steps[k] for k in order],
                    [self.n_real[k] for k in order])


def client_generator(seed: int, round_: int, client: int) -> torch.Generator:
    """A CPU generator: every draw of the plan is made on the CPU, so a seed gives the same batches on any device."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + round_) * 1_000_003 + client) % (2 ** 63))


def client_batches(n: int, batch_size: int, epochs: int, steps: int, generator: torch.Generator):
    """Batches of one client: `steps` full batches from a stream of shuffled epochs when steps > 0, else
    `epochs` shuffled epochs with a partial last batch. Returns (positions [S, B], weight [S, B])."""
    cpu = torch.device("cpu")
    if n == 0:
        return torch.zeros(0, batch_size, dtype=torch.long, device=cpu), torch.zeros(0, batch_size, device=cpu)
    if steps > 0:
        order = torch.cat([torch.randperm(n, generator=generator, device=cpu)
                           for _ in range(math.ceil(steps * batch_size / n))])
        return order[:steps * batch_size].view(steps, batch_size), torch.ones(steps, batch_size, device=cpu)
    per_epoch = math.ceil(n / batch_size)
    pos = torch.zeros(epochs * per_epoch, batch_size, dtype=torch.long, device=cpu)
    weight = torch.zeros(epochs * per_epoch, batch_size, device=cpu)
    for e in range(epochs):
        perm = torch.randperm(n, generator=generator, device=cpu)
        padded = torch.cat([perm, perm.new_zeros(per_epoch * batch_size - n)]).view(per_epoch, batch_size)
        pos[e * per_epoch:(e + 1) * per_epoch] = padded
        weight[e * per_epoch:(e + 1) * per_epoch].view(-1)[:n] = 1.0
    return pos, weight


def make_plan(parts: list[torch.Tensor], clients: list[int], cfg, seed: int, round_: int, side: int) -> Plan:
    """The round's batches of every sampled client, drawn on the CPU (`parts` are CPU index tensors)."""
    idx, weights, actives, augs = [], [], [], []
    plans = []
    for c in clients:
        gen = client_generator(seed, round_, c)
        pos, w = client_batches(len(parts[c]), cfg.batch_size, cfg.local_epochs, cfg.local_steps, gen)
        plans.append((parts[c][pos] if len(pos) else pos, w, augment.draw(cfg.augment, tuple(w.shape), side, gen)))
    steps = max(len(p[1]) for p in plans)
    for sample_idx, w, aug in plans:
        pad = steps - len(w)
        idx.append(torch.cat([sample_idx, sample_idx.new_zeros(pad, cfg.batch_size)]))
        weights.append(torch.cat([w, w.new_zeros(pad, cfg.batch_size)]))
        actives.append(torch.arange(steps, device="cpu") < len(w))
        augs.append({k: torch.cat([v, v.new_zeros(pad, cfg.batch_size)]) for k, v in aug.items()})
    return Plan(torch.stack(idx), torch.stack(weights), torch.stack(actives),
                {k: torch.stack([a[k] for a in augs]) for k in (augs[0] if augs else {})})


def batch(data, plan: Plan, s: int, k: int | slice = slice(None)):
    """Inputs [.., B, C, H, W] (augmented, normalised), labels and weights of step s for client(s) k."""
    idx = plan.idx[k, s]
    aug = {name: v[k, s].reshape(-1) for name, v in plan.aug.items()}
    x = augment.apply(data.x[idx.reshape(-1)], data.normalize, aug)
    return x.view(*idx.shape, *x.shape[1:]), data.y[idx], plan.weight[k, s]


def clip_by_norm(grads: list, max_norm: float) -> list:
    """Each client's gradient scaled to norm <= max_norm, as torch.nn.utils.clip_grad_norm_ (coefficient
    max_norm / (norm + 1e-6), capped at 1): grads stacked [k, ...], the norm over all of a client's tensors."""
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()          # [k]
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return [g * coef.view(-1, *[1] * (g.dim() - 1)) for g in grads]


def _sgd_step(params: list, grads: list, momentum: list | None, lr: float, m: float, weight_decay: float):
    """torch.optim.SGD's rule (dampening 0, no Nesterov), in place on all tensors at once (views of the stacked
    client parameters): d = g + wd * p; buf = m * buf + d; p -= lr * buf."""
    if weight_decay:
        torch._foreach_add_(grads, params, alpha=weight_decay)
    if momentum is not None:
        torch._foreach_mul_(momentum, m)
        torch._foreach_add_(momentum, grads)
        grads = momentum
    torch._foreach_add_(params, grads, alpha=-lr)


def train_vectorized(method, model: nn.Module, params: dict, buffers: dict, data, plan: Plan, lr: float,
                     shared: dict, mine: dict) -> tuple[dict, dict, torch.Tensor]:
    """Train K clients at once. params/buffers/mine are stacked [K, ...]; returns them trained and the mean
    loss per client [K]. Clients are ordered by their number of steps, so the ones still training at step s
    are a prefix [:k] and a finished client costs nothing."""
    cfg = method.cfg
    order = sorted(range(len(plan.n_steps)), key=lambda k: -plan.n_steps[k])  # stable: ties keep client order
    plan = plan.reordered(order)
    index = torch.tensor(order, device=plan.idx.device)
    params, buffers, mine = ({n: v[index] for n, v in d.items()} for d in (params, buffers, mine))
    # randomness="different": a method may draw noise inside its loss (each client its own draws)
    step = vmap(grad_and_value(method.loss, has_aux=True), in_dims=(0, 0, 0, 0, 0, None, 0),
                randomness="different")
    momentum = {n: torch.zeros_like(p) for n, p in params.items()} if cfg.momentum else {}
    loss_sum = torch.zeros(len(order), device=plan.idx.device)
    for s in range(plan.steps):
        k = sum(n > s for n in plan.n_steps)
        x, y, w = batch(data, plan, s, slice(0, k))
        p_k = {n: v[:k] for n, v in params.items()}
        b_k = {n: v[:k].clone() for n, v in buffers.items()}  # BatchNorm updates these in place
        grads, (_, ce) = step(p_k, b_k, x, y, w, shared, {n: v[:k] for n, v in mine.items()})
        grads = [grads[n] for n in params]
        if cfg.clip_grad_norm:
            grads = clip_by_norm(grads, cfg.clip_grad_norm)
        _sgd_step([p_k[n] for n in params], grads,
                  [momentum[n][:k] for n in params] if cfg.momentum else None, lr, cfg.momentum, cfg.weight_decay)
        for n, b in b_k.items():
            buffers[n][:k] = b
        loss_sum[:k] += ce.detach()
    check_finite(loss_sum.sum(), f"the local training of clients {sorted(order)}")  # one device sync per round
    inverse = torch.argsort(index)
    params, buffers = ({n: v[inverse] for n, v in d.items()} for d in (params, buffers))
    n_steps = torch.tensor(plan.n_steps, device=loss_sum.device)
    return params, buffers, (loss_sum / n_steps.clamp_min(1))[inverse]


def train_sequential(method, model: nn.Module, params: dict, buffers: dict, data, plan: Plan, lr: float,
                     shared: dict, mine: dict) -> tuple[dict, dict, torch.Tensor]:
    """The reference path: each client in turn, torch.optim.SGD, the same plan and loss."""
    cfg = method.cfg
    K = plan.idx.shape[0]
    out_p = {n: torch.empty_like(p) for n, p in params.items()}
    out_b = {n: torch.empty_like(b) for n, b in buffers.items()}
    losses = torch.zeros(K, device=plan.idx.device)
    for k in range(K):
        p_k = {n: p[k].clone().requires_grad_(True) for n, p in params.items()}
        b_k = {n: b[k].clone() for n, b in buffers.items()}
        mine_k = {n: v[k] for n, v in mine.items()}
        opt = torch.optim.SGD(list(p_k.values()), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        n_steps = plan.n_steps[k]
        for s in range(n_steps):
            x, y, w = batch(data, plan, s, k)
            real = plan.n_real[k][s]
            x, y, w = x[:real], y[:real], w[:real]  # the genuine short batch (padding is the tail)
            opt.zero_grad(set_to_none=True)
            loss, ce = method.loss(p_k, b_k, x, y, w, shared, mine_k)
            loss.backward()
            if cfg.clip_grad_norm:
                nn.utils.clip_grad_norm_(list(p_k.values()), cfg.clip_grad_norm)
            opt.step()
            losses[k] += ce.detach()
        check_finite(losses[k], f"the local training of the round's client {k}")  # one device sync per client
        losses[k] /= max(1, n_steps)
        for n in params:
            out_p[n][k] = p_k[n].detach()
        for n in buffers:
            out_b[n][k] = b_k[n]
    return out_p, out_b, losses


def forward(model: nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    """The model as a function of its parameters and buffers."""
    return functional_call(model, (params, buffers), (x,))
