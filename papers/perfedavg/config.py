"""Per-FedAvg's configuration: `FLConfig` plus the method's step sizes and the paper's user split.

The paper's tables and hyper-parameters could not be read here (no official code, the PDF not retrievable), so
the defaults are recalled values ([mem], unverified) or those of the unofficial
KarhouTam/Per-FedAvg ([KT]); each field says which. `lr` is the outer step beta (also the local SGD step of
FedAvg and Local-only), `inner_lr` the inner step alpha (also the step of the personalised evaluation's
adaptation, for every method).
"""
from __future__ import annotations

from dataclasses import dataclass

from common.experiments import check
from common.fl.config import FLConfig

VARIANTS = ("perfedavg_fo", "perfedavg_hf", "perfedavg_maml")
BASELINES = ("fedavg", "local", "central")   # engine methods, run with the same personalised evaluation


@dataclass(frozen=True)
class PerFedAvgConfig(FLConfig):
    methods = VARIANTS + BASELINES   # what `method` may name (a class attribute, not a field)
    method: str = "perfedavg_hf"          # one of VARIANTS or BASELINES
    dataset: str = "mnist"                # the paper: MNIST and CIFAR-10
    model: str = "perfedavg_mlp"          # MLP, hidden 80-60, ELU [mem; KT the same]
    augment: str = "none"
    # the users: n = 50, class-skewed (the paper's (a, b) scheme is unverified; ours: partition.py)
    partition: str = "dominant_classes"
    n_clients: int = 50                   # n = 50 [mem]
    client_samples: int = 750             # samples per user before the test split (600 train / 150 test)
    dominant_classes: int = 2             # classes that hold `dominant_share` of every user's samples
    dominant_share: float = 0.8
    client_test_fraction: float = 0.2     # each user's own test split, per label (its train split's label mix)
    participation: float = 0.2            # r = 10 of 50 users per round [mem, unverified]
    rounds: int = 1000                    # [unverified]
    # local work: tau steps per round, each on three batches D, D', D'' of size B
    local_steps: int = 10                 # tau = 10 [mem]
    batch_size: int = 40                  # |D| = |D'| = |D''| = 40 [KT]
    lr: float = 0.001                     # beta, the outer step [mem, KT]
    inner_lr: float = 0.001               # alpha, the inner (personalisation) step [mem; KT uses 0.01]
    hf_delta: float = 0.001               # delta of the HF finite difference [mem, KT]
    # exact MAML's Hessian batch: "independent" = D'' as in the paper's Per-FedAvg with exact Hessian
    # (w -= beta (I - alpha H(w; D'')) grad f(w - alpha grad f(w; D); D')); "inner" = D, i.e. the gradient of
    # w -> f(w - alpha grad f(w; D); D') taken through the inner step (Finn et al.'s MAML)
    maml_hessian_batch: str = "independent"
    # the personalised evaluation: every user adapts the model with 1 step of alpha (and, as an extra,
    # `adapt_extra_steps` steps) on batches of its own training data, then is tested on its own test split
    adapt_extra_steps: int = 5
    eval_every: int = 50

    def __post_init__(self):
        check(self.method in self.methods, f"method must be one of {', '.join(self.methods)}, got {self.method!r}")
        check(self.inner_lr > 0, f"inner_lr (alpha) must be > 0, got {self.inner_lr}")
        check(self.hf_delta > 0, f"hf_delta must be > 0, got {self.hf_delta}")
        check(self.maml_hessian_batch in ("independent", "inner"),
              f"maml_hessian_batch must be 'independent' or 'inner', got {self.maml_hessian_batch!r}")
        check(self.adapt_extra_steps >= 0,
              f"adapt_extra_steps must be >= 0 (0 = off), got {self.adapt_extra_steps}")
        check(self.local_steps >= 1, "Per-FedAvg counts local work in steps tau: local_steps must be >= 1")
        check(self.client_samples >= 1, f"client_samples must be >= 1, got {self.client_samples}")
        check(self.dominant_classes >= 1, f"dominant_classes must be >= 1, got {self.dominant_classes}")
        check(0 <= self.dominant_share <= 1, f"dominant_share must be in [0, 1], got {self.dominant_share}")
        super().__post_init__()

    def partition_params(self) -> dict:
        """Extra keyword arguments for the registered partition (read by `Federation.build`)."""
        if self.partition != "dominant_classes":
            return {}
        return {"dominant_classes": self.dominant_classes, "dominant_share": self.dominant_share,
                "client_samples": self.client_samples}
