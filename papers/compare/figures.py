"""The teaching comparison's report: curves per data set and partition, final accuracy, rounds to target,
and the partitions themselves."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from common import data as datasets
from common import plots
from common.partition import class_counts, partition
from common.report import Report, load_results, mean_std
from papers.compare import PAPER

PAPER_ID = "compare"
PARTITION_ORDER = ["iid", "dir0.5", "dir0.1"]
METHOD_ORDER = ["central", "fedavg", "fedprox", "fedavgm", "local", "fedntd", "fedgen", "feddf"]


def _split_setting(df: pd.DataFrame) -> pd.DataFrame:
    parts = df["setting"].str.split("_", n=2, expand=True)
    return df.assign(method=parts[0], dataset=parts[1], partition=parts[2])


def _order(present, preferred):
    return [m for m in preferred if m in present] + sorted(set(present) - set(preferred))


def fig_curves(hist: pd.DataFrame, dataset: str):
    df = hist[hist["dataset"] == dataset]
    central = df[df["method"] == "central"]
    df = pd.concat([df[df["method"] != "central"]] +
                   [central.assign(partition=p) for p in PARTITION_ORDER if p in set(df["partition"])])
    df = df.assign(test_acc=100 * df["test_acc"])
    return plots.curves(df, "round", "test_acc", hue="method", col="partition",
                        hue_order=_order(set(df["method"]), METHOD_ORDER), ylabel="test accuracy (%)",
                        col_order=_order(set(df["partition"]), PARTITION_ORDER),
                        title=f"{dataset}: global-model test accuracy per round (mean ± std over seeds; "
                              "central = all data in one place)")


def table_final(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    df = summary[summary["dataset"] == dataset]
    rows = []
    for method in _order(set(df["method"]), METHOD_ORDER):
        row = {"method": method}
        for p in PARTITION_ORDER:
            cell = df[(df["method"] == method) & (df["partition"] == (p if method != "central" else "iid"))]
            row[f"final acc (%) {p}"] = mean_std(cell["final_test_acc"], 100) if len(cell) else "-"
            rounds = cell["rounds_to_target"].astype(float) if len(cell) else pd.Series(dtype=float)
            reached = rounds[np.isfinite(rounds)] if len(rounds) else rounds
            row[f"rounds to target {p}"] = ("-" if not len(cell) else
                                            f"{reached.mean():.1f} ({len(reached)}/{len(rounds)} seeds)"
                                            if len(reached) else f"not reached (0/{len(rounds)})")
        rows.append(row)
    return pd.DataFrame(rows)


def fig_final_bars(summary: pd.DataFrame):
    df = summary[summary["method"] != "central"].assign(acc=100 * summary["final_test_acc"])
    df = df.assign(panel=df["dataset"] + " · " + df["partition"])
    order = [f"{d} · {p}" for d in ("mnist", "cifar10") for p in PARTITION_ORDER if f"{d} · {p}" in set(df["panel"])]
    return plots.bars(df, "panel", "acc", hue="method", order=order, ylabel="final test accuracy (%)",
                      title="What label skew costs each method (dots: seeds)")


def fig_partitions(cfg: dict, seed: int):
    """Client-by-class counts of the partitions the runs used (seed `seed`)."""
    train = datasets.load("mnist", "train")
    if cfg["train_subset"]:
        gen = torch.Generator().manual_seed(seed)
        train = train.subset(torch.randperm(len(train), generator=gen)[:cfg["train_subset"]])
    labels = train.y.numpy()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, (name, kind, params) in zip(axes, [("IID", "iid", {}),
                                               ("Dirichlet α=0.5", "dirichlet", {"alpha": 0.5, "min_size": 10}),
                                               ("Dirichlet α=0.1", "dirichlet", {"alpha": 0.1, "min_size": 10})]):
        parts = partition(kind, labels, cfg["n_clients"], seed, dataset=f"mnist_n{len(labels)}", **params)
        counts = class_counts(parts, labels, 10)
        sns.heatmap(counts, ax=ax, cmap="viridis", cbar=ax is axes[-1])
        ax.set(title=name, xlabel="class", ylabel="client")
    fig.suptitle(f"MNIST partitions over {cfg['n_clients']} clients (seed {seed}); CIFAR-10 splits look alike")
    return fig


def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, summary = load_results(PAPER_ID, results, scale)
    hist, summary = _split_setting(hist), _split_setting(summary)
    cfg = records[0].config
    rep = Report(out, "Federated baselines side by side (the teaching comparison)", PAPER, scale, PAPER_ID,
                 [r.commit for r in records])
    rep.section("Setup", f"""
{cfg['n_clients']} clients, {int(cfg['participation'] * 100)} % of them per round, {cfg['rounds']} rounds of
{cfg["local_steps"] or cfg["local_epochs"]} local {"steps" if cfg["local_steps"] else "epochs"} of SGD (batch {cfg['batch_size']}, lr {cfg['lr']}, momentum {cfg['momentum']}),
model `{cfg['model']}`, {cfg['train_subset'] or 'all'} training images split over the clients, seeds
{sorted({r.seed for r in records})}. Partitions: IID, and Dirichlet label skew with α = 0.5 and 0.1 (Hsu et al.;
each client ≥ 10 samples). Every method sees the same partition, the same initial model and the same sampled
clients for a given seed. CIFAR-10 uses random crop + flip. *central* trains one model on all the training data
(per "round", as many SGD steps as the sampled clients of a federated round take together); *local* trains each client alone on 80 % of its data (20 % is its own test split).
Targets for "rounds to target": {', '.join(f'{k} {100 * v:.0f} %' for k, v in spec['targets'].items())}.

**Evaluation protocol.** {spec['protocol']}
""")
    rep.section("Claims (what a student should see)")
    rep.add_claims(spec.get("claims", []), summary)
    rep.section("Results")
    for dataset in _order(set(summary["dataset"]), ["mnist", "cifar10"]):
        rep.table(f"final_{dataset}", table_final(summary, dataset),
                  f"{dataset}: final test accuracy (mean ± std over seeds) and rounds to target")
        rep.figure(f"curves_{dataset}", fig_curves(hist, dataset), f"{dataset}: learning curves per partition")
    rep.figure("final_accuracy", fig_final_bars(summary), "Final accuracy per data set and partition")
    rep.figure("partitions", fig_partitions(cfg, 0), "Client-by-class sample counts of the three partitions")
    rep.section("Reading the results", """
- **Heterogeneity costs FedAvg.** The further the clients' label mixes are from each other (IID → α = 0.5 →
  α = 0.1), the slower and lower FedAvg's global model goes: each client's local epochs pull the model towards
  its own few classes, and the average of such models is worse than a model trained on the pooled data
  (*central*).
- **FedProx** keeps local models near the global one (μ/2‖w − w_g‖²). With small μ it behaves like FedAvg,
  which is what the paper's own tables show for short local training.
- **FedAvgM** adds server momentum: it smooths the noisy average across rounds and often recovers part of
  the loss under strong skew, at the price of one more hyper-parameter (β).
- **Local-only** training never communicates: each client is good on its own test split (its own few
  classes) and poor on the global test set; this is the personalisation baseline later papers beat.
""")
    rep.write()
