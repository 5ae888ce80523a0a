"""The teaching comparison's report: the regime check against centrally trained references, the claims, curves
per data set and partition, final accuracy, rounds to target, the partitions, the personalisation panel, and a
reading computed from the runs. Setting names are `<method>_<panel>_<partition>`; a panel is one data set
(PANELS). The personalisation panel's settings are `pers_<method>[_<scale>]` (PERSONAL): Per-FedAvg's setting,
every method evaluated after the same one-step adaptation; they stay out of the other tables and figures."""
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
DATA_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
PARTITION_ORDER = ["iid", "dir0.5", "dir0.1"]
PARTITION_NAMES = {"iid": "IID", "dir0.5": "α=0.5", "dir0.1": "α=0.1"}
METHOD_ORDER = ["central", "fedavg", "fedprox", "fedavgm", "local", "fedntd", "fedgen", "feddf"]
REFERENCE = "ref"          # method label of the regime references (ref_<panel>_full)
PERSONAL = "pers"          # prefix of the personalisation panel's settings (pers_<method>[_<scale>])
PERS_METHODS = {"fedavg": "FedAvg", "perfedavg_fo": "Per-FedAvg (FO)", "perfedavg_hf": "Per-FedAvg (HF)",
                "pfedhn": "pFedHN", "local": "Local-only"}   # the panel's methods (a run's `method`), in order
PERS_WHEN = {"final_pers_acc_0": "before adaptation", "final_pers_acc_1": "after 1 step"}
PERS_CLAIMS = ("The personalisation panel's checks (`pers_*`) compare methods in Per-FedAvg's setting "
               "instead, every one judged after the same one-step adaptation (see its section). ")
FLAT_PT = 0.5              # a reference is flat when its last quarter gains < this over the quarter before


def _split_setting(df: pd.DataFrame) -> pd.DataFrame:
    parts = df["setting"].str.split("_", n=2, expand=True)
    return df.assign(method=parts[0], dataset=parts[1], partition=parts[2])


def _order(present, preferred):
    return [m for m in preferred if m in present] + sorted(set(present) - set(preferred))


def panel_of(setting: str) -> str:
    return setting.split("_")[1]


def is_personal(setting: str) -> bool:
    """A setting of the personalisation panel (not one of the data-set panels)."""
    return setting.startswith(PERSONAL + "_")


def for_scale(spec: dict, scale: str) -> dict:
    """The claims whose settings this scale runs, and the regime rows of the panels it runs (the quick scale
    has no CIFAR-10 panel and fewer cells; the other claims are judged at the paper scale)."""
    run = set(experiments.settings(PAPER_ID, scale))
    panels = {panel_of(s) for s in run if not is_personal(s)}
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


# ------------------------------------------------------------------------------------------ personalisation
def pers_settings(records) -> dict:
    """{method: setting} of the personalisation panel's runs (the method from each run's config)."""
    return {r.config["method"]: r.setting for r in records if is_personal(r.setting)}


def pers_label(method: str) -> str:
    return PERS_METHODS.get(method, method)


def table_personalisation(summary: pd.DataFrame, settings: dict, extra_steps: int = 5) -> pd.DataFrame:
    """Per method: personalised accuracy before adaptation, after 1 step (the panel's metric), the gain of the
    step, after `extra_steps` steps, the paired difference to FedAvg + 1 step, and the global model on the
    official test set (mean ± std over seeds)."""
    extra = f"final_pers_acc_{extra_steps}"
    rows = []
    for method in _order(set(settings), list(PERS_METHODS)):
        setting = settings[method]
        cell = summary[summary["setting"] == setting]
        get = lambda key: mean_std(cell[key], 100) if key in cell else "-"  # noqa: E731
        vs = ("-" if method == "fedavg" or "fedavg" not in settings else
              describe(paired(summary, setting, settings["fedavg"], "final_pers_acc_1")))
        rows.append({"method": pers_label(method), "setting": setting, "seeds": len(cell),
                     "before adaptation (%)": get("final_pers_acc_0"),
                     "after 1 step (%)": get("final_pers_acc_1"),
                     "gain of 1 step (pt)": get("final_adapt_gain"),
                     f"after {extra_steps} steps (%)": get(extra),
                     "after 1 step, − FedAvg + 1 step (paired)": vs,
                     "global model, official test set (%)": get("final_test_acc")})
    return pd.DataFrame(rows)


