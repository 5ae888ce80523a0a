"""One comparison run: any registered FL method on the shared engine, plus rounds-to-target."""
from __future__ import annotations

from dataclasses import dataclass

from common import experiments
from common.fl import FLConfig, run_federated
from common.fl.engine import rounds_to_target
from common.results import RunRecord


@dataclass(frozen=True)
class CompareConfig(FLConfig):
    """The engine's own setting; the comparison adds no knobs of its own."""


def run(cfg: CompareConfig, seed: int, record: RunRecord) -> None:
    run_federated(cfg, seed, record)
    target = experiments.experiments("compare")["targets"][cfg.dataset]
    record.summary["rounds_to_target"] = rounds_to_target(record.history, target)
    record.summary["target"] = target
