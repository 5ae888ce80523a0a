"""FedNTD's configuration: `FLConfig` with the released code's defaults (`config/fedntd.json`) and the
method's own knobs (`ntd_*`, `lsd_*`, the forgetting probe)."""
from __future__ import annotations

from dataclasses import dataclass

from common.experiments import check
from common.fl.config import FLConfig


@dataclass(frozen=True)
class FedNTDConfig(FLConfig):
    # the released code's setting (config/fedntd.json, train_tools/)
    method: str = "fedntd"
    dataset: str = "cifar10"
    model: str = "cnn"                  # fedavg_cifar / fedavg_mnist (McMahan CNN)
    augment: str = "flip_crop_cutout"   # CIFAR loader: RandomCrop(32, 4) + flip + Cutout(16)
    partition: str = "shards"           # sharding_partition, s = shard_per_user = 2
    shards_per_client: int = 2
    alpha: float = 0.1                  # lda_partition's Dirichlet concentration when partition = dirichlet
    min_client_size: int = 10           # lda_partition resamples until every client has >= 10 samples
    n_clients: int = 100
    participation: float = 0.1          # sample_ratio
    rounds: int = 200
    local_epochs: int = 5
    batch_size: int = 50
    lr: float = 0.01                    # the config's 0.01 (the paper's text says 0.1)
    momentum: float = 0.9
    weight_decay: float = 1e-5
    lr_decay: float = 0.99              # StepLR(step_size=1, gamma=0.99) on the server optimiser, once per round
    prox_mu: float = 1.0                # config/fedprox.json
    server_momentum: float = 0.7        # config/fedavgm.json (beta)
    # FedNTD (config/fedntd.json: "params": {"tau": 1, "beta": 1}; NTD_Loss's class default tau = 3)
    ntd_tau: float = 1.0                # softmax temperature of the not-true distillation
    ntd_beta: float = 1.0               # weight of the not-true distillation term
    # FedLSD (all-class self-distillation, the ablation; same form and defaults as FedNTD)
    lsd_tau: float = 1.0
    lsd_beta: float = 1.0
    # forgetting probe (our analysis): every `forget_every` rounds evaluate the received global model and each
    # sampled client's trained model per class on the test set; 0 = off
    forget_every: int = 0

    def __post_init__(self):
        check(self.ntd_tau > 0, f"ntd_tau must be > 0, got {self.ntd_tau}")
        check(self.ntd_beta >= 0, f"ntd_beta must be >= 0, got {self.ntd_beta}")
        check(self.lsd_tau > 0, f"lsd_tau must be > 0, got {self.lsd_tau}")
        check(self.lsd_beta >= 0, f"lsd_beta must be >= 0, got {self.lsd_beta}")
        check(self.forget_every >= 0, f"forget_every must be >= 0 (0 = off), got {self.forget_every}")
        check(self.forget_every % self.eval_every == 0,
              f"forget_every ({self.forget_every}) must be a multiple of eval_every ({self.eval_every}): the probe "
              "is logged with the round's evaluation")
        super().__post_init__()
