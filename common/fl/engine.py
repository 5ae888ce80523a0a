"""The federated round loop and the `Method` base class (which is FedAvg).

    for round r:  sample C*N clients (seeded by run seed and r: identical across methods)
                  -> client_update (local SGD on `loss`)  -> aggregate  -> server_update  -> evaluate -> log

A method subclasses `Method` and overrides only what its paper changes:
- `local_penalty(...)`: a term added to the clients' cross-entropy (FedProx, FedNTD, FedGen's regulariser);
  `round_context(...)` supplies what it needs (the global model, per-client tensors).
- `client_update(...)`: for methods that are not plain local SGD.
- `aggregate(...)` / `server_update(...)`: how the server combines the returned models (FedAvgM, FedDF).
- `evaluate(...)`: what is measured (global test accuracy; personalised accuracy on clients' own splits).
Methods are found by name through `@register_method`.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common import data as datasets
from common.experiments import ConfigError
from common.fl import local
from common.fl.aggregation import state_bytes, stack_states, weighted_average
from common.models import build_model
from common.partition import partition, split_clients
from common.results import RunRecord, seed_everything
from common.train import predict_logits

METHODS: dict[str, type["Method"]] = {}


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return wrap


def get_method(name: str) -> type["Method"]:
    if name not in METHODS:
        raise ConfigError(f"unknown FL method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]


@dataclass
class Federation:
    """The simulated world: data in memory, client index sets, the server's held-out split, the model."""

    cfg: object
    seed: int
    train: datasets.Dataset
    test: datasets.Dataset                            # what `evaluate` reads: the curve subset, then the full set
    parts: list[torch.Tensor]                         # client training indices into `train`
    client_test_parts: list[torch.Tensor] | None      # client test indices into `train` (personalised)
    server_val: datasets.Dataset | None               # labelled split held out before partitioning
    full_test: datasets.Dataset | None = None         # the whole official test split (final round)

    @classmethod
    def build(cls, cfg, seed: int, device: torch.device | str = "cpu") -> "Federation":
        """Load, split and partition on the CPU (seeded draws), then move the data to `device` once; the
        client index sets stay on the CPU, where each round's batch plan is drawn."""
        gen = torch.Generator().manual_seed(seed)
        train, full_test = datasets.load(cfg.dataset, "train"), datasets.load(cfg.dataset, "test")
        if cfg.train_subset:
            train = train.subset(torch.randperm(len(train), generator=gen)[:cfg.train_subset])
        test = full_test
        if cfg.test_subset:  # the per-round curves only: the final round is evaluated on the whole split
            test = full_test.subset(torch.randperm(len(full_test), generator=gen)[:cfg.test_subset])
        server_val = None
        val_fraction = getattr(cfg, "server_val_fraction", 0.0)
        if val_fraction:
            perm = torch.randperm(len(train), generator=gen)
            n_val = int(len(train) * val_fraction)
            server_val, train = train.subset(perm[:n_val]), train.subset(perm[n_val:].sort().values)
        params = {"dirichlet": {"alpha": cfg.alpha, "min_size": cfg.min_client_size, "cap": cfg.dirichlet_cap},
                  "shards": {"shards_per_client": cfg.shards_per_client}}.get(cfg.partition, {})
        params.update(getattr(cfg, "partition_params", lambda: {})())
        tag = f"{cfg.dataset}_n{len(train)}"
        parts = partition(cfg.partition, train.y.numpy(), cfg.n_clients, seed, dataset=tag, **params)
        client_test = None
        if cfg.client_test_fraction:
            parts, client_test = split_clients(parts, train.y.numpy(), cfg.client_test_fraction, seed)
        train, test, full_test, server_val = (d.to(device) if d is not None else None
                                              for d in (train, test, full_test, server_val))
        return cls(cfg, seed, train, test, parts, client_test, server_val, full_test)

    @property
    def device(self) -> torch.device:
        return self.train.device

    def use_full_test(self) -> None:
        """From now on `evaluate` reads the whole official test split (the final round's metrics)."""
        if self.full_test is not None:
            self.test = self.full_test

    @property
    def sizes(self) -> torch.Tensor:
        return torch.tensor([len(p) for p in self.parts], dtype=torch.float32, device="cpu")


