"""One comparison run: any registered FL method on the shared engine, plus rounds-to-target.

The baselines live in common/fl; each FL paper registers its own method (and says which config dataclass
carries its knobs through the method's `config_cls`), so the comparison runs them unchanged.

The personalisation panel (settings `pers_*`, `personalised_eval: true`) runs FedAvg, Local-only, Per-FedAvg
(FO, HF) and pFedHN (its hypernetwork server with the official code's defaults, one user per step) in Per-FedAvg's
setting (its config, users' split and MLP) and evaluates every one of them with
Per-FedAvg's personalised protocol (`papers.perfedavg.method.train`: each user adapts the model with one SGD step
of alpha on its own training data, then is tested on its own test split), so no method is compared adapted
against unadapted."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from common import experiments
from common.experiments import check
from common.fl import METHODS, FLConfig, get_method, run_federated
from common.fl.engine import rounds_to_target
from common.results import RunRecord
from papers.perfedavg.config import BASELINES, VARIANTS, PerFedAvgConfig


@dataclass(frozen=True)
class CompareConfig(FLConfig):
    """The engine's own setting; the comparison adds no knobs of its own."""


@dataclass(frozen=True)
class PersonalisedConfig(PerFedAvgConfig):
    """A run of the personalisation panel: Per-FedAvg's config (its users' split `dominant_classes`, its MLP, the
    inner step alpha = `inner_lr` and the outer / local step beta = `lr`) for any of its methods, FedAvg and
    Local-only included; `run` evaluates it with Per-FedAvg's personalised protocol whatever the method."""

    methods = VARIANTS + BASELINES + ("pfedhn",)   # pFedHN's server on the engine's federation (papers/pfedhn)
    personalised_eval: bool = True   # the marker a setting gives to join the panel (see `config_class`)

    def __post_init__(self):
        check(self.personalised_eval, "personalised_eval must be true for a run of the personalisation panel "
              "(leave the key out of a setting to run it with the comparison's global evaluation)")
        super().__post_init__()


def import_paper_methods() -> None:
    """Import every paper's method module so its methods register themselves."""
    for module in sorted(Path(__file__).resolve().parent.parent.glob("*/method.py")):
        if module.parent.name != "compare":
            importlib.import_module(f"papers.{module.parent.name}.method")


def config_class(overrides: dict) -> type:
    """The config dataclass of the run's method: the paper's own (with its knobs) or the engine's; for a setting
    of the personalisation panel (`personalised_eval: true`), Per-FedAvg's whatever the method."""
    if overrides.get("personalised_eval"):
        return PersonalisedConfig
    name = overrides.get("method", "fedavg")
    if name not in METHODS:
        import_paper_methods()
    return getattr(get_method(name), "config_cls", CompareConfig)


def run(cfg: FLConfig, seed: int, record: RunRecord, device: torch.device | str = "cpu") -> None:
    if getattr(cfg, "personalised_eval", False):
        run_personalised(cfg, seed, record, device)
        return
    run_federated(cfg, seed, record, device=device)
    target = experiments.experiments("compare")["targets"][cfg.dataset]
    record.summary["rounds_to_target"] = rounds_to_target(record.history, target)
    record.summary["target"] = target


def run_personalised(cfg: PersonalisedConfig, seed: int, record: RunRecord,
                     device: torch.device | str = "cpu") -> None:
    """A run of the personalisation panel: Per-FedAvg's own run (`papers.perfedavg.method.train`: the engine's
    round loop with the method under the personalised evaluation), which logs pers_acc_0 / pers_acc_1 /
    pers_acc_{A} per evaluation and their final values (final_pers_acc_*, final_adapt_gain) in the summary."""
    from papers.perfedavg.method import train   # registers Per-FedAvg's methods, model and users' split

    import_paper_methods()                      # pFedHN's server, registered by papers/pfedhn/method.py
    train(cfg, seed, record, device)
