"""Per-FedAvg (Fallah, Mokhtari and Ozdaglar, NeurIPS 2020) on the shared FL engine, with the paper's personalised
evaluation applied to every method (the baselines too).

Shapes: K sampled users, U users evaluated, S = tau local steps, B batch, A adaptation steps, T / N a user's
test / training split (padded to the longest), C classes.

The MAML objective (the paper's problem (3)) and the gradient of user i's term:

    F(w) = (1/n) sum_i f_i(w - alpha grad f_i(w)),
    grad F_i(w) = (I - alpha H_i(w)) grad f_i(w - alpha grad f_i(w)),      H_i the Hessian of f_i.

A local step of Per-FedAvg (Algorithm 1) estimates grad F_i with three independent batches D, D', D'' of the
user's data:

    w_hat = w - alpha grad f(w; D)                                   the temporary, adapted model
    g     = grad f(w_hat; D')                                        the outer gradient at the adapted point
    FO:   w <- w - beta g                                            the Hessian term dropped (first-order MAML)
    HF:   h = [grad f(w + delta g; D'') - grad f(w - delta g; D'')] / (2 delta)      (~ H(w; D'') g)
          w <- w - beta (g - alpha h)
    MAML: w <- w - beta (g - alpha H(w; D'') g)                      the exact Hessian-vector product (torch.func
          jvp of the gradient: forward over reverse); with maml_hessian_batch = "inner", the gradient of
          w -> f(w - alpha grad f(w; D); D') taken through the inner step (Finn et al.'s MAML: Hessian on D)

After tau steps the server averages the users' models (FedAvg's aggregation). Gradient evaluations per local
step (`GRADS_PER_STEP`): FedAvg and Local-only 1, FO 2, HF 4, MAML 4 (2 gradients and one Hessian-vector product,
counted as 2 gradients: the cost of the finite difference it replaces; forward-over-reverse costs about that).

The K sampled users train as one vectorised computation: `torch.func.vmap` of the per-user step over stacked
parameters (the engine's vectorised path is the model), or one user after the other (`vectorize: false`, the
same per-user function without vmap); both follow one batch plan drawn on the CPU from the engine's per-user
generators and moved to the device in one copy per round.

The personalised evaluation (`Personalised.evaluate`): every user starts from the global model (Local-only: from
its own model), takes one SGD step of size alpha on a batch of its own training data (and, as an extra,
`adapt_extra_steps` steps on successive batches), and is tested on its own test split (the same label mix); the
accuracies before and after adaptation are averaged over users. The adaptation batches depend on (seed, round,
user) only, so every method adapts on the same batches. The meta-objective F itself is measured on the training
splits with full-batch gradients. Vectorised over users (vmap), read from the device once per evaluation.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, grad_and_value, jvp, vmap

from common.experiments import ConfigError
from common.fl import local
from common.fl.aggregation import stack_states
from common.fl.engine import ClientUpdate, Method, get_method, register_method, run_federated
from common.fl.local import client_batches
from common.fl.personal import gather, padded
from common.models import MLP, register_model
from common.train import DivergenceError
from papers.perfedavg import partition  # noqa: F401  (registers the `dominant_classes` split)
from papers.perfedavg.config import PerFedAvgConfig

GRADS_PER_STEP = {"fedavg": 1, "local": 1, "central": 1,
                  "perfedavg_fo": 2, "perfedavg_hf": 4, "perfedavg_maml": 4}
EVAL_USER_CHUNK = 10   # users evaluated per vmap call (bounds the memory of the gathered splits)


@register_model("perfedavg_mlp")
def perfedavg_mlp(in_shape, num_classes):
    """The paper's MLP: input -> 80 -> 60 -> C, ELU on the two hidden layers only (not on the logits, unlike the
    unofficial KarhouTam/Per-FedAvg), torch's default ELU (alpha = 1) and default nn.Linear initialisation."""
    c, h, w = in_shape
    return MLP(c * h * w, (80, 60), num_classes, activation=nn.ELU)


# ---------------------------------------------------------------------------------------------- the local step
def axpy(a: float, x: dict, y: dict) -> dict:
    """y + a * x for dicts of tensors (parameters, gradients)."""
    return {n: y[n] + a * x[n] for n in y}


def first_order_direction(f, params: dict, d: tuple, d1: tuple, alpha: float):
    """FO: g = grad f(w - alpha grad f(w; D); D'). Returns (g, f(w_hat; D')). `f(params, *batch)` is the loss,
    d, d1 the batches D, D' (each a tuple of f's batch arguments)."""
    w_hat = axpy(-alpha, grad(f)(params, *d), params)
    g, meta_loss = grad_and_value(f)(w_hat, *d1)
    return g, meta_loss