def fig_personalisation(summary: pd.DataFrame, settings: dict):
    """Bars: personalised accuracy before and after the one-step adaptation per method (dots: seeds)."""
    methods = _order(set(settings), list(PERS_METHODS))
    rows = []
    for method in methods:
        cell = summary[summary["setting"] == settings[method]]
        for key, when in PERS_WHEN.items():
            rows += [{"method": pers_label(method), "personalised accuracy": when, "acc": 100 * float(v)}
                     for v in cell[key]]
    df = pd.DataFrame(rows)
    fig = plots.bars(df, "method", "acc", hue="personalised accuracy", order=[pers_label(m) for m in methods],
                     ylabel="personalised accuracy (%)",
                     title="Per-FedAvg's setting: each user's own test split, before and after one step of α")
    low = 5 * np.floor((df["acc"].min() - 2) / 5)   # the differences are a few points: start the axis near
    fig.axes[0].set_ylim(max(0.0, low), 100)
    return fig


def pers_setup_text(cfg: dict, seeds: list[int]) -> str:
    per_round = int(round(cfg["participation"] * cfg["n_clients"]))
    share, held_out = 100 * cfg["dominant_share"], 100 * cfg["client_test_fraction"]
    users, batch = cfg["n_clients"], cfg["batch_size"]
    return f"""
What personalisation buys, in Per-FedAvg's own setting (papers/perfedavg, Fallah et al. 2020), not
the data-set panels': {DATA_NAMES.get(cfg['dataset'], cfg['dataset'])}, {users} users of {cfg['client_samples']} samples, {share:.0f} % of each
user's samples from {cfg['dominant_classes']} classes (the `dominant_classes` split), {held_out:.0f} %
of each of a user's labels held out as its own test split (the same label mix as its training split);
{per_round} users per round, {cfg['rounds']} rounds of τ = {cfg['local_steps']} local steps of batch
{batch}, the MLP `{cfg['model']}`, β = {cfg['lr']} (FedAvg's and Local-only's local SGD step, and
Per-FedAvg's outer step), α = {cfg['inner_lr']}; seeds {seeds}.

**Protocol: every method is adapted the same way** (Per-FedAvg's personalised evaluation,
`papers/perfedavg/method.py` `Personalised`): at the final round each of the {users} users starts from
the global model (Local-only: from its own model), takes ONE SGD step of size α on a batch of {batch}
samples of its own training data, and is tested on its own test split; the accuracies are averaged
over users. *Before adaptation* is the start model on the same test splits. The adaptation batches
depend on the seed, the round and the user only, so every method adapts on the same batches, and no
method is compared adapted against unadapted. FedAvg and Local-only train as usual and are then
adapted (FedAvg + 1 step, Local-only + 1 step); Per-FedAvg trains its model for this one step (it
minimises F(w) = (1/n) Σ_i f_i(w − α∇f_i(w)); FO drops the Hessian term of ∇F, HF approximates it
by a finite difference of gradients). pFedHN (papers/pfedhn, Shamsian et al. 2021; its hypernetwork with the
official code's defaults) visits one user per step for {per_round} × {cfg['rounds']} steps, the same client
visits and local steps; its users start from the networks the hypernetwork generates for them.
"""


def _direction(diff: pd.Series) -> str:
    """'higher' / 'lower' / 'level' by the rule of `describe` (the mean more than one std from zero)."""
    if diff.empty:
        return "not run"
    mean, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    return "higher" if mean - sd > 0 else "lower" if mean + sd < 0 else "level"


GAIN_MEANING = {"higher": ": the signature of a meta-learned initialisation, a model trained to be adapted",
                "lower": ": at this α one step moves FedAvg's model more than Per-FedAvg's",
                "level": ": at this α the two models gain alike from the step"}
LOCAL_MEANING = {"lower": ": a user's own ~{own} training images are not enough, collaboration pays even "
                          "when every user adapts",
                 "higher": ": here each user's own model beats the shared one even after the adaptation "
                           "step (collaboration does not pay in this run)"}


