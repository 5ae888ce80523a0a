"""The teaching comparison's report: the regime check against centrally trained references, the claims, curves
per data set and partition, final accuracy, rounds to target, the partitions, and a reading computed from the
runs. Setting names are `<method>_<panel>_<partition>`; a panel is one data set (PANELS)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from common import data as datasets
from common import experiments, plots
from common.partition import class_counts, partition
from common.report import Report, load_results, mean_std
from papers.compare import PAPER

PAPER_ID = "compare"
PANELS = {"mnist": "MNIST", "fmnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
PARTITION_ORDER = ["iid", "dir0.5", "dir0.1"]
PARTITION_NAMES = {"iid": "IID", "dir0.5": "α=0.5", "dir0.1": "α=0.1"}
METHOD_ORDER = ["central", "fedavg", "fedprox", "fedavgm", "local", "fedntd", "fedgen", "feddf"]
REFERENCE = "ref"          # method label of the regime references (ref_<panel>_full)
FLAT_PT = 0.5              # a reference is flat when its last quarter gains < this over the quarter before


def _split_setting(df: pd.DataFrame) -> pd.DataFrame:
    parts = df["setting"].str.split("_", n=2, expand=True)
    return df.assign(method=parts[0], dataset=parts[1], partition=parts[2])


def _order(present, preferred):
    return [m for m in preferred if m in present] + sorted(set(present) - set(preferred))


def panel_of(setting: str) -> str:
    return setting.split("_")[1]


def for_scale(spec: dict, scale: str) -> dict:
    """The claims whose settings this scale runs, and the regime rows of the panels it runs (the quick scale
    has no CIFAR-10 panel and fewer cells; the other claims are judged at the paper scale)."""
    run = set(experiments.settings(PAPER_ID, scale))
    panels = {panel_of(s) for s in run}
    named = lambda row, keys: [row[k] for k in keys if k in row]  # noqa: E731
    return {**spec, "claims": [c for c in spec.get("claims", []) if set(named(c, "abcd")) <= run],
            "regime": [r for r in spec.get("regime", [])
                       if {panel_of(s) for s in named(r, ("setting", "reference_setting"))} <= panels]}


def paired(summary: pd.DataFrame, a: str, b: str, metric: str = "final_test_acc") -> pd.Series:
    """Per-seed a − b of `metric` in points (the same seed: same partition, initial model and client sampling)."""
    get = lambda s: summary[summary["setting"] == s].set_index("seed")[metric].astype(float)  # noqa: E731
    return (100 * (get(a) - get(b))).dropna()


def describe(diff: pd.Series, better: str = "higher", worse: str = "lower") -> str:
    """'+x ± sd pt (higher | lower | level within the seed spread)' by the symmetric rule of the claims."""
    if diff.empty:
        return "not run"
    mean, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    word = better if mean - sd > 0 else worse if mean + sd < 0 else "level within the seed spread"
    return f"{mean:+.2f} ± {sd:.2f} pt ({word})"


def convergence(hist: pd.DataFrame, setting: str) -> dict:
    """Mean curve accuracy (%) over the last quarter of rounds and the quarter before (test-subset points only,
    the final full-test point left out), and whether the gain between them is under FLAT_PT."""
    df = hist[hist["setting"] == setting]
    last = df["round"].max()
    df = df[df["round"] < last]
    q = last / 4
    late = 100 * df[df["round"] > last - q]["test_acc"].mean()
    before = 100 * df[(df["round"] > last - 2 * q) & (df["round"] <= last - q)]["test_acc"].mean()
    return {"rounds": int(last), "late": late, "before": before, "flat": bool(late - before < FLAT_PT)}


def fig_curves(hist: pd.DataFrame, panel: str):
    df = hist[hist["dataset"] == panel]
    central = df[df["method"] == "central"]
    df = pd.concat([df[df["method"] != "central"]] +
                   [central.assign(partition=p) for p in PARTITION_ORDER if p in set(df["partition"])])
    df = df.assign(test_acc=100 * df["test_acc"])
    return plots.curves(df, "round", "test_acc", hue="method", col="partition",
                        hue_order=_order(set(df["method"]), METHOD_ORDER), ylabel="test accuracy (%)",
                        col_order=_order(set(df["partition"]), PARTITION_ORDER),
                        title=f"{PANELS.get(panel, panel)}: global-model test accuracy per round (mean ± std over "
                              "seeds; the last point is the full test set; central = all data in one place)")


def fig_references(hist: pd.DataFrame):
    df = hist[hist["method"] == REFERENCE]
    df = df.assign(test_acc=100 * df["test_acc"], panel=df["dataset"].map(lambda p: PANELS.get(p, p)))
    return plots.curves(df, "round", "test_acc", hue="panel", ylabel="test accuracy (%)",
                        title="Regime references: the same model trained centrally on the full training set")


def table_final(summary: pd.DataFrame, panel: str) -> pd.DataFrame:
    df = summary[summary["dataset"] == panel]
    rows = []
    for method in _order(set(df["method"]), METHOD_ORDER):
        row = {"method": method}
        for p in _order(set(df["partition"]), PARTITION_ORDER):
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
    order = [f"{d} · {p}" for d in PANELS for p in PARTITION_ORDER if f"{d} · {p}" in set(df["panel"])]
    fig = plots.bars(df, "panel", "acc", hue="method", order=order, ylabel="final test accuracy (%)",
                     title="What label skew costs each method (full test set; dots: seeds)")
    sns.move_legend(fig.axes[0], "upper left", bbox_to_anchor=(1, 1))
    return fig


def fig_partitions(cfg: dict, seed: int):
    """Client-by-class counts of the MNIST partitions the runs used (seed `seed`, the runs' Dirichlet knobs)."""
    train = datasets.load("mnist", "train")
    if cfg["train_subset"]:
        gen = torch.Generator().manual_seed(seed)
        train = train.subset(torch.randperm(len(train), generator=gen)[:cfg["train_subset"]])
    labels = train.y.numpy()
    knobs = {"min_size": cfg["min_client_size"], "cap": cfg["dirichlet_cap"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, (name, kind, params) in zip(axes, [("IID", "iid", {}),
                                               ("Dirichlet α=0.5", "dirichlet", {"alpha": 0.5, **knobs}),
                                               ("Dirichlet α=0.1", "dirichlet", {"alpha": 0.1, **knobs})]):
        parts = partition(kind, labels, cfg["n_clients"], seed, dataset=f"mnist_n{len(labels)}", **params)
        sns.heatmap(class_counts(parts, labels, 10), ax=ax, cmap="viridis", cbar=ax is axes[-1])
        ax.set(title=name, xlabel="class", ylabel="client")
    fig.suptitle(f"MNIST partitions over {cfg['n_clients']} clients (seed {seed}); the other panels' splits look alike")
    return fig


def setup_text(spec: dict, cfg: dict, seeds: list[int], panels: list[str], partitions: list[str]) -> str:
    local = "steps" if cfg["local_steps"] else "epochs"
    quick_note = ("" if "cifar10" in panels else
                  "\n**Panels at this scale.** MNIST and Fashion-MNIST. CIFAR-10 is the paper scale's second panel: "
                  "on 2 CPU cores its FedAvg could not come near a centrally trained reference within the quick "
                  "report's budget (issue #10), and claims about methods near convergence need well-trained "
                  "baselines, so the quick scale uses Fashion-MNIST (the same model and federation) in its place.\n")
    return f"""
{cfg['n_clients']} clients, {int(cfg['participation'] * 100)} % of them per round, {cfg['rounds']} rounds of
{cfg["local_steps"] or cfg["local_epochs"]} local {local} of SGD (batch {cfg['batch_size']}, lr {cfg['lr']},
momentum {cfg['momentum']}), model `{cfg['model']}`, {cfg['train_subset'] or 'all the'} training images split over the
clients, seeds {seeds}. Partitions: {', '.join(PARTITION_NAMES.get(p, p) for p in partitions)} (α: Dirichlet label
skew, Hsu et al. 2019; the uncapped split{' with the cap' if cfg['dirichlet_cap'] else ''}, redrawn until each client holds ≥ {cfg['min_client_size']}
samples). Every method sees the same partition, the same initial model and the same sampled clients for a given
seed. *central* trains one model on all the training data (per "round", as many SGD steps as the sampled clients
of a federated round take together: the same budget); *local* (where run) trains each client alone on 80 % of
its data (20 % is its own test split). Targets for "rounds to target":
{', '.join(f'{k} {100 * v:.0f} %' for k, v in spec['targets'].items())}.
{quick_note}
**Evaluation protocol.** {spec['protocol']}
"""


def regime_text(hist: pd.DataFrame, summary: pd.DataFrame) -> str:
    lines = []
    for setting in sorted(set(summary[summary["method"] == REFERENCE]["setting"])):
        c = convergence(hist, setting)
        final = 100 * summary[summary["setting"] == setting]["final_test_acc"].mean()
        state = "flat: converged" if c["flat"] else f"still rising (≥ {FLAT_PT} pt): NOT converged"
        lines.append(f"- `{setting}` ({c['rounds']} rounds): final {final:.2f} % on the full test set; curve mean "
                     f"{c['late']:.2f} % over the last quarter of rounds against {c['before']:.2f} % over the "
                     f"quarter before ({c['late'] - c['before']:+.2f} pt): {state}.")
    if not lines:
        return "No reference was run at this scale."
    return ("Did each reference converge? (the curve of `figures/references.png`, test-subset points)\n\n"
            + "\n".join(lines))


def reading(summary: pd.DataFrame, panels: list[str]) -> str:
    """Every sentence's number comes from the runs (paired by seed, mean ± std over seeds)."""
    out = []
    for panel in panels:
        s = lambda m, p: f"{m}_{panel}_{p}"  # noqa: E731
        have = set(summary["setting"])
        name = PANELS.get(panel, panel)
        fedavg = ", ".join(f"{PARTITION_NAMES[p]} {mean_std(summary[summary['setting'] == s('fedavg', p)]['final_test_acc'], 100)} %"
                           for p in PARTITION_ORDER if s("fedavg", p) in have)
        out.append(f"**{name}.**\n")
        out.append(f"- *Heterogeneity.* FedAvg's final accuracy: {fedavg}. IID − α=0.1: "
                   f"{describe(paired(summary, s('fedavg', 'iid'), s('fedavg', 'dir0.1')))}; central (same budget) "
                   f"− FedAvg IID: {describe(paired(summary, s('central', 'iid'), s('fedavg', 'iid')))}.")
        if s("fedprox", "dir0.1") in have:
            out.append(f"- *FedProx* adds μ/2‖w − w_global‖² to each client's loss (Li et al. 2020); at μ = 0.01 "
                       f"and α=0.1, FedProx − FedAvg: {describe(paired(summary, s('fedprox', 'dir0.1'), s('fedavg', 'dir0.1')))}.")
        moms = "; ".join(f"{PARTITION_NAMES[p]} {describe(paired(summary, s('fedavgm', p), s('fedavg', p)))}"
                         for p in PARTITION_ORDER if s("fedavgm", p) in have)
        if moms:
            out.append(f"- *FedAvgM* (server momentum β = 0.9, Hsu et al. 2019) − FedAvg: {moms}.")
        if s("local", "dir0.1") in have:
            own = summary[summary["setting"] == s("local", "dir0.1")]["final_personal_acc"]
            out.append(f"- *Local-only* at α=0.1: {mean_std(own, 100)} % on the clients' own test splits, and on the "
                       f"global test set FedAvg − local: "
                       f"{describe(paired(summary, s('fedavg', 'dir0.1'), s('local', 'dir0.1')))}.")
        papers = "; ".join(f"{m} {describe(paired(summary, s(m, 'dir0.1'), s('fedavg', 'dir0.1')))}"
                           for m in ("fedntd", "fedgen", "feddf") if s(m, "dir0.1") in have)
        if papers:
            out.append(f"- *The papers' methods* − FedAvg at α=0.1: {papers}.")
        out.append("")
    return "\n".join(out)


def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, summary = load_results(PAPER_ID, results, scale)
    skipped = len(spec.get("claims", []))
    spec = for_scale(spec, scale)
    skipped -= len(spec["claims"])
    hist, summary = _split_setting(hist), _split_setting(summary)
    runs = [r for r in records if not r.setting.startswith(REFERENCE + "_")]
    cfg = runs[0].config
    federated = summary[summary["method"] != REFERENCE]
    panels = _order(set(federated["dataset"]), list(PANELS))
    rep = Report(out, "Federated baselines side by side (the teaching comparison)", PAPER, scale, PAPER_ID,
                 [r.commit for r in records])
    rep.section("Setup", setup_text(spec, cfg, sorted({r.seed for r in runs}), panels,
                                        _order(set(federated["partition"]), PARTITION_ORDER)))
    rep.regime(spec, summary)
    rep.text(regime_text(hist, summary))
    if (hist["method"] == REFERENCE).any():
        rep.figure("references", fig_references(hist), "Regime references: accuracy per round of the centrally "
                   "trained models (flat at the end = converged)")
    rep.section("Claims (what a student should see)", """
Every claim is a `check`: the textbook controls (skew costs accuracy, central bounds FedAvg, local-only is worse
globally, small-μ FedProx ≈ FedAvg), and each paper's method against FedAvg in *this comparison's* setting
(20 clients, this scale's model and local steps, the same Dirichlet split for every method), which is none of
those papers' own settings (FedNTD, FedGen and FedDF are judged on their own protocols in their own reports;
FedAvgM, Hsu et al. 2019, has no report here). A paper claim would be counted only in that paper's setting.
""" + (f"{skipped} claims of `experiments.yaml` (the CIFAR-10 panel, and cells this scale does not run) are judged "
         "at the paper scale only." if skipped else ""))
    rep.add_claims(spec.get("claims", []), summary)
    rep.section("Results")
    hist, summary = hist[hist["method"] != REFERENCE], federated
    for panel in panels:
        rep.table(f"final_{panel}", table_final(summary, panel),
                  f"{PANELS.get(panel, panel)}: final test accuracy (full test set, mean ± std over seeds) and rounds "
                  "to target (curve points)")
        rep.figure(f"curves_{panel}", fig_curves(hist, panel), f"{PANELS.get(panel, panel)}: learning curves per partition")
    rep.figure("final_accuracy", fig_final_bars(summary), "Final accuracy per data set and partition")
    rep.figure("partitions", fig_partitions(cfg, 0), "Client-by-class sample counts of the three partitions")
    rep.section("Reading the results", "Computed from the runs above: differences are paired by seed (mean ± std "
                "over seeds, in points of final test accuracy); *higher*/*lower* only where the mean is more than one "
                "std from zero.\n\n" + reading(summary, panels))
    rep.write()
