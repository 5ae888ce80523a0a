"""FedDF's configuration: the federated setting with the official code's defaults, and FedDF's own knobs
(`feddf_*`). Defaults are the README's CIFAR-10 / ResNet-8 command (see shared/papers/feddf.md §2.1)."""
from __future__ import annotations

from dataclasses import dataclass

from common.experiments import check
from common.fl.config import FLConfig
from common.models import MODELS

# unlabelled pools: source name -> (data set, split) of common.data; "noise" is generated (random_data)
DISTILLATION_POOLS = {"cifar100": ("cifar100", "train_subset"), "fashion_mnist": ("fashion_mnist", "train"),
                      "mnist": ("mnist", "train"), "mnist_m": ("mnist_m", "test")}
DISTILLATION_SOURCES = (*DISTILLATION_POOLS, "noise")


@dataclass(frozen=True)
class FedDFConfig(FLConfig):
    method: str = "feddf"
    dataset: str = "cifar10"
    model: str = "resnet8"
    augment: str = "flip_crop"          # random crop 32 (pad 4) + horizontal flip, clients and distillation data
    partition: str = "dirichlet_feddf"  # the official block-of-10 Dirichlet split (papers/feddf/partition.py)
    alpha: float = 1.0
    n_clients: int = 20
    participation: float = 0.4
    rounds: int = 100
    local_epochs: int = 40
    batch_size: int = 64
    lr: float = 0.1                     # SGD, no momentum, no weight decay, no decay (official README)
    weighting: str = "uniform"          # official `_fedavg`: 1 / n_selected
    aggregate_buffers: bool = True      # the whole state_dict is averaged, BN statistics included
    eval_batch_size: int = 1000
    server_val_fraction: float = 0.1    # labelled server split held out before partitioning (--val_data_ratio)
    # FedDF server-side ensemble distillation (pcode/aggregation/noise_knowledge_transfer.py)
    feddf_source: str = "cifar100"      # unlabelled distillation data: a DISTILLATION_POOLS name or noise
    feddf_source_size: int = 0          # images of the source used (0 = all there are: 10k CIFAR-100 here)
    feddf_steps: int = 10_000           # most distillation steps per round (total_n_server_pseudo_batches)
    feddf_cosine_steps: int = 10_000    # T_max of the cosine schedule (official: total_n_server_pseudo_batches)
    feddf_batch_size: int = 64
    feddf_lr: float = 1e-3              # Adam, re-created every round
    feddf_temperature: float = 1.0      # T of the KL; no T^2 factor (official)
    feddf_clip: float = 5.0             # clip_grad_norm_ of the student
    feddf_val_every: int = 100          # validate the student every N steps ...
    feddf_patience: int = 1_000         # ... and stop after this many steps without improvement
    feddf_select_on_val: bool = True    # False: run feddf_steps and keep the last student (no labelled data)
    feddf_keep_start: bool = False      # True: the FedAvg start competes on validation (return_best_model_on_val)
    feddf_archs: tuple[str, ...] = ()   # heterogeneous clients: contiguous blocks of clients per architecture
    target_acc: float = 0.75            # rounds-to-target (Table 1): 75 % at alpha = 0.1 [issue#11]

    def __post_init__(self):
        super().__post_init__()
        check(0 <= self.server_val_fraction < 1,
              f"server_val_fraction must be in [0, 1), got {self.server_val_fraction}")
        check(self.feddf_source in DISTILLATION_SOURCES,
              f"feddf_source must be one of {', '.join(DISTILLATION_SOURCES)}, got {self.feddf_source!r}")
        check(self.feddf_source_size >= 0, f"feddf_source_size must be >= 0 (0 = all), got {self.feddf_source_size}")
        check(self.feddf_steps >= 1, f"feddf_steps must be >= 1, got {self.feddf_steps}")
        check(self.feddf_cosine_steps >= 1, f"feddf_cosine_steps must be >= 1, got {self.feddf_cosine_steps}")
        check(self.feddf_batch_size >= 1, f"feddf_batch_size must be >= 1, got {self.feddf_batch_size}")
        check(self.feddf_lr > 0, f"feddf_lr must be > 0, got {self.feddf_lr}")
        check(self.feddf_temperature > 0, f"feddf_temperature must be > 0, got {self.feddf_temperature}")
        check(self.feddf_clip > 0, f"feddf_clip must be > 0, got {self.feddf_clip}")
        check(self.feddf_val_every >= 1, f"feddf_val_every must be >= 1, got {self.feddf_val_every}")
        check(self.feddf_patience >= 1, f"feddf_patience must be >= 1, got {self.feddf_patience}")
        if self.method in ("feddf", "feddf_hetero") and self.feddf_select_on_val:
            check(self.server_val_fraction > 0, "FedDF's validation-based selection needs a labelled server split: "
                  "set server_val_fraction > 0, or feddf_select_on_val: false for fixed distillation steps")
        check(not self.feddf_keep_start or self.feddf_select_on_val,
              "feddf_keep_start compares the start with the distilled students on the validation split: it needs "
              "feddf_select_on_val: true")
        unknown = [a for a in self.feddf_archs if a not in MODELS]
        check(not unknown, f"feddf_archs {unknown} are not registered models; known: {', '.join(sorted(MODELS))}")
        if self.method in ("feddf_hetero", "fedavg_hetero"):
            check(len(self.feddf_archs) >= 1, f"method {self.method} needs feddf_archs (e.g. [resnet8, cnn])")
            check(self.model in self.feddf_archs,
                  f"model {self.model!r} must be one of feddf_archs {list(self.feddf_archs)} (the engine's state)")
        check(0 < self.target_acc <= 1, f"target_acc must be in (0, 1], got {self.target_acc}")

    def partition_params(self) -> dict:
        """Extra partition kwargs for the engine: the official split needs alpha."""
        return {"alpha": self.alpha} if self.partition == "dirichlet_feddf" else {}
