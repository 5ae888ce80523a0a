"""Gradient dropping's configuration; defaults follow the paper and Marian's implementation."""
from __future__ import annotations

from dataclasses import dataclass

from common.experiments import check


@dataclass(frozen=True)
class GradDropConfig:
    dataset: str = "mnist"
    hidden: tuple[int, ...] = (512, 512)   # MLP 784-512-512-10 (the paper's MNIST net is unstated)
    layer_norm: bool = False               # LayerNorm after each hidden layer (claim 4)
    workers: int = 4                       # the paper's 4 GPUs, simulated synchronously
    batch_size: int = 32                   # per worker
    steps: int = 1500                      # server steps
    optimizer: str = "sgd"                 # sgd | adam: applied by the server to the averaged sparse gradient
    lr: float = 0.1
    drop_ratio: float = 0.99               # R: fraction of entries dropped; 0 = dense baseline
    residual: bool = True                  # keep dropped entries for the next step (claim 3)
    threshold: str = "global"              # global (whole flattened model) | local (per parameter tensor)
    sample_size: int = 100_000             # strided |g| sample for the threshold (Marian's gpu/dropper.cu: 100k)
    warmup_steps: int = 0                  # first steps sent dense (Marian's dropping_warmup)
    eval_every: int = 100
    train_subset: int = 0                  # 0 = all 60k training images
    test_subset: int = 0                   # thins the accuracy curve only; the last evaluation uses all 10k

    def __post_init__(self):
        check(0.0 <= self.drop_ratio < 1.0, f"drop_ratio must be in [0, 1), got {self.drop_ratio}")
        check(self.threshold in ("global", "local"), f"threshold must be 'global' or 'local', got {self.threshold!r}")
        check(self.optimizer in ("sgd", "adam"), f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        check(self.batch_size >= 1 and self.steps >= 1, "batch_size and steps must be >= 1")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.sample_size >= 1, f"sample_size must be >= 1, got {self.sample_size}")
        check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")

    @property
    def dense(self) -> bool:
        return self.drop_ratio == 0.0
