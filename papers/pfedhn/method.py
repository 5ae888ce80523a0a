"""pFedHN and pFedHN-PC (Shamsian et al. 2021) on the shared FL engine, with the baselines under the paper's
personalised evaluation.

Shapes: N clients, K clients of a step (1, as the code), d the embedding size, L a client's split (padded).

A step of pFedHN (Algorithm 1; `experiments/pfedhn/trainer.py::train`) is an engine round with one client:

    theta_i   = h(v_i; phi)                                   `start_state`: generated, the graph kept
    theta~_i  = theta_i after `local_steps` SGD steps         the engine's local training (momentum, weight decay,
                                                              gradient-norm clip 50), as the code's inner loop
    Delta     = theta_i - theta~_i                            the code's `inner_state[k] - final_state[k]`
    (phi, v) <- SGD step along (d theta_i / d(phi, v))^T Delta     `server_update`: a vector-Jacobian product,
                                                              clipped to norm 50; momentum 0.9, weight decay 1e-3

Delta is the cotangent with this sign: descending along it moves h(v_i; phi) towards theta~_i (the gradient of
0.5 ||h(v_i; phi) - theta~_i||^2). The hypernetwork (`CNNHyper`) is an embedding table, an MLP d -> 100 -> (ReLU,
100 -> 100) x 3, and one linear head per tensor of the target network. pFedHN-PC (`experiments/pfedhn_pc/`)
generates every tensor but the classifier; each client trains a private linear head jointly in the inner loop,
never sent and never averaged. FedPer (Arivazhagan et al. 2019) is FedAvg with the same private heads.

Evaluation (`eval_model` / `evaluate`): every client's own model (the generated weights; the global model; the
client's own) on its validation and test splits, accuracy pooled over clients (sample-weighted), loss averaged
over clients; the reported number is the test accuracy at the evaluation with the best pooled validation
accuracy (`best_test_acc_based_on_val_beststep`), and we report the final one beside it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.experiments import ConfigError
from common.fl import local
from common.fl.aggregation import stack_states, state_bytes, weighted_average
from common.fl.engine import ClientUpdate, Method, register_method, run_federated
from common.fl.local import client_batches, client_generator
from common.fl.methods import LocalOnly
from common.fl.personal import gather, per_client_counts
from common.models import LeNet, register_model
from common.partition import class_counts
from common.train import DivergenceError
from papers.pfedhn.config import PFedHNConfig
from papers.pfedhn.partition import SplitFederation

HEAD = "classifier."   # the target network's last layer: the private head of pFedHN-PC and FedPer


@register_model("pfedhn_cnn")
def pfedhn_cnn(in_shape, num_classes):
    """`CNNTarget(n_kernels=16)`: conv5(16) pool conv5(32) pool FC 120, 84, C (ReLU), no BatchNorm."""
    return LeNet(in_shape[0], in_shape[1], num_classes, kernels=(16, 32))


class HyperNetwork(nn.Module):
    """`CNNHyper`: v_i = embeddings[i]; features = MLP(v_i); every target tensor = its own Linear(features),
    reshaped. `shapes` maps the target's parameter names to their shapes."""

    def __init__(self, n_clients: int, embed_dim: int, shapes: dict[str, torch.Size], hidden: int = 100,
                 n_hidden: int = 3):
        super().__init__()
        self.shapes = dict(shapes)
        self.embeddings = nn.Embedding(n_clients, embed_dim)
        layers = [nn.Linear(embed_dim, hidden)]
        for _ in range(n_hidden):
            layers += [nn.ReLU(), nn.Linear(hidden, hidden)]
        self.mlp = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({n.replace(".", "_"): nn.Linear(hidden, s.numel()) for n, s in shapes.items()})

    def generate(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Target weights from embeddings v [K, d]: {name: [K, *shape]}."""
        features = self.mlp(v)                                                            # [K, hidden]
        return {n: self.heads[n.replace(".", "_")](features).view(len(v), *s) for n, s in self.shapes.items()}

    def forward(self, clients: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.generate(self.embeddings(clients))


# ---------------------------------------------------------------------------------------------- the server
class Personal(Method):
    """A method whose clients may keep part of the model (`private`: a parameter-name prefix): only the rest
    travels, and message_bytes counts only that."""

    private: str | None = None

    @property
    def shared_names(self) -> list[str]:
        return [n for n in self.param_names if not (self.private and n.startswith(self.private))]

    def message_bytes(self, state):
        size = state_bytes({n: state[n] for n in self.shared_names})
        return size, size


class HypernetworkServer(Personal):
    """pFedHN's server on any federation (see the module docstring): the hypernetwork over the shared tensors,
    `start_state` sends theta_i = h(v_i; phi), `server_update` steps phi and v_i along the vector-Jacobian product.
    Knobs come from the run's config, or PFedHNConfig's defaults when the config has none (the comparison runs
    it in Per-FedAvg's setting)."""

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        n = len(fed.parts)
        embed = self.hn_knob("embed_dim")
        shapes = {name: p.shape for name, p in model.named_parameters() if name in self.shared_names}
        self.hnet = HyperNetwork(n, int(1 + n / 4) if embed == -1 else embed, shapes, self.hn_knob("hn_hidden"),
                                 self.hn_knob("hn_layers")).to(fed.device)
        table = [p for name, p in self.hnet.named_parameters() if name.startswith("embeddings")]
        rest = [p for name, p in self.hnet.named_parameters() if not name.startswith("embeddings")]
        lr = self.hn_knob("hn_lr")
        self.optimizer = torch.optim.SGD([{"params": rest}, {"params": table, "lr": self.hn_knob("embed_lr") or lr}],
                                         lr=lr, momentum=self.hn_knob("hn_momentum"),
                                         weight_decay=self.hn_knob("hn_weight_decay"))
        self.generated: dict = {}

    def hn_knob(self, name: str):
        return getattr(self.cfg, name, getattr(PFedHNConfig, name))

    def start_state(self, state, clients):
        """theta_i = h(v_i; phi) for the step's clients, the graph kept for `server_update`; sent detached."""
        self.generated = self.hnet(torch.tensor(clients, device=self.fed.device))
        start = stack_states([state] * len(clients))
        start.update({n: v.detach() for n, v in self.generated.items()})
        return start

    def aggregate(self, state, update):
        """No model is averaged: the server's step is the hypernetwork's (`server_update`)."""
        return state

    def server_update(self, state, averaged, update, round_):
        """phi, v <- SGD along (d theta / d(phi, v))^T (theta - theta~), averaged over the step's clients, the
        gradient clipped to norm `hn_clip` (`trainer.py`: autograd.grad with grad_outputs=delta_theta)."""
        names = list(self.generated)
        delta = [(self.generated[n].detach() - update.params[n]) / len(update.clients) for n in names]
        params = list(self.hnet.parameters())
        grads = torch.autograd.grad([self.generated[n] for n in names], params, grad_outputs=delta,
                                    allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        if self.hn_knob("hn_clip"):
            nn.utils.clip_grad_norm_(params, self.hn_knob("hn_clip"))
        self.optimizer.step()
        self.generated = {}
        return state

    def personal_models(self, state):
        """Every client's generated network, {name: [N, ...]} (the rest of the state, if any, shared)."""
        generated = self.hnet(torch.arange(len(self.fed.parts), device=self.fed.device))
        n = len(self.fed.parts)
        return {name: generated[name] if name in generated else state[name].expand(n, *state[name].shape)
                for name in self.param_names}


@register_method("pfedhn")
class PFedHNAnyFederation(HypernetworkServer):
    """pFedHN for the comparison: on the engine's federation, evaluated as Local-only is (the clients' generated
    models averaged on the test split; pooled on their own test splits when they have them)."""

    def evaluate(self, state, round_):
        with torch.no_grad():
            models = self.personal_models(state)
            test, n = self.fed.test, len(self.fed.parts)
            everyone = [torch.arange(len(test), device=test.device)] * n
            counts = per_client_counts(self.model, models, {}, test, everyone, self.cfg.eval_batch_size)
            out = {"test_acc": (counts[:, 0] / counts[:, 2]).mean().item(), "test_loss": float("nan")}
            if self.fed.client_test_parts is not None:
                own = [p.to(test.device) for p in self.fed.client_test_parts]
                mine = per_client_counts(self.model, models, {}, self.fed.train, own, self.cfg.eval_batch_size)
                out["personal_acc"] = (mine[:, 0].sum() / mine[:, 2].sum().clamp_min(1)).item()
        return out


# ---------------------------------------------------------------------------------------------- evaluation
class PooledPersonalised(Personal):
    """The code's evaluation for any method: every client's model (`personal_models`, else the global model) is
    tested on its own validation and test splits (`SplitFederation`), read from the device once.

    Logged per evaluation: test_acc / val_acc (pooled over the trained clients: sum correct / sum samples),
    test_loss / val_loss (the mean over clients of each client's mean loss), client_acc_min / _max / _std (the
    clients' test accuracies), best_val_test_acc (the test accuracy at the evaluation with the best val_acc so
    far), visits (client visits so far) and, for FedAvg, global_test_acc on the whole official test split."""

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        self.n_trained = cfg.n_clients   # the engine's config holds the trained clients only
        self.best = (-1.0, float("nan"))            # (best pooled val accuracy, test accuracy there)
        self._sets = ()

    def client_models(self, state: dict) -> dict:
        """Every client's model, {name: [N, ...]}: its own, or the global model for all."""
        own = self.personal_models(state)
        return own if own is not None else self.global_for_all(state)

    def global_for_all(self, state: dict) -> dict:
        """The global model as every client's, {name: [N, ...]} (expanded views, no copies)."""
        n = len(self.fed.parts)
        return {k: state[k].expand(n, *state[k].shape) for k in self.param_names}

    def eval_sets(self) -> tuple[list, list]:
        """Every client's validation and test index sets, moved to the device once."""
        if not self._sets:
            self._sets = tuple([p.to(self.fed.device) for p in parts]
                               for parts in (self.fed.client_val, self.fed.client_test))
        return self._sets

    def split_counts(self, params: dict, clients: slice) -> torch.Tensor:
        """[2, U, 3] (correct, loss sum, samples) on the validation and test splits of `clients`."""
        val, test = self.eval_sets()
        params = {n: v[clients].detach() for n, v in params.items()}
        buffers = {n: b for n, b in self.model.named_buffers()}
        bs = self.cfg.eval_batch_size
        return torch.stack([per_client_counts(self.model, params, buffers, self.fed.server_val, val[clients], bs),
                            per_client_counts(self.model, params, buffers, self.fed.full_test, test[clients], bs)])

    def evaluate(self, state, round_):
        with torch.no_grad():
            counts = self.split_counts(self.client_models(state), slice(0, self.n_trained))
            extra = self.global_counts(state)
        counts, extra = counts.cpu().numpy(), extra.tolist()          # the evaluation's reads from the device
        out = {"visits": round_ * self.cfg.clients_per_round}
        out.update(pooled(counts[0], "val") | pooled(counts[1], "test"))
        accs = counts[1, :, 0] / np.maximum(counts[1, :, 2], 1)
        out.update(client_acc_min=float(accs.min()), client_acc_max=float(accs.max()),
                   client_acc_std=float(accs.std()))
        if out["val_acc"] > self.best[0]:
            self.best = (out["val_acc"], out["test_acc"])
        out["best_val_test_acc"] = self.best[1]
        if extra:
            out["global_test_acc"] = extra[0]
        return out

    def global_counts(self, state: dict) -> torch.Tensor:
        """[accuracy] of the global model on the whole official test split (FedAvg), else empty."""
        if self.name != "fedavg":
            return torch.zeros(0)
        test = self.fed.full_test
        logits = torch.cat([local.forward(self.model, {n: state[n] for n in self.param_names}, {},
                                          test.normalize(test.x[i:i + self.cfg.eval_batch_size]))
                            for i in range(0, len(test), self.cfg.eval_batch_size)])
        return (logits.argmax(1) == test.y).float().mean().view(1)


def pooled(counts: np.ndarray, split: str) -> dict:
    """counts [U, 3] (correct, loss sum, samples) -> {split_acc: pooled accuracy, split_loss: mean client loss}."""
    n = np.maximum(counts[:, 2], 1)
    return {f"{split}_acc": float(counts[:, 0].sum() / n.sum()), f"{split}_loss": float((counts[:, 1] / n).mean())}


class FedAvg(PooledPersonalised):
    """FedAvg, its global model tested on each client's own splits."""

    name = "fedavg"


class Local(PooledPersonalised, LocalOnly):
    """Each client trains its own model only (LocalOnly), tested on its own splits."""

    name = "local"

    def message_bytes(self, state):
        return 0, 0


class PrivateHead(PooledPersonalised):
    """Clients keep the target network's last layer (`HEAD`): each starts its own from a fresh default
    initialisation (`LocalLayer`, one per node), trains it with the rest in the inner loop, and keeps it; it is
    never sent or averaged."""

    private = HEAD

    def __init__(self, cfg, fed, model):
        super().__init__(cfg, fed, model)
        self.head_names = [n for n in self.param_names if n.startswith(HEAD)]
        heads = []
        for _ in fed.parts:                               # nn.Linear's default initialisation, one per client
            head = nn.Linear(model.classifier.in_features, model.classifier.out_features)
            heads.append({f"{HEAD}{n}": p.detach() for n, p in head.named_parameters()})
        self.heads = {n: v.to(fed.device) for n, v in stack_states(heads).items()}

    def with_heads(self, body: dict, clients: list[int] | slice) -> dict:
        return {**body, **{n: self.heads[n][clients] for n in self.head_names}}

    def keep_heads(self, update: ClientUpdate) -> None:
        index = torch.tensor(update.clients, device=self.fed.device)
        for n in self.head_names:
            self.heads[n][index] = update.params[n]

    def personal_models(self, state):
        return self.with_heads(super().personal_models(state) or self.global_for_all(state), slice(None))


class FedPer(PrivateHead):
    """FedPer: FedAvg of the base layers, a private head per client."""

    name = "fedper"

    def start_state(self, state, clients):
        return self.with_heads(super().start_state(state, clients), clients)

    def aggregate(self, state, update):
        self.keep_heads(update)
        weights = self.aggregation_weights(update)
        body = {n: update.params[n] for n in self.shared_names}
        return {**state, **weighted_average(body, weights)}


# ---------------------------------------------------------------------------------------------- pFedHN
class PFedHN(HypernetworkServer, PooledPersonalised):
    """pFedHN: the server's hypernetwork generates each client's whole network, under the code's evaluation."""

    name = "pfedhn"


class PFedHNPC(PrivateHead, PFedHN):
    """pFedHN-PC: the hypernetwork generates the feature extractor; each client trains a private head."""

    name = "pfedhn_pc"

    def start_state(self, state, clients):
        return self.with_heads(super().start_state(state, clients), clients)

    def aggregate(self, state, update):
        self.keep_heads(update)
        return state


# the paper's methods and baselines, all under the pooled evaluation and `SplitFederation`: kept out of the engine's
# registry (whose `fedavg` and `local` run on any federation with the global evaluation)
METHODS = {cls.name: cls for cls in (PFedHN, PFedHNPC, FedAvg, Local, FedPer)}


# ---------------------------------------------------------------------------------------------- novel clients
def tune_novel_clients(method: PFedHN) -> dict:
    """Generalisation to novel clients (the paper's section 5.3): phi frozen, each held-out client learns only
    its embedding v (and, for pFedHN-PC, its private head), from the row the table holds after training, by SGD
    (momentum 0.9, lr `novel_lr`) on the cross-entropy of h(v; phi) on its training batches, `novel_steps` steps
    of `batch_size`. Returns the novel clients' pooled test and validation accuracy before and after."""
    cfg, fed = method.cfg, method.fed
    novel = slice(method.n_trained, len(fed.parts))
    before = evaluate_clients(method, novel)
    for p in method.hnet.parameters():
        p.requires_grad_(False)
    for c in range(novel.start, novel.stop):
        v = method.hnet.embeddings.weight[c].detach().clone().requires_grad_(True)
        head = {n: method.heads[n][c].clone().requires_grad_(True) for n in getattr(method, "head_names", [])}
        opt = torch.optim.SGD([v, *head.values()], lr=cfg.novel_lr, momentum=0.9)
        pos, _ = client_batches(len(fed.parts[c]), cfg.batch_size, 1, cfg.novel_steps,
                                client_generator(fed.seed, cfg.rounds + 1, c))
        idx = fed.parts[c][pos].to(fed.device)                                             # [S, B]
        for s in range(cfg.novel_steps):
            params = {n: w[0] for n, w in method.hnet.generate(v[None]).items()} | head
            loss = F.cross_entropy(local.forward(method.model, params, {}, gather(fed.train, idx[s])),
                                   fed.train.y[idx[s]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            method.hnet.embeddings.weight[c] = v.detach()
            for n, w in head.items():
                method.heads[n][c] = w.detach()
    after = evaluate_clients(method, novel)
    return {"novel_test_acc_before": before["test_acc"], "novel_val_acc_before": before["val_acc"],
            "novel_test_acc": after["test_acc"], "novel_val_acc": after["val_acc"]}


def evaluate_clients(method: PooledPersonalised, clients: slice) -> dict:
    """Pooled validation and test accuracy and loss of `clients` with their current models."""
    with torch.no_grad():
        counts = method.split_counts(method.client_models({}), clients).cpu().numpy()
    return pooled(counts[0], "val") | pooled(counts[1], "test")


# ---------------------------------------------------------------------------------------------- a run
def train(cfg, seed: int, record, device: torch.device | str = "cpu") -> None:
    """One run: the split, the engine's loop over steps (one client each for the hypernetworks; the novel
    clients, if any, never sampled), then the novel clients' embeddings; summary values as the code reports."""
    fed = SplitFederation.build(cfg, seed, device)
    try:
        method = run_federated(cfg.engine_config(), seed, record, METHODS[cfg.method], fed=fed)
    except DivergenceError as exc:
        raise DivergenceError(f"{cfg.method}: {exc}") from None
    history = record.history
    best = max(range(len(history)), key=lambda i: (history[i]["val_acc"], -i))
    record.summary.update(best_val_test_acc=history[best]["test_acc"], best_val_acc=history[best]["val_acc"],
                          best_visits=history[best]["visits"], final_val_acc=history[-1]["val_acc"],
                          final_client_acc_min=history[-1]["client_acc_min"],
                          final_client_acc_max=history[-1]["client_acc_max"],
                          final_client_acc_std=history[-1]["client_acc_std"],
                          train_samples=sum(len(p) for p in fed.parts),
                          unused_train_samples=len(fed.train) - sum(len(p) for p in fed.parts))
    if "global_test_acc" in history[-1]:
        record.summary["final_global_test_acc"] = history[-1]["global_test_acc"]
    record.summary["label_mix_match"] = 1.0 - max_label_shift(fed)
    if cfg.novel_clients:
        if not isinstance(method, PFedHN):
            raise ConfigError(f"novel_clients is for the hypernetworks (pfedhn, pfedhn_pc), not {cfg.method}")
        novel = tune_novel_clients(method)
        trained = evaluate_clients(method, slice(0, method.n_trained))["test_acc"]
        record.summary.update(novel, trained_test_acc=trained,
                              novel_minus_trained=novel["novel_test_acc"] - trained,
                              novel_tuning_gain=novel["novel_test_acc"] - novel["novel_test_acc_before"])


def max_label_shift(fed: SplitFederation) -> float:
    """The largest total-variation distance between a client's training and test label distributions."""
    C = fed.train.num_classes
    train = class_counts(fed.parts, fed.train.y.cpu().numpy(), C)
    test = class_counts(fed.client_test, fed.full_test.y.cpu().numpy(), C)
    p = train / np.maximum(train.sum(1, keepdims=True), 1)
    q = test / np.maximum(test.sum(1, keepdims=True), 1)
    return float(0.5 * np.abs(p - q).sum(1).max())