def hessian_free_direction(f, params: dict, d: tuple, d1: tuple, d2: tuple, alpha: float, delta: float):
    """HF: g - alpha h with h = [grad f(w + delta g; D'') - grad f(w - delta g; D'')] / (2 delta)."""
    g, meta_loss = first_order_direction(f, params, d, d1, alpha)
    plus, minus = grad(f)(axpy(delta, g, params), *d2), grad(f)(axpy(-delta, g, params), *d2)
    return {n: g[n] - alpha * (plus[n] - minus[n]) / (2 * delta) for n in g}, meta_loss


def hessian_vector_product(f, params: dict, v: dict, batch: tuple) -> dict:
    """H(w; batch) v, exact: the directional derivative of grad f along v (forward over reverse)."""
    return jvp(lambda p: grad(f)(p, *batch), (params,), (v,))[1]


def maml_direction(f, params: dict, d: tuple, d1: tuple, d2: tuple, alpha: float, hessian_batch: str):
    """Exact: (I - alpha H(w; D'')) grad f(w_hat; D') ("independent"), or the gradient of
    w -> f(w - alpha grad f(w; D); D') through the inner step ("inner": (I - alpha H(w; D)) grad f(w_hat; D'))."""
    if hessian_batch == "inner":
        return grad_and_value(lambda p: f(axpy(-alpha, grad(f)(p, *d), p), *d1))(params)
    g, meta_loss = first_order_direction(f, params, d, d1, alpha)
    hv = hessian_vector_product(f, params, g, d2)
    return {n: g[n] - alpha * hv[n] for n in g}, meta_loss


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the samples of weight w (1 real, 0 padding): logits [B, C], y [B], w [B]."""
    return (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum().clamp_min(1.0)


def maml_plan(method: Method, clients: list[int], round_: int) -> local.Plan:
    """The round's batches: 3 tau batches per user from the engine's per-user CPU generator (one stream of
    shuffled epochs of the user's own training data, as `local.make_plan`), step s using D = batch 3s,
    D' = 3s + 1, D'' = 3s + 2: three distinct draws, disjoint while they fall in one epoch. Moved in one copy."""
    cfg = dataclasses.replace(method.cfg, local_steps=3 * method.cfg.local_steps)
    plan = local.make_plan(method.fed.parts, clients, cfg, method.fed.seed, round_, method.fed.train.shape[-1])
    return plan.to(method.fed.device)


def step_batches(data, plan: local.Plan, s: int, k: int | slice = slice(None)) -> tuple:
    """(x, y, w) of D, D', D'' of local step s for user(s) k: x [.., B, C, H, W], y and w [.., B]."""
    return tuple(local.batch(data, plan, 3 * s + j, k) for j in range(3))


# ---------------------------------------------------------------------------------------------- the evaluation
def eval_generator(seed: int, round_: int, client: int) -> torch.Tensor:
    """A CPU generator for user `client`'s adaptation batches at an evaluated round: seeded by (seed, round, user)
    only, so every method adapts on the same batches; salted apart from the training plan's generators."""
    salted = (seed * 1_000_003 + round_) * 1_000_003 + client + 7_777_777
    return torch.Generator().manual_seed(salted % (2 ** 63))


class Personalised(Method):
    """The paper's personalised evaluation, gradient-evaluation counting and the divergence message, for any
    engine method (`personalised(cls)`) and built into the Per-FedAvg variants.

    Logged per evaluation: pers_acc_0 / pers_loss_0 (the start model on each user's test split), pers_acc_1 /
    pers_loss_1 (after one step of alpha), pers_acc_{A} / pers_loss_{A} (after A = adapt_extra_steps steps), all
    means over users; meta_objective = F(w) on the training splits with full-batch gradients (for Local-only, the
    same formula from each user's own model); personal_acc = pers_acc_1; test_acc / test_loss of the global model
    on the official test split (Local-only: the users' models, averaged); grad_evals, cumulative over rounds.
    """

    def __init__(self, cfg, fed, model):
        # the users' own training splits, kept before `central` pools them into one client
        self.user_parts = list(fed.parts) if fed is not None else []
        super().__init__(cfg, fed, model)
        self.grad_evals = 0
        self._eval_sets = None

    @property
    def grads_per_step(self) -> int:
        return GRADS_PER_STEP.get(self.name, 1)

    def knob(self, name: str):
        """The paper's knob, or PerFedAvgConfig's default when run with a plain FLConfig (the engine's tests)."""
        return getattr(self.cfg, name, getattr(PerFedAvgConfig, name))

    # ------------------------------------------------------------------ counting
    def count_gradients(self, clients: list[int], steps: int | None = None) -> None:
        """Adds the round's gradient evaluations: grads_per_step x the steps each of `clients` took."""
        cfg = self.cfg
        for c in clients:
            n = len(self.fed.parts[c])
            per_epoch = -(-n // cfg.batch_size)
            taken = steps if steps is not None else (cfg.local_steps or cfg.local_epochs * per_epoch)
            self.grad_evals += self.grads_per_step * (taken if n else 0)

    def client_update(self, state, clients, round_):
        try:
            update = super().client_update(state, clients, round_)
        except DivergenceError as exc:   # the engine's check names the round's positions: add the round and ids
            raise DivergenceError(f"{self.name} diverged at round {round_} (the round's clients are users "
                                  f"{clients}, in this order): {exc}") from None
        self.count_gradients(update.clients)   # `central` trains one client holding all the data
        return update

    # ------------------------------------------------------------------ evaluation
    def loss_fn(self, params: dict, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """f(params; batch): the model's weighted cross-entropy (buffers: the model's own, unchanged)."""
        return weighted_cross_entropy(local.forward(self.model, params, self.fixed_buffers, x), y, w)

    @property
    def fixed_buffers(self) -> dict:
        return {n: b for n, b in self.model.named_buffers()}

    def eval_starts(self, state: dict) -> tuple[dict, bool]:
        """The models the users adapt from: (params, batched). The global model (unbatched), or for a method whose
        users keep their own models (Local-only, pFedHN: `personal_models`) those, stacked [U, ...]."""
        own = self.personal_models(state)
        if own is None:
            return {n: state[n] for n in self.param_names}, False
        return own, True

    def eval_sets(self):
        """Every user's test and training index sets, padded [U, T] / [U, N], moved to the device once per run."""
        if self._eval_sets is None:
            dev = self.fed.device
            test_idx, test_w = padded(self.fed.client_test_parts)
            train_idx, train_w = padded(self.user_parts)
            self._eval_sets = tuple(t.to(dev) for t in (test_idx, test_w, train_idx, train_w))
        return self._eval_sets

    def adaptation_plan(self, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each user's A adaptation batches, [U, A, B] indices and weights, drawn on the CPU, moved in one copy."""
        cfg, A = self.cfg, max(1, self.knob("adapt_extra_steps"))
        idx, weight = [], []
        for c, part in enumerate(self.user_parts):
            pos, w = client_batches(len(part), cfg.batch_size, 1, A, eval_generator(self.fed.seed, round_, c))
            if len(pos) == 0:   # a user without training data does not adapt (its batches are all padding)
                pos = torch.zeros(A, cfg.batch_size, dtype=torch.long, device="cpu")
                w = torch.zeros(A, cfg.batch_size, device="cpu")
                idx.append(pos)
            else:
                idx.append(part[pos])
            weight.append(w)
        return torch.stack(idx).to(self.fed.device), torch.stack(weight).to(self.fed.device)

    def user_metrics(self, params: dict, a_x, a_y, a_w, t_x, t_y, t_w, n_x, n_y, n_w) -> torch.Tensor:
        """One user's [acc_0, loss_0, acc_1, loss_1, acc_A, loss_A, F_i]: a_* its A adaptation batches [A, B, ..],
        t_* its test split [T, ..], n_* its training split [N, ..] (padding weighted 0)."""
        alpha, extra = self.knob("inner_lr"), self.knob("adapt_extra_steps")

        def tested(p):
            logits = local.forward(self.model, p, self.fixed_buffers, t_x)
            acc = ((logits.argmax(-1) == t_y).float() * t_w).sum() / t_w.sum().clamp_min(1.0)
            return [acc, weighted_cross_entropy(logits, t_y, t_w)]

        out = tested(params)
        p = params
        for s in range(max(1, extra)):
            p = axpy(-alpha, grad(self.loss_fn)(p, a_x[s], a_y[s], a_w[s]), p)
            if s == 0:
                out += tested(p)
        out += tested(p) if extra else [out[2], out[3]]
        # F_i(w) = f_i(w - alpha grad f_i(w)) on the user's whole training split
        adapted = axpy(-alpha, grad(self.loss_fn)(params, n_x, n_y, n_w), params)
        out.append(self.loss_fn(adapted, n_x, n_y, n_w))
        return torch.stack(out)

    def test_metrics(self, params: dict, batched: bool) -> torch.Tensor:
        """[accuracy, loss] on the official test split (`fed.test`), of the global model or, batched, the mean over
        the users' models."""
        test, bs = self.fed.test, self.cfg.eval_batch_size
        forward = partial(local.forward, self.model)
        correct = loss = None
        for i in range(0, len(test), bs):
            x, y = test.normalize(test.x[i:i + bs]), test.y[i:i + bs]
            if batched:
                logits = vmap(forward, in_dims=(0, None, None))(params, self.fixed_buffers, x)      # [U, b, C]
                c = (logits.argmax(-1) == y).float().sum(-1).mean()
                l_ = vmap(lambda z: F.cross_entropy(z, y, reduction="sum"))(logits).mean()
            else:
                logits = forward(params, self.fixed_buffers, x)
                c, l_ = (logits.argmax(-1) == y).float().sum(), F.cross_entropy(logits, y, reduction="sum")
            correct, loss = (c, l_) if correct is None else (correct + c, loss + l_)
        return torch.stack([correct, loss]) / len(test)

    def user_rows(self, params: dict, batched: bool, round_: int) -> torch.Tensor:
        """[U, 7] per user (see `user_metrics`), on the device; `params` from `eval_starts`."""
        test_idx, test_w, train_idx, train_w = self.eval_sets()
        a_idx, a_w = self.adaptation_plan(round_)
        data = self.fed.train
        per_user = vmap(self.user_metrics, in_dims=(0 if batched else None,) + (0,) * 9)

        rows = []
        for lo in range(0, len(self.user_parts), EVAL_USER_CHUNK):
            u = slice(lo, lo + EVAL_USER_CHUNK)
            p = {n: v[u] for n, v in params.items()} if batched else params
            rows.append(per_user(p, gather(data, a_idx[u]), data.y[a_idx[u]], a_w[u], gather(data, test_idx[u]),
                                 data.y[test_idx[u]], test_w[u], gather(data, train_idx[u]), data.y[train_idx[u]],
                                 train_w[u]))
        return torch.cat(rows)

    def evaluate(self, state, round_):
        params, batched = self.eval_starts(state)
        params = {n: v.detach() for n, v in params.items()}
        rows = [self.test_metrics(params, batched)]
        personal = self.fed.client_test_parts is not None
        if personal:
            rows.append(self.user_rows(params, batched, round_).flatten())
        values = torch.cat(rows).tolist()   # the evaluation's one read from the device
        out = {"test_acc": values[0], "test_loss": values[1], "grad_evals": self.grad_evals}
        if personal:
            users = np.asarray(values[2:], dtype=float).reshape(len(self.user_parts), 7)
            users = users[[len(p) > 0 for p in self.fed.client_test_parts]]   # users with a test split
            A = self.knob("adapt_extra_steps")
            names = ["pers_acc_0", "pers_loss_0", "pers_acc_1", "pers_loss_1", f"pers_acc_{A}", f"pers_loss_{A}",
                     "meta_objective"]
            for j, name in enumerate(names):
                if A == 0 and j in (4, 5):
                    continue
                out[name] = float(users[:, j].mean())
            out["personal_acc"] = out["pers_acc_1"]
        return out


def personalised(method_cls: type[Method]) -> type[Method]:
    """`method_cls` with the personalised evaluation and gradient counting (same name, same training)."""
    if issubclass(method_cls, Personalised):
        return method_cls
    cls = type(f"Personalised{method_cls.__name__}", (Personalised, method_cls), {})
    cls.name = method_cls.name
    return cls


# ---------------------------------------------------------------------------------------------- Per-FedAvg
class PerFedAvg(Personalised):
    """The Per-FedAvg client update (Algorithm 1), for the three estimates of grad F_i; `direction` is the
    per-user estimate (first-order here; HF and exact MAML override it), `client_update` runs it for tau steps over
    the K sampled users (vmap or one by one)."""

    config_cls = PerFedAvgConfig

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        if self.has_bn:
            raise ConfigError(f"{self.name}: models with BatchNorm are not supported (the paper's model is an "
                              "MLP); choose a model without BatchNorm")

    def direction(self, params: dict, d: tuple, d1: tuple, d2: tuple) -> tuple[dict, torch.Tensor]:
        """One user's estimate of grad F_i and its meta-loss f(w_hat; D'): the first-order one."""
        return first_order_direction(self.loss_fn, params, d, d1, self.knob("inner_lr"))

    def client_update(self, state, clients, round_):
        cfg, data = self.cfg, self.fed.train
        beta = cfg.lr * cfg.lr_decay ** (round_ - 1)
        plan = maml_plan(self, clients, round_)
        tau = plan.steps // 3
        params = stack_states([{n: state[n] for n in self.param_names}] * len(clients))   # [K, ...]
        losses = []                                                                          # tau x [K]
        if cfg.vectorize:
            step = vmap(self.direction)
            for s in range(tau):
                d, loss = step(params, *step_batches(data, plan, s))
                params = axpy(-beta, d, params)
                losses.append(loss)
        else:
            per_user = []
            for k in range(len(clients)):
                p = {n: v[k] for n, v in params.items()}
                mine = []
                for s in range(tau):
                    d, loss = self.direction(p, *step_batches(data, plan, s, k))
                    p = axpy(-beta, d, p)
                    mine.append(loss)
                per_user.append((p, torch.stack(mine)))
            params = stack_states([p for p, _ in per_user])
            losses = list(torch.stack([l_ for _, l_ in per_user], 1))
        losses = torch.stack(losses, 1).detach()                                         # [K, tau]
        params = {n: v.detach() for n, v in params.items()}
        self.check_divergence(losses, params, clients, round_)
        self.count_gradients(clients, steps=tau)
        buffers = {n: torch.stack([state[n]] * len(clients)) for n in self.buffer_names}
        return ClientUpdate(clients, params, buffers, self.client_sizes(clients), losses.mean(1))

    def check_divergence(self, losses: torch.Tensor, params: dict, clients: list[int], round_: int) -> None:
        """One read per round: all finite, or a DivergenceError naming the round, the first failing user, the
        local step and the last finite meta-loss before it (the NaN failure the unofficial versions report)."""
        sums = torch.stack([v.flatten(1).sum(1) for v in params.values()], 1).sum(1)     # [K]
        if bool(torch.isfinite(losses).all() & torch.isfinite(sums).all()):
            return
        rows, sums = losses.tolist(), sums.tolist()
        for k, c in enumerate(clients):
            bad = [s for s, v in enumerate(rows[k]) if not np.isfinite(v)]
            if not bad and np.isfinite(sums[k]):
                continue
            if bad:
                s = bad[0]
                last = f"{rows[k][s - 1]:.4g} at step {s}" if s else "none (the first step)"
                what = (f"the meta-loss f(w - alpha grad f(w; D); D') is {rows[k][s]} at local step {s + 1} of "
                        f"{len(rows[k])}")
            else:
                last = f"{rows[k][-1]:.4g} at step {len(rows[k])}"
                what = "its model has non-finite parameters after the last local step"
            raise DivergenceError(
                f"{self.name} diverged at round {round_}, client {c}: {what} (last finite meta-loss: {last}). "
                f"Lower the outer step lr (beta = {self.cfg.lr}) or the inner step inner_lr "
                f"(alpha = {self.knob('inner_lr')}).")


@register_method("perfedavg_fo")
class PerFedAvgFO(PerFedAvg):
    """Per-FedAvg (FO): w <- w - beta grad f(w - alpha grad f(w; D); D') (the base class's estimate)."""


@register_method("perfedavg_hf")
class PerFedAvgHF(PerFedAvg):
    """Per-FedAvg (HF): w <- w - beta (g - alpha h), h the finite-difference Hessian-vector product on D''."""

    def direction(self, params, d, d1, d2):
        alpha, delta = self.knob("inner_lr"), self.knob("hf_delta")
        return hessian_free_direction(self.loss_fn, params, d, d1, d2, alpha, delta)


@register_method("perfedavg_maml")
class PerFedAvgMAML(PerFedAvg):
    """Per-FedAvg with the exact Hessian-vector product (the reference the FO and HF estimates approximate)."""

    def direction(self, params, d, d1, d2):
        return maml_direction(self.loss_fn, params, d, d1, d2, self.knob("inner_lr"),
                              self.knob("maml_hessian_batch"))


def train(cfg, seed: int, record, device: torch.device | str = "cpu") -> None:
    """One run: the engine's round loop with the configured method under the personalised evaluation, then the
    final values as summary scalars (the last evaluation is on the whole official test split)."""
    run_federated(cfg, seed, record, personalised(get_method(cfg.method)), device=device)
    last = record.history[-1]
    for key, value in last.items():
        if key.startswith("pers_") or key == "meta_objective":
            record.summary[f"final_{key}"] = value
    if "pers_acc_1" in last:
        record.summary["final_adapt_gain"] = last["pers_acc_1"] - last["pers_acc_0"]
    record.summary["total_grad_evals"] = last["grad_evals"]
