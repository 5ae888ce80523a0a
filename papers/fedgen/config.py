"""FedGen's configuration. Defaults are the official MNIST setting (README commands, `utils/model_config.py`
RUNCONFIGS['mnist'] and GENERATORCONFIGS['mnist'], `serverbase.init_ensemble_configs`)."""
from __future__ import annotations

from dataclasses import dataclass

from common.experiments import check
from common.fl.config import FLConfig

METHOD_NAMES = ("fedavg", "fedprox", "feddistill", "feddistill_fl", "fedensemble", "fedgen", "central")


@dataclass(frozen=True)
class FedGenConfig(FLConfig):
    methods = METHOD_NAMES               # what `method` may name (a class attribute, not a field)
    method: str = "fedgen"               # one of METHOD_NAMES (the paper's Table 1 columns; central = the regime reference)
    dataset: str = "mnist"
    model: str = "fedgen_cnn"            # conv(6)-BN-conv(16)-BN, FC 784->32 (latent), FC 32->10
    # data: data/Mnist/generate_niid_dirichlet.py --sampling_ratio 0.5 --alpha A --n_user 20
    partition: str = "fedgen_dirichlet"
    alpha: float = 0.1
    fedgen_sampling_ratio: float = 0.5   # per class min(ratio * n_class, ratio * N / users) samples (1,500 on MNIST)
    fedgen_data_seed: int = 42           # the official split is made once (seed 42); -1 = the run seed
    n_clients: int = 20
    participation: float = 0.5           # --num_users 10 of 20
    rounds: int = 200
    # local training: --local_epochs 20 with K=1 is 20 SGD steps of batch 32
    local_steps: int = 20
    batch_size: int = 32
    lr: float = 0.01
    lr_decay: float = 0.99               # per-user ExponentialLR(0.99) stepped once per round
    # aggregation: serverbase.aggregate_parameters averages parameters only, weighted by train samples
    weighting: str = "size"
    aggregate_buffers: bool = False
    prox_mu: float = 1.0                 # FedProx: --lamda 1
    prox_decay: float = 1e-3             # FedProxOptimizer's mu: w -= lr (grad + lamda (w - w_global) + mu w)
    # the generator (GENERATORCONFIGS['mnist'] = hidden 256, latent 32, noise 32)
    gen_noise_dim: int = 32
    gen_hidden: int = 256
    gen_lr: float = 3e-4                 # Adam, RUNCONFIGS ensemble_lr
    gen_weight_decay: float = 1e-2
    gen_lr_decay: float = 0.98           # ExponentialLR stepped once per round
    gen_steps: int = 50                  # ensemble_epochs 50 = 10 epochs x n_teacher_iters 5
    gen_batch_size: int = 32             # --batch_size (server) and --gen_batch_size (user)
    gen_teacher_weight: float = 1.0      # ensemble_alpha
    gen_diversity_weight: float = 1.0    # ensemble_eta
    gen_teacher_weighting: str = "official"  # official (the code's [B] x [B,1] broadcast) | per_sample (the text)
    # the users' regulariser (userpFedGen.train)
    gen_alpha: float = 10.0              # generative_alpha: synthetic cross-entropy weight
    gen_beta: float = 10.0               # generative_beta: latent-matching KL weight
    gen_reg_decay: float = 0.98          # both weights decay as max(1e-4, w * 0.98 ** round)
    # FedDistill (userFedDistill.py): weight of the KL towards the global per-label logits
    distill_weight: float = 1.0
    # evaluation
    eval_top_k: int = 5                  # utils/plot_utils.py: mean of the top-5 rounds per seed
    latent_samples_per_label: int = 40   # for the latent-space figure (FedGen runs only)

    def __post_init__(self):
        check(self.method in METHOD_NAMES, f"method must be one of {METHOD_NAMES}, got {self.method!r}")
        check(self.model == "fedgen_cnn", f"FedGen needs a model with features/classifier (fedgen_cnn), got {self.model!r}")
        check(0 < self.fedgen_sampling_ratio <= 1, f"fedgen_sampling_ratio must be in (0, 1], got {self.fedgen_sampling_ratio}")
        check(self.gen_noise_dim >= 1 and self.gen_hidden >= 1, "gen_noise_dim and gen_hidden must be >= 1")
        check(self.gen_lr > 0, f"gen_lr must be > 0, got {self.gen_lr}")
        check(0 < self.gen_lr_decay <= 1, f"gen_lr_decay must be in (0, 1], got {self.gen_lr_decay}")
        check(0 < self.gen_reg_decay <= 1, f"gen_reg_decay must be in (0, 1], got {self.gen_reg_decay}")
        check(self.gen_steps >= 0, f"gen_steps must be >= 0, got {self.gen_steps}")
        check(self.gen_batch_size >= 2, f"gen_batch_size must be >= 2 (diversity loss, BatchNorm), got {self.gen_batch_size}")
        check(self.gen_alpha >= 0 and self.gen_beta >= 0, "gen_alpha and gen_beta must be >= 0")
        check(self.gen_teacher_weighting in ("official", "per_sample"),
              f"gen_teacher_weighting must be 'official' or 'per_sample', got {self.gen_teacher_weighting!r}")
        check(self.local_steps >= 1, "FedGen's setting counts local work in steps: local_steps must be >= 1")
        check(self.prox_decay >= 0, f"prox_decay must be >= 0, got {self.prox_decay}")
        check(self.eval_top_k >= 1, f"eval_top_k must be >= 1, got {self.eval_top_k}")
        check(self.partition == "fedgen_dirichlet" or self.partition in ("dirichlet", "iid"),
              f"partition must be fedgen_dirichlet, dirichlet or iid, got {self.partition!r}")
        super().__post_init__()

    def partition_params(self) -> dict:
        """Extra keyword arguments for the registered partition (read by `Federation.build`)."""
        if self.partition != "fedgen_dirichlet":
            return {}
        return {"alpha": self.alpha, "sampling_ratio": self.fedgen_sampling_ratio,
                "min_size": self.min_client_size, "data_seed": self.fedgen_data_seed}