def pers_reading(summary: pd.DataFrame, settings: dict, cfg: dict) -> str:
    """Sentences computed from the panel's runs (paired by seed, mean ± std over seeds); every interpretation
    follows the sign of the numbers it interprets."""
    s = lambda m: settings.get(m, f"{PERSONAL}_{m}_missing")  # noqa: E731
    acc = lambda m, k="final_pers_acc_1": mean_std(summary[summary["setting"] == s(m)][k], 100)  # noqa: E731
    diff = lambda a, k="final_pers_acc_1": paired(summary, s(a), s("fedavg"), k)  # noqa: E731
    adapted = {"fedavg": "FedAvg + 1 step", "local": "Local-only + 1 step"}
    out = ["- *After one step* (the panel's metric): "
           + ", ".join(f"{adapted.get(m, pers_label(m))} {acc(m)} %" for m in PERS_METHODS if m in settings)
           + "."]
    metas = [m for m in ("perfedavg_fo", "perfedavg_hf") if m in settings]
    if metas and "fedavg" in settings:
        out.append("- *What meta-learning buys over FedAvg + 1 step* (after one step, paired): "
                   + "; ".join(f"{pers_label(m)} − FedAvg + 1 step {describe(diff(m))}" for m in metas) + ".")
    if "perfedavg_hf" in settings and "fedavg" in settings:
        gain = diff("perfedavg_hf", "final_adapt_gain")
        out.append(f"- *Before adaptation* FedAvg's model scores {acc('fedavg', 'final_pers_acc_0')} % and "
                   f"Per-FedAvg (HF)'s {acc('perfedavg_hf', 'final_pers_acc_0')} %; one step gains FedAvg "
                   f"{acc('fedavg', 'final_adapt_gain')} pt and HF {acc('perfedavg_hf', 'final_adapt_gain')} "
                   f"pt (HF − FedAvg: {describe(gain)}){GAIN_MEANING.get(_direction(gain), '')}.")
    if "pfedhn" in settings and "fedavg" in settings:
        out.append(f"- *pFedHN*: each user's generated network scores {acc('pfedhn', 'final_pers_acc_0')} % "
                   f"before adaptation and {acc('pfedhn')} % after one step; pFedHN + 1 step − FedAvg + 1 step "
                   f"{describe(diff('pfedhn'))}.")
    if "local" in settings and "fedavg" in settings:
        local = diff("local")
        own = int(round(cfg["client_samples"] * (1 - cfg["client_test_fraction"])))
        meaning = LOCAL_MEANING.get(_direction(local), "").format(own=own)
        out.append(f"- *Collaboration*: Local-only + 1 step − FedAvg + 1 step {describe(local)}{meaning}.")
    return "\n".join(out)


def personalisation_section(rep: Report, records, summary: pd.DataFrame) -> None:
    """The personalisation panel: its setup and protocol, one table, one figure, a reading from the runs."""
    settings = pers_settings(records)
    if not settings:
        return
    personal = [r for r in records if is_personal(r.setting)]
    first = next((r for r in personal if r.config["method"] == "fedavg"), personal[0])   # the panel's rounds
    seeds = sorted({r.seed for r in records if is_personal(r.setting)})
    rep.section("Personalisation: what Per-FedAvg buys (its setting, one adaptation step for every method)",
                pers_setup_text(first.config, seeds))
    rep.table("personalisation", table_personalisation(summary, settings, first.config["adapt_extra_steps"]),
              "Personalised accuracy per method in Per-FedAvg's setting, before and after one SGD step of α "
              "on each user's own data (users' own test splits, mean over users; mean ± std over seeds; the "
              "paired difference to FedAvg + 1 step, higher/lower only beyond one std; the global model on "
              "the official test set for contrast, Local-only: the mean over the users' own models)")
    rep.figure("personalisation", fig_personalisation(summary, settings),
               "Personalised accuracy before and after the one-step adaptation, per method (bars: mean over "
               "seeds, ± std; dots: seeds; the axis does not start at 0)")
    rep.text("Computed from the runs (paired by seed, mean ± std over seeds, in points; *higher*/*lower* "
             "only where the mean is more than one std from zero):\n\n"
             + pers_reading(summary, settings, first.config))


def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, summary = load_results(PAPER_ID, results, scale)
    skipped = len(spec.get("claims", []))
    spec = for_scale(spec, scale)
    skipped -= len(spec["claims"])
    hist, summary = _split_setting(hist), _split_setting(summary)
    runs = [r for r in records if not r.setting.startswith(REFERENCE + "_") and not is_personal(r.setting)]
    cfg = runs[0].config
    personal = summary[summary["method"] == PERSONAL]
    federated = summary[~summary["method"].isin([REFERENCE, PERSONAL])]
    panels = _order(set(federated["dataset"]), list(PANELS))
    rep = Report(out, "Federated baselines side by side (the teaching comparison)", PAPER, scale, PAPER_ID,
                 records)
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
""" + (PERS_CLAIMS if any(is_personal(c["a"]) for c in spec["claims"]) else "")
      + (f"{skipped} claims of `experiments.yaml` (the CIFAR-10 panel, and cells this scale does not run) are "
         "judged at the paper scale only." if skipped else ""))
    rep.add_claims(spec.get("claims", []), summary, spec)
    rep.section("Results")
    hist, summary = hist[~hist["method"].isin([REFERENCE, PERSONAL])], federated
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
    personalisation_section(rep, records, personal)
    rep.write()
