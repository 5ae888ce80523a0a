"""One FedDF-paper run: the engine's round loop plus the summary scalars of Tables 1 and 2."""
from __future__ import annotations

import numpy as np
import torch

from common.fl.engine import rounds_to_target, run_federated
from common.results import RunRecord
from papers.feddf import method as _method  # noqa: F401  (registers feddf, feddf_hetero, fedavg_hetero)
from papers.feddf import partition as _partition  # noqa: F401  (registers dirichlet_feddf)


def capped_rounds_to_target(history: list[dict], target: float, rounds: int, key: str = "test_acc") -> float:
    """The first round whose accuracy reaches `target`; rounds + 1 when it never does (shown as '> R')."""
    found = rounds_to_target(history, target, key)
    return found if np.isfinite(found) else float(rounds + 1)


def run(cfg, seed: int, record: RunRecord, device: torch.device | str = "cpu") -> None:
    run_federated(cfg, seed, record, device=device)
    hist = record.history
    keys = ["test_acc"] + [f"test_acc_{a}" for a in cfg.feddf_archs if f"test_acc_{a}" in hist[-1]]
    for key in keys:
        suffix = key.removeprefix("test_acc")
        accs = np.array([h[key] for h in hist])
        record.summary[f"final_test_acc{suffix}"] = float(accs[-1])
        record.summary[f"best_test_acc{suffix}"] = float(accs.max())
        record.summary[f"mean_test_acc{suffix}"] = float(accs.mean())   # area under the curve / rounds
        record.summary[f"rounds_to_target{suffix}"] = capped_rounds_to_target(hist, cfg.target_acc, cfg.rounds, key)
    if "distill_steps" in hist[-1]:
        record.summary["mean_distill_steps"] = float(np.mean([h["distill_steps"] for h in hist]))
    if "fedavg_test_acc" in hist[-1]:
        gains = [h["test_acc"] - h["fedavg_test_acc"] for h in hist]
        record.summary["mean_distill_gain"] = float(np.mean(gains))
