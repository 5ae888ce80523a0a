"""FedDG's configuration: `FLConfig` plus the leave-one-domain-out setting and ELCFS's knobs.

Defaults are the official code's (`train_ELCFS.py` argparse and constants, liuquande/FedDG-ELCFS) where it has
one: 100 rounds of one local epoch per source client, batch 5, Adam (lr 1e-3, betas 0.9 / 0.999) kept per client
across rounds, meta step 1e-3 with gradients clamped to +-100, NT-Xent at tau 0.05 with weight 0.1, the test
threshold 0.75 with the largest connected component kept, the bank a random 1/8 of every client's amplitude
spectra; the paper's continuous interpolation (lam ~ U(0, 1), band L) where the code swaps the DC term only.

The methods, each adding one component of the paper's ablation to the one before:

    fedavg         the task loss on the raw batch                                   (FedAvg)
    amplitude_mix  + the same loss on the frequency-transformed batch               (+ CFSI, no meta step)
    episodic       the transformed batch meets the fast weights theta'               (+ episodic learning)
    feddg          + the boundary contrastive loss (classification: class contrast)  (ELCFS, the full method)
    central        every source domain's data on one client, the task loss          (the all-sources bound)

`freq_transform` picks CFSI (`interpolate`, Eq. 2) or the released training's `dc_swap`.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.experiments import check
from common.fl.config import FLConfig
from papers.feddg.domains import DOMAINS

PAPER_ID = "feddg"
TASKS = ("segmentation", "classification")
METHODS = ("fedavg", "amplitude_mix", "episodic", "feddg", "central")
TRANSFORMS = ("interpolate", "dc_swap")
MODEL_OF_TASK = {"segmentation": "feddg_unet", "classification": "feddg_cnn"}


@dataclass(frozen=True)
class FedDGConfig(FLConfig):
    methods = METHODS                     # what `method` may name (a class attribute, not a field)
    task: str = "segmentation"            # segmentation (Dice on the stroke masks) | classification (the digit)
    method: str = "feddg"                 # one of METHODS (see the module docstring)
    # the sites: one client per domain but the unseen one, which only tests (`--unseen_site`)
    domains: tuple[str, ...] = DOMAINS
    unseen: str = "mnist_m"
    n_train: int = 2000                   # training images per source domain (its client's data)
    n_test: int = 1000                    # test images per domain (the unseen domain's are the test set)
    # the network (models.py): the U-Net for segmentation, its encoder + a linear head for classification
    model: str = "feddg_unet"
    width: int = 16                       # Unet2D(n=16)
    depth: int = 4                        # levels; the code's 5 on 384 px, 4 on our 32 px (32 -> 4 at the bottom)
    norm: str = "instance"                # Unet2D(norm='in'); 'group' is the paper's other choice
    # continuous frequency space interpolation (fourier.py)
    freq_transform: str = "interpolate"   # interpolate (Eq. 2, lam ~ U(0, 1)) | dc_swap (the code's L = 0 swap)
    band: float = 0.05                    # L: half-side floor(32 L) = 1, the demo's 3 x 3 box (L = 0.003, 384 px)
    bank_fraction: float = 0.125          # share of each client's amplitude spectra in the bank (the code's 1/8)
    # episodic learning (method.py)
    meta_step_size: float = 1e-3          # --meta_step_size
    clip_value: float = 100.0             # --clip_value
    contrast_weight: float = 0.1          # cont_loss * 0.1
    contrast_tau: float = 0.05            # NTXentLoss(temperature=0.05)
    # the test (segmentation)
    threshold: float = 0.75               # pred_y > 0.75
    largest_component: bool = True        # _connectivity_region_analysis
    # the federated setting: every source client every round, one local epoch, Adam per client
    participation: float = 1.0
    rounds: int = 100                     # --max_epoch
    local_epochs: int = 1
    batch_size: int = 5                   # --batch_size
    lr: float = 1e-3                      # --base_lr (Adam)
    n_clients: int = 0                    # set by `engine_config`: the source domains (1 for central)
    vectorize: bool = False               # clients train one by one, each with its own Adam (the code's)
    eval_every: int = 1                   # the code tests the unseen site after every round

    def __post_init__(self):
        check(self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        check(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check(self.model == MODEL_OF_TASK[self.task],
              f"the {self.task} task uses model {MODEL_OF_TASK[self.task]!r}, got {self.model!r}")
        unknown = [d for d in self.domains if d not in DOMAINS]
        check(not unknown and len(set(self.domains)) == len(self.domains),
              f"domains must be distinct names among {', '.join(DOMAINS)}, got {list(self.domains)}")
        check(len(self.domains) >= 3, f"leave-one-domain-out needs >= 3 domains (2 source clients for the "
              f"amplitude bank), got {len(self.domains)}")
        check(self.unseen in self.domains, f"unseen must be one of the domains {list(self.domains)}, got "
              f"{self.unseen!r}")
        check(self.n_train >= 1 and self.n_test >= 1,
              f"need n_train >= 1 and n_test >= 1, got {self.n_train} and {self.n_test}")
        check(self.width >= 1 and self.depth >= 2, f"need width >= 1 and depth >= 2, got {self.width} and "
              f"{self.depth}")
        check(self.norm in ("instance", "group"), f"norm must be 'instance' or 'group' (BatchNorm would average "
              f"the clients' styles), got {self.norm!r}")
        check(self.freq_transform in TRANSFORMS,
              f"freq_transform must be one of {', '.join(TRANSFORMS)}, got {self.freq_transform!r}")
        check(0.0 <= self.band <= 0.5, f"band (L) must lie in [0, 0.5], got {self.band}")
        check(0.0 < self.bank_fraction <= 1.0, f"bank_fraction must lie in (0, 1], got {self.bank_fraction}")
        check(self.meta_step_size >= 0, f"meta_step_size must be >= 0, got {self.meta_step_size}")
        check(self.clip_value > 0, f"clip_value must be > 0, got {self.clip_value}")
        check(self.contrast_weight >= 0, f"contrast_weight must be >= 0, got {self.contrast_weight}")
        check(self.contrast_tau > 0, f"contrast_tau must be > 0, got {self.contrast_tau}")
        check(0.0 < self.threshold < 1.0, f"threshold must lie in (0, 1), got {self.threshold}")
        check(self.participation == 1.0, "every source client trains every round (the code): leave participation "
              f"at 1, got {self.participation}")
        check(self.local_steps == 0, "a client's round is `local_epochs` passes over its data (the code: one); "
              "leave local_steps at 0")
        check(self.augment == "none", f"FedDG's loader does not augment: leave augment 'none', got {self.augment!r}")
        check(not self.vectorize, "FedDG's clients train one by one (each keeps its Adam state): leave vectorize "
              "false")
        check(self.n_clients in (0, self.sources), f"n_clients is set from the domains ({self.sources} source "
              f"clients, 1 for central): leave it out, got {self.n_clients}")
        object.__setattr__(self, "n_clients", self.sources)
        super().__post_init__()

    @property
    def sources(self) -> int:
        """Clients: one per source domain; central trains one client on all of them."""
        return 1 if self.method == "central" else len(self.domains) - 1

    @property
    def source_domains(self) -> tuple[str, ...]:
        return tuple(d for d in self.domains if d != self.unseen)

    @property
    def uses_transform(self) -> bool:
        return self.method in ("amplitude_mix", "episodic", "feddg")

    def model_params(self) -> dict:
        """The network's size (`run_federated` builds the model with these)."""
        return {"width": self.width, "depth": self.depth, "norm": self.norm}

    def episode(self) -> dict:
        """`episodic_step`'s knobs for this method: no meta step for amplitude_mix, no contrast before feddg."""
        return {"meta_step_size": self.meta_step_size if self.method in ("episodic", "feddg") else 0.0,
                "clip_value": self.clip_value,
                "contrast_weight": self.contrast_weight if self.method == "feddg" else 0.0}