@dataclass
class ClientUpdate:
    """What the sampled clients return: their models stacked [K, ...], sizes and mean local losses."""

    clients: list[int]
    params: dict
    buffers: dict
    n_samples: torch.Tensor                           # [K] on the CPU
    loss: torch.Tensor                                # [K] on the run's device
    extras: dict = field(default_factory=dict)


class Method:
    """FedAvg (McMahan et al. 2017); every other method overrides some of its hooks."""

    name = "fedavg"
    vectorizable = True   # set False when client_update is not plain SGD on `loss`

    def __init__(self, cfg, fed: Federation, model: nn.Module):
        self.cfg, self.fed, self.model = cfg, fed, model
        self.param_names = [n for n, _ in model.named_parameters()]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        self.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    # ------------------------------------------------------------------ the clients' loss
    def loss(self, params, buffers, x, y, w, shared, mine):
        """Weighted cross-entropy plus `local_penalty`; returns (loss, cross-entropy) for grad's aux."""
        logits = local.forward(self.model, params, buffers, x)
        ce = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum().clamp_min(1.0)
        return ce + self.local_penalty(params, x, y, w, logits, shared, mine), ce

    def local_penalty(self, params, x, y, w, logits, shared, mine):
        """A term added to the local cross-entropy (FedAvg: none)."""
        return logits.new_zeros(())

    def round_context(self, state: dict, clients: list[int], round_: int) -> tuple[dict, dict]:
        """(shared, per-client) tensors the local loss needs this round; per-client ones are [K, ...]."""
        return {}, {}

    # ------------------------------------------------------------------ client side
    def start_state(self, state: dict, clients: list[int]) -> dict:
        """The models the sampled clients start from, stacked [K, ...] (FedAvg: the global model)."""
        return stack_states([state] * len(clients))

    def client_update(self, state: dict, clients: list[int], round_: int) -> ClientUpdate:
        cfg = self.cfg
        start = self.start_state(state, clients)
        params = {n: start[n] for n in self.param_names}
        buffers = {n: start[n] for n in self.buffer_names}
        plan = local.make_plan(self.fed.parts, clients, cfg, self.fed.seed, round_, self.fed.train.shape[-1])
        plan = plan.to(self.fed.device)
        shared, mine = self.round_context(state, clients, round_)
        lr = cfg.lr * cfg.lr_decay ** (round_ - 1)
        vectorized = cfg.vectorize and self.vectorizable and (not self.has_bn or plan.full_batches)  # host-side check
        train = local.train_vectorized if vectorized else local.train_sequential
        params, buffers, loss = train(self, self.model, params, buffers, self.fed.train, plan, lr, shared, mine)
        return ClientUpdate(clients, params, buffers, self.client_sizes(clients), loss)

    def client_sizes(self, clients: list[int]) -> torch.Tensor:
        """Training-set sizes of `clients`, a CPU tensor (aggregation weights are host-side metadata)."""
        return torch.tensor([len(self.fed.parts[c]) for c in clients], dtype=torch.float32, device="cpu")

    # ------------------------------------------------------------------ server side
    def aggregation_weights(self, update: ClientUpdate) -> torch.Tensor:
        if self.cfg.weighting == "uniform":
            return torch.full((len(update.clients),), 1.0 / len(update.clients), device="cpu")
        return update.n_samples / update.n_samples.sum()

    def aggregate(self, state: dict, update: ClientUpdate) -> dict:
        """Weighted average of the returned parameters (and BatchNorm buffers, if configured)."""
        weights = self.aggregation_weights(update)
        new = dict(state)
        new.update(weighted_average(update.params, weights))
        if self.cfg.aggregate_buffers:
            new.update(weighted_average(update.buffers, weights))
        return new

    def server_update(self, state: dict, averaged: dict, update: ClientUpdate, round_: int) -> dict:
        """The new global model from the old one and the average (FedAvg: the average)."""
        return averaged

    def message_bytes(self, state: dict) -> tuple[int, int]:
        """Bytes (down, up) per sampled client: the model, with BN buffers when they are averaged."""
        names = self.param_names + (self.buffer_names if self.cfg.aggregate_buffers else [])
        size = state_bytes({n: state[n] for n in names})
        return size, size

    # ------------------------------------------------------------------ evaluation
    def personal_models(self, state: dict) -> dict | None:
        """Every client's own parameters stacked [N, ...] for a method whose clients keep their own models
        (Local-only, pFedHN), else None: every client uses the global model (what a personalised evaluation
        starts from)."""
        return None

    def model_with(self, state: dict) -> nn.Module:
        model = copy.deepcopy(self.model)
        model.load_state_dict(state)
        return model

    def evaluate(self, state: dict, round_: int) -> dict:
        """Global model on the official test set; with client test splits, also the personalised accuracy."""
        model = self.model_with(state)
        logits = predict_logits(model, self.fed.test, self.cfg.eval_batch_size)
        out = {"test_acc": (logits.argmax(1) == self.fed.test.y).float().mean().item(),
               "test_loss": F.cross_entropy(logits, self.fed.test.y).item()}
        if self.fed.client_test_parts is not None:
            out["personal_acc"] = self.personalised_accuracy(lambda c: model)
        return out

    def personalised_accuracy(self, model_of) -> float:
        """Accuracy pooled over every client's own test split, client c evaluated with model_of(c)."""
        correct = total = 0
        for c, idx in enumerate(self.fed.client_test_parts):
            if len(idx) == 0:
                continue
            part = self.fed.train.subset(idx)
            correct += (predict_logits(model_of(c), part, self.cfg.eval_batch_size).argmax(1) == part.y).sum().item()
            total += len(idx)
        return correct / max(1, total)


