"""One comparison run: any registered FL method on the shared engine, plus rounds-to-target.

The baselines live in common/fl; each FL paper registers its own method (and says which config dataclass
carries its knobs through the method's `config_cls`), so the comparison runs them unchanged."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from common import experiments
from common.fl import METHODS, FLConfig, get_method, run_federated
from common.fl.engine import rounds_to_target
from common.results import RunRecord


@dataclass(frozen=True)
class CompareConfig(FLConfig):
    """The engine's own setting; the comparison adds no knobs of its own."""


def import_paper_methods() -> None:
    """Import every paper's method module so its methods register themselves."""
    for module in sorted(Path(__file__).resolve().parent.parent.glob("*/method.py")):
        if module.parent.name != "compare":
            importlib.import_module(f"papers.{module.parent.name}.method")


def config_class(overrides: dict) -> type:
    """The config dataclass of the run's method: the paper's own (with its knobs) or the engine's."""
    name = overrides.get("method", "fedavg")
    if name not in METHODS:
        import_paper_methods()
    return getattr(get_method(name), "config_cls", CompareConfig)


def run(cfg: FLConfig, seed: int, record: RunRecord, device: torch.device | str = "cpu") -> None:
    run_federated(cfg, seed, record, device=device)
    target = experiments.experiments("compare")["targets"][cfg.dataset]
    record.summary["rounds_to_target"] = rounds_to_target(record.history, target)
    record.summary["target"] = target
