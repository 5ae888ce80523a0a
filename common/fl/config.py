"""The federated setting every FL paper shares. A paper subclasses it to add its own method's knobs
(with names that say whose they are: `prox_mu`, `ntd_tau`, ...) and to set its paper's defaults."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from common.experiments import check


@dataclass(frozen=True)
class FLConfig:
    method: str = "fedavg"
    dataset: str = "mnist"
    model: str = "cnn"
    augment: str = "none"            # none | flip_crop | flip_crop_cutout (CIFAR-style, per batch)
    train_subset: int = 0            # 0 = the whole training split
    test_subset: int = 0             # 0 = the whole official test split
    # partition
    partition: str = "dirichlet"     # iid | dirichlet | shards | any registered partition
    alpha: float = 0.5               # Dirichlet concentration
    shards_per_client: int = 2
    min_client_size: int = 10
    dirichlet_cap: bool = False      # stop giving samples to a client at N/n (FedNTD, FL-bench, PFLlib)
    client_test_fraction: float = 0.0  # > 0: hold out this share of each client's data for personalised accuracy
    n_clients: int = 20
    participation: float = 0.5       # C: fraction of clients sampled per round
    rounds: int = 20
    # local training
    local_epochs: int = 1            # E, used when local_steps == 0
    local_steps: int = 0             # K > 0: K mini-batch steps per round instead of epochs
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_decay: float = 1.0            # lr_r = lr * lr_decay ** (r - 1), per round
    clip_grad_norm: float = 0.0      # > 0: clip each local step's gradient to this norm (clip_grad_norm_)
    # aggregation
    weighting: str = "size"          # size (n_k / n) | uniform (1 / K)
    aggregate_buffers: bool = True   # average BatchNorm statistics too
    # baselines' knobs
    prox_mu: float = 0.01            # FedProx: mu / 2 * ||w - w_global||^2
    server_momentum: float = 0.9     # FedAvgM: beta
    server_lr: float = 1.0           # FedAvgM: server learning rate
    # engine
    vectorize: bool = True           # train the sampled clients as one vmap'd computation where possible
    eval_every: int = 1
    eval_batch_size: int = 256       # on a CPU, 256 evaluates ~2x faster than 2000 (benchmarks/fl_engine.py)

    # the names `method` may take (a class attribute, not a field): a paper with its own list sets it; None = the
    # engine's registry (common/fl/engine.py METHODS, with the methods of the config's own paper registered)
    methods = None

    def __post_init__(self):
        known = self.known_methods()
        check(self.method in known, f"unknown method {self.method!r}; use one of {', '.join(known)}")
        check(0 < self.participation <= 1, f"participation (C) must be in (0, 1], got {self.participation}")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        check(self.n_clients >= 1, f"n_clients must be >= 1, got {self.n_clients}")
        check(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        check(self.local_epochs >= 1 or self.local_steps >= 1, "need local_epochs >= 1 or local_steps >= 1")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(self.clip_grad_norm >= 0, f"clip_grad_norm must be >= 0 (0 = off), got {self.clip_grad_norm}")
        check(0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}")
        check(self.weighting in ("size", "uniform"), f"weighting must be 'size' or 'uniform', got {self.weighting!r}")
        check(self.augment in ("none", "flip_crop", "flip_crop_cutout"),
              f"augment must be none, flip_crop or flip_crop_cutout, got {self.augment!r}")
        check(0 <= self.client_test_fraction < 1, f"client_test_fraction must be in [0, 1), got {self.client_test_fraction}")
        check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        check(self.prox_mu >= 0, f"prox_mu must be >= 0, got {self.prox_mu}")
        check(0 <= self.server_momentum < 1, f"server_momentum must be in [0, 1), got {self.server_momentum}")

    def known_methods(self) -> tuple[str, ...]:
        """`methods`, or every registered method once the config's paper (papers/<p>/method.py) has registered its
        own: checked when the config is built, so an unknown method fails the pre-run check, not a job."""
        if self.methods is not None:
            return tuple(self.methods)
        from common.fl.engine import METHODS

        home = type(self).__module__.split(".")
        if self.method not in METHODS and home[0] == "papers" and len(home) > 1:
            importlib.import_module(f"papers.{home[1]}.method")
        return tuple(sorted(METHODS))

    @property
    def clients_per_round(self) -> int:
        return max(1, round(self.participation * self.n_clients))
