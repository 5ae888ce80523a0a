"""KD-SVD's configuration: the student run (`KDConfig`) and the cached teacher (`TeacherConfig`).

Both extend `common.train.TrainConfig`, whose defaults are already the author's benchmark recipe
(KD_methods_with_TF `train_w_distill.py`: SGD with Nesterov momentum 0.9, lr 0.1 ×0.1 at 30/60/80 % of 100
epochs, batch 128, weight decay 5e-4 on every weight, flip + pad-4 crop). The network is that benchmark's
ResNet (`nets/ResNet.py`): a 3×3 stem of `widths[0]` channels, then 3 stages of `blocks` basic blocks with
`widths[1:]` channels (strides 1, 2, 2); the student has 1 block per stage, the teacher 5. The code's widths are
(32, 64, 128, 256) for 32×32 inputs ("32/64/128" in our notes on the KDTF code names the stem and the first two stages).

A student run reads its teacher from a file (`python -m papers.kd_svd teacher ...`); the two configs must agree
on the data set, the test images and the widths (`check_compatible`). experiments.yaml gives the teacher's
overrides per scale under `scales.<scale>.teacher`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from common.experiments import ConfigError, check
from common.train import TrainConfig

PAPER_ID = "kd_svd"
METHODS = ("student", "hinton", "fitnets", "fsp", "at", "kd_svd", "kd_eid", "kd_svd_noalign")
MULTITASK = ("kd_svd", "kd_eid", "kd_svd_noalign")   # op_util.py: the 'KD-' branch (clipped distillation gradient)
TWO_STAGE = ("fitnets", "fsp")                       # train_w_distill.py: init_epoch = 40, Optimizer_w_Initializer
SHARED_WITH_TEACHER = ("dataset", "train_split", "test_subset", "widths")


def _check_network(cfg) -> None:
    check(len(cfg.widths) == 4 and all(isinstance(w, int) and w >= 1 for w in cfg.widths),
          f"widths must be 4 positive ints (stem, stage 1, stage 2, stage 3), got {cfg.widths}")
    check(cfg.blocks >= 1, f"blocks (basic blocks per stage) must be >= 1, got {cfg.blocks}")


@dataclass(frozen=True)
class KDConfig(TrainConfig):
    method: str = "kd_svd"                 # one of METHODS
    dataset: str = "cifar100"
    # the store holds 10,000 of CIFAR-100's 50,000 training images (shared/data/MANIFEST.md); the paper uses all
    train_split: str = "train_subset"
    widths: tuple[int, ...] = (32, 64, 128, 256)   # nets/ResNet.py: nChannels for 32×32 inputs
    blocks: int = 1                        # the student: ResNet "8" (1 block per stage)
    # Hinton KD (Response.py::Soft_logits, op_util.py): 0.7 CE + 0.3 KL(p_T^τ ‖ p_S^τ), τ = 4, no τ² factor
    kd_temperature: float = 4.0
    kd_alpha: float = 0.3
    fitnets_weight: float = 1.0            # Multiple.py::FitNet: Σ_l mean((F_S − F_T)²)
    fsp_weight: float = 1e-3 / 2           # Shared.py::FSP: 1e-3 · mean_b Σ (G_T − G_S)² / 2
    at_beta: float = 1e3                   # Multiple.py::Attention_transfer: β/2 Σ_l mean((Q_S − Q_T)²)
    # FitNets and FSP (train_w_distill.py): `init_epochs` of distillation alone (+ weight decay), then the
    # `epochs` of cross-entropy alone, momentum reset in between; 0 = one stage, the losses added to CE
    init_epochs: int = 40
    svd_k: int = 1                         # Shared.py::KD_SVD: K = 1 teacher vector, K + 3 student candidates

    def __post_init__(self):
        check(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        _check_network(self)
        check(self.kd_temperature > 0, f"kd_temperature must be > 0, got {self.kd_temperature}")
        check(0 <= self.kd_alpha <= 1, f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        for name in ("fitnets_weight", "fsp_weight", "at_beta"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        check(self.init_epochs >= 0, f"init_epochs must be >= 0 (0 = no initialisation stage), got "
              f"{self.init_epochs}")
        check(self.svd_k >= 1, f"svd_k must be >= 1, got {self.svd_k}")
        check(self.svd_k + 3 <= min(self.widths[1:]),
              f"svd_k + 3 = {self.svd_k + 3} student candidates need every stage width >= {self.svd_k + 3}, "
              f"got widths {self.widths}")
        super().__post_init__()

    @property
    def total_epochs(self) -> int:
        """Epochs actually run: the initialisation stage of FitNets and FSP comes before `epochs`."""
        return self.epochs + (self.init_epochs if self.method in TWO_STAGE else 0)


@dataclass(frozen=True)
class TeacherConfig(TrainConfig):
    dataset: str = "cifar100"
    train_split: str = "train_subset"
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: int = 5                        # the teacher: ResNet "32" (5 blocks per stage)

    def __post_init__(self):
        _check_network(self)
        super().__post_init__()


def check_compatible(student: KDConfig, teacher: dict, where: str) -> None:
    """ConfigError unless the teacher's config (a dict, as stored beside its weights) has the student's data
    set, test images and widths; `where` names the teacher."""
    differ = {k: (_plain(getattr(student, k)), _plain(teacher.get(k))) for k in SHARED_WITH_TEACHER
              if _plain(getattr(student, k)) != _plain(teacher.get(k))}
    if differ:
        shown = "; ".join(f"{k}: student {s!r}, teacher {t!r}" for k, (s, t) in differ.items())
        raise ConfigError(f"the teacher {where} does not fit this run ({shown}): give both the same values in "
                          "experiments.yaml (the scale's base and its `teacher:`) and rebuild the teacher")


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def teacher_fields() -> list[str]:
    return [f.name for f in fields(TeacherConfig)]
