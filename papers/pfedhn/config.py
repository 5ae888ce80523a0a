"""pFedHN's configuration: `FLConfig` plus the hypernetwork's knobs and the paper's client split.

Defaults are the official code's (`experiments/pfedhn/trainer.py` argparse, AvivSham/pFedHN) for CIFAR-10 with 50
clients; the split is the code's of February 2021 (278aea0, when the paper's numbers were made), the spare slot of
the current code (47c957d, November 2022) a switch. The engine's names map onto the code's: `lr` is the client's inner SGD step
(`--inner-lr` 5e-3), `weight_decay` its `--inner-wd`, `local_steps` the `--inner-steps`, `rounds` the
`--num-steps`: client visits, for every method (one client per step for the hypernetworks, participation
1 / n_clients; the baselines run rounds / clients_per_round engine rounds of clients_per_round clients, and
evaluate every eval_every / clients_per_round of them), `batch_size` the `--batch-size`; `hn_lr`,
`hn_weight_decay` and `embed_lr` are the hypernetwork's `--lr`, `--wd` and `--embed-lr`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.experiments import check
from common.fl.config import FLConfig

HYPERNETWORKS = ("pfedhn", "pfedhn_pc")
BASELINES = ("fedavg", "local", "fedper")


@dataclass(frozen=True)
class PFedHNConfig(FLConfig):
    methods = HYPERNETWORKS + BASELINES   # what `method` may name (a class attribute, not a field)
    method: str = "pfedhn"                # one of HYPERNETWORKS or BASELINES
    dataset: str = "cifar10"
    model: str = "pfedhn_cnn"             # CNNTarget: conv 16, conv 32, FC 120, 84, C
    augment: str = "none"                 # the code: no augmentation
    # the split (partition.py): the code's 40k train / 10k validation split of the training set, then every
    # client's classes and per-class shares, applied to the train, validation and test splits alike
    partition: str = "pfedhn_classes"
    classes_per_client: int = 2           # 2 for CIFAR-10, 10 for CIFAR-100 (trainer.py __main__)
    spare_slot: bool = False              # True: the current code's `count_per_class = ... // C + 1` (47c957d,
                                          # 2022); False: shares normalised over the class's holders (278aea0)
    val_size: int = 10000                 # get_datasets(val_size=10000)
    val_subset: int = 0                   # 0 = the whole validation split (quick scale: fewer)
    n_clients: int = 50
    participation: float = 0.02           # one client per step
    rounds: int = 5000                    # --num-steps
    # the client's inner loop
    local_steps: int = 50                 # --inner-steps
    batch_size: int = 64
    lr: float = 5e-3                      # --inner-lr
    momentum: float = 0.9
    weight_decay: float = 5e-5            # --inner-wd
    clip_grad_norm: float = 50.0          # clip_grad_norm_(net.parameters(), 50)
    # the hypernetwork (CNNHyper)
    embed_dim: int = -1                   # -1: 1 + n / 4, n every client (the code's `int(1 + num_nodes / 4)`)
    hn_hidden: int = 100                  # --hyper-hid
    hn_layers: int = 3                    # --n-hidden: hidden Linear(100, 100) layers after the first
    hn_lr: float = 1e-2                   # --lr (pFedHN-PC's script: 5e-2)
    embed_lr: float = 0.0                 # 0: the same as hn_lr (--embed-lr None)
    hn_momentum: float = 0.9
    hn_weight_decay: float = 1e-3         # --wd
    hn_clip: float = 50.0                 # clip_grad_norm_(hnet.parameters(), 50)
    # generalisation to novel clients: the last `novel_clients` clients never train the hypernetwork; after
    # training, each learns only its embedding (phi frozen) for `novel_steps` SGD steps of `novel_lr`
    novel_clients: int = 0
    novel_steps: int = 200
    novel_lr: float = 1e-2
    eval_every: int = 30                  # --eval-every
    # client by client: the LeNet's convolutions vmapped over clients run at half the speed on a CPU (a round of 10
    # clients x 20 steps: 11 s vmapped, 6 s one by one, one thread); set true on a GPU
    vectorize: bool = False
    engine_rounds: bool = False           # set by `engine_config`: rounds and eval_every count engine rounds

    def __post_init__(self):
        check(self.method in HYPERNETWORKS + BASELINES,
              f"method must be one of {', '.join(HYPERNETWORKS + BASELINES)}, got {self.method!r}")
        check(self.classes_per_client >= 1, f"classes_per_client must be >= 1, got {self.classes_per_client}")
        check(self.val_size >= 1, f"val_size must be >= 1, got {self.val_size}")
        check(self.val_subset >= 0, f"val_subset must be >= 0 (0 = all), got {self.val_subset}")
        check(self.embed_dim == -1 or self.embed_dim >= 1, f"embed_dim must be -1 (auto) or >= 1, got {self.embed_dim}")
        check(self.hn_hidden >= 1 and self.hn_layers >= 0,
              f"need hn_hidden >= 1 and hn_layers >= 0, got {self.hn_hidden} and {self.hn_layers}")
        check(self.hn_lr > 0 and self.embed_lr >= 0 and self.novel_lr > 0,
              "hn_lr and novel_lr must be > 0 and embed_lr >= 0 (0 = hn_lr)")
        check(0 <= self.hn_momentum < 1, f"hn_momentum must be in [0, 1), got {self.hn_momentum}")
        check(self.hn_clip >= 0, f"hn_clip must be >= 0 (0 = off), got {self.hn_clip}")
        check(0 <= self.novel_clients < self.n_clients,
              f"novel_clients must be in [0, n_clients), got {self.novel_clients} of {self.n_clients}")
        check(self.novel_steps >= 1, f"novel_steps must be >= 1, got {self.novel_steps}")
        check(self.local_steps >= 1, "pFedHN counts the inner loop in steps: local_steps must be >= 1")
        check(self.engine_rounds or self.rounds >= self.clients_per_round,
              f"rounds counts client visits: need rounds >= the {self.clients_per_round} clients of a round")
        check(self.partition == "pfedhn_classes", f"pFedHN's split is partition.py's `pfedhn_classes`, got "
              f"{self.partition!r}")
        check(self.client_test_fraction == 0, "pFedHN's clients are tested on their share of the official test "
              "split (partition.py), not on a held-out part of their training data: leave client_test_fraction 0")
        super().__post_init__()

    def engine_config(self) -> "PFedHNConfig":
        """The config the engine's loop runs: the trained clients only (the novel ones are never sampled), and
        rounds and eval_every turned from client visits into rounds of clients_per_round clients; one client per
        round always trains on the sequential path (a vmap over one client is only overhead)."""
        trained = dataclasses.replace(self, n_clients=self.n_clients - self.novel_clients, novel_clients=0)
        k = trained.clients_per_round
        return dataclasses.replace(trained, rounds=self.rounds // k, eval_every=max(1, self.eval_every // k),
                                   engine_rounds=True, vectorize=self.vectorize and k > 1)
