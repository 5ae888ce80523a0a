"""The baselines every FL paper's table uses: FedProx, FedAvgM, local-only and centralised training
(FedAvg itself is `engine.Method`)."""
from __future__ import annotations

import dataclasses

import torch

from common.fl.aggregation import stack_states
from common.fl.engine import ClientUpdate, Method, register_method

register_method("fedavg")(Method)


@register_method("fedprox")
class FedProx(Method):
    """FedProx (Li et al. 2020): local loss + mu/2 ||w - w_global||^2, so grad += mu (w - w_global)."""

    def round_context(self, state, clients, round_):
        return {"global": {n: state[n] for n in self.param_names}}, {}

    def local_penalty(self, params, x, y, w, logits, shared, mine):
        g = shared["global"]
        return 0.5 * self.cfg.prox_mu * sum(((params[n] - g[n]) ** 2).sum() for n in params)


@register_method("fedavgm")
class FedAvgM(Method):
    """FedAvgM (Hsu et al. 2019), as FedDF's `server_momentum.py`: m <- beta m + (w_prev - w_avg),
    w <- w_prev - server_lr * m; BatchNorm buffers are taken from the plain average."""

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        self.velocity = None

    def server_update(self, state, averaged, update, round_):
        if self.velocity is None:
            self.velocity = {n: torch.zeros_like(state[n]) for n in self.param_names}
        new = dict(averaged)
        for n in self.param_names:
            self.velocity[n] = self.cfg.server_momentum * self.velocity[n] + (state[n] - averaged[n])
            new[n] = state[n] - self.cfg.server_lr * self.velocity[n]
        return new


@register_method("local")
class LocalOnly(Method):
    """Local training only: each client keeps and trains its own model and never aggregates. Evaluated on
    each client's own test split (personalised) and, averaged over clients, on the global test set."""

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        self.client_states: dict[int, dict] = {}

    def start_state(self, state, clients):
        return stack_states([self.client_states.get(c, state) for c in clients])

    def aggregate(self, state, update: ClientUpdate):
        for k, c in enumerate(update.clients):
            self.client_states[c] = {**{n: update.params[n][k] for n in self.param_names},
                                     **{n: update.buffers[n][k] for n in self.buffer_names}}
        return state

    def message_bytes(self, state):
        return 0, 0

    def personal_models(self, state):
        """Each client's own parameters, stacked (a never-sampled client: the initial model)."""
        return stack_states([{n: self.client_states.get(c, state)[n] for n in self.param_names}
                             for c in range(len(self.fed.parts))])

    def evaluate(self, state, round_):
        models = {c: self.model_with(s) for c, s in self.client_states.items()}
        initial = self.model_with(state)
        accs = [super(LocalOnly, self).evaluate(s, round_)["test_acc"] for s in self.client_states.values()]
        out = {"test_acc": float(sum(accs) / len(accs)), "test_loss": float("nan")}
        if self.fed.client_test_parts is not None:
            out["personal_acc"] = self.personalised_accuracy(lambda c: models.get(c, initial))
        return out


@register_method("central")
class Centralised(Method):
    """The upper bound: one client holding all the training data (the union of the partition), trained
    with the same local optimiser. A round is `local_epochs` epochs over all the data or, with
    `local_steps`, as many steps as all the sampled clients of a federated round take together."""

    def __init__(self, cfg, fed, model):
        if cfg.local_steps:
            cfg = dataclasses.replace(cfg, local_steps=cfg.local_steps * cfg.clients_per_round)
        super().__init__(cfg, fed, model)
        fed.parts = [torch.cat(fed.parts).sort().values] + [fed.parts[0][:0]] * (len(fed.parts) - 1)

    def client_update(self, state, clients, round_):
        return super().client_update(state, [0], round_)

    def message_bytes(self, state):
        return 0, 0