def sample_clients(n_clients: int, per_round: int, seed: int, round_: int) -> list[int]:
    """The clients of a round: seeded by (seed, round) only, so every method sees the same ones."""
    gen = torch.Generator().manual_seed(seed * 100_003 + round_)
    return sorted(torch.randperm(n_clients, generator=gen, device="cpu")[:per_round].tolist())


def run_federated(cfg, seed: int, record: RunRecord, method_cls: type[Method] | None = None,
                  fed: Federation | None = None, device: torch.device | str = "cpu") -> Method:
    """The round loop on `device` (or on `fed`'s, when given): fills record.history (one row per evaluated
    round) and record.summary. The model is initialised on the CPU generator, then moved, so a seed starts
    from the same weights on any device."""
    seed_everything(seed)
    fed = fed or Federation.build(cfg, seed, device)
    # a config may size its model (`model_params()`, e.g. FedDG's U-Net width and depth)
    model = build_model(cfg.model, fed.train.shape, fed.train.num_classes,
                        **getattr(cfg, "model_params", dict)()).to(fed.device)
    method = (method_cls or get_method(cfg.method))(cfg, fed, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    down_total = up_total = 0
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.rounds + 1), desc=f"{method.name} seed {seed}", mininterval=5, leave=False,
               disable=not sys.stderr.isatty())  # in a log, record.log's line per round is the progress
    for r in bar:
        clients = sample_clients(cfg.n_clients, cfg.clients_per_round, seed, r)
        update = method.client_update(state, clients, r)
        averaged = method.aggregate(state, update)
        state = method.server_update(state, averaged, update, r)
        down, up = method.message_bytes(state)
        down_total += down * len(clients)
        up_total += up * len(clients)
        if r % cfg.eval_every == 0 or r == cfg.rounds:
            if r == cfg.rounds:
                fed.use_full_test()
            metrics = method.evaluate(state, r)
            record.log(round=r, **metrics, train_loss=update.loss.mean().item(),
                       lr=cfg.lr * cfg.lr_decay ** (r - 1), bytes_down=down_total, bytes_up=up_total,
                       time_s=time.perf_counter() - start)
            if "test_acc" in metrics:
                bar.set_postfix(acc=f"{metrics['test_acc']:.4f}")
    # a method may skip the global test in some rounds, or measure no accuracy at all (FedDG's segmentation)
    accs = np.array([h.get("test_acc", np.nan) for h in record.history], dtype=float)
    accs = accs[~np.isnan(accs)]
    record.bytes_sent = down_total + up_total
    record.summary = {"bytes_down": down_total, "bytes_up": up_total}
    if len(accs):
        record.summary = {"final_test_acc": float(accs[-1]), "best_test_acc": float(accs.max()),
                          "last5_test_acc": float(accs[-5:].mean()), **record.summary}
    if "personal_acc" in record.history[-1]:
        record.summary["final_personal_acc"] = record.history[-1]["personal_acc"]
    method.final_state = state
    return method


def rounds_to_target(history: list[dict], target: float, key: str = "test_acc") -> float:
    """First evaluated round whose accuracy reaches `target`; inf when it never does."""
    for h in history:
        if h[key] >= target:
            return float(h["round"])
    return float("inf")
