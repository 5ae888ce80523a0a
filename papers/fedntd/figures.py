"""FedNTD's report: one function per table or figure, and `report` that assembles them."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from common import experiments, plots
from common.fl.engine import Federation
from common.partition import class_counts
from common.report import Report, aggregate, load_results
from papers.fedntd import PAPER
from papers.fedntd.config import FedNTDConfig

PAPER_ID = "fedntd"
METHOD_LABELS = {"central": "Central", "fedavg": "FedAvg", "fedprox": "FedProx", "fedavgm": "FedAvgM",
                 "fedlsd": "FedLSD", "fedntd": "FedNTD"}
# the splits are the released code's: sharding_partition (per class) and lda_partition (Dirichlet with its cap)
PARTITION_LABELS = {"ref": "centralised (round = 1 epoch)", "iid": "IID", "s2": "sharding s=2",
                    "a01": "capped Dirichlet α=0.1", "a05": "capped Dirichlet α=0.5"}
FORGETTING = {"official_": "official measure: classes weighted (1 − p_c)/(C − 1), clients by size",
              "": "ours: classes the client holds no sample of"}
METHOD_ORDER = list(METHOD_LABELS.values())


def split_setting(setting: str) -> tuple[str, str]:
    """'fedntd_s2_tau3' -> ('FedNTD (tau3)', 'sharding s=2')."""
    method, part, *extra = setting.split("_")
    extras = [{"tau3": "τ=3"}.get(e, e) for e in extra]
    label = METHOD_LABELS.get(method, method) + (f" ({', '.join(extras)})" if extras else "")
    return label, PARTITION_LABELS.get(part, part)


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Adds method and partition labels; rows in PARTITION_LABELS' order (seaborn's panel order)."""
    parsed = df["setting"].map(split_setting)
    rank = {p: i for i, p in enumerate(PARTITION_LABELS.values())}
    out = df.assign(method=parsed.str[0], partition=parsed.str[1])
    return out.iloc[np.argsort(out["partition"].map(rank).fillna(99).to_numpy(), kind="stable")]


def order_of(values) -> list[str]:
    present = list(dict.fromkeys(values))
    return [m for m in METHOD_ORDER if m in present] + [m for m in present if m not in METHOD_ORDER]


def table_accuracy(summary: pd.DataFrame) -> pd.DataFrame:
    """Global test accuracy (%) per method x partition and the forgetting probe, mean ± std over seeds."""
    cols = ["last5_test_acc", "final_test_acc", "best_test_acc", "official_out_before", "official_out_after",
            "out_before", "out_after", "in_after"]
    cols = [c for c in cols if c in summary]
    out = aggregate(summary, cols, scale=100, digits=1)
    parsed = out["setting"].map(split_setting)
    out.insert(1, "method", parsed.str[0])
    out.insert(2, "partition", parsed.str[1])
    return out.rename(columns={"last5_test_acc": "acc, last 5 rounds (%)", "final_test_acc": "final acc (%)",
                               "best_test_acc": "best acc (%)",
                               "official_out_before": "out-of-dist acc, official, before (%)",
                               "official_out_after": "out-of-dist acc, official, after (%)",
                               "out_before": "out-of-local acc, ours, before (%)",
                               "out_after": "out-of-local acc, ours, after (%)", "in_after": "in-local acc, after (%)"})


def table_gains(summary: pd.DataFrame) -> pd.DataFrame:
    """FedNTD − FedAvg (and FedLSD − FedAvg) per partition, paired by seed, in points."""
    rows = []
    for part, label in PARTITION_LABELS.items():
        base = summary[summary["setting"] == f"fedavg_{part}"].set_index("seed")["last5_test_acc"]
        for method in ("fedntd", "fedlsd", "fedprox", "fedavgm"):
            other = summary[summary["setting"] == f"{method}_{part}"].set_index("seed")["last5_test_acc"]
            d = (other - base).dropna() * 100
            if len(d):
                rows.append({"partition": label, "method − FedAvg": METHOD_LABELS[method],
                             "gain (pt)": f"{d.mean():+.1f} ± {d.std(ddof=1) if len(d) > 1 else 0:.1f}",
                             "seeds": len(d)})
    return pd.DataFrame(rows)


def fig_learning_curves(hist: pd.DataFrame):
    df = tidy(hist).assign(test_acc=lambda d: 100 * d["test_acc"])
    return plots.curves(df, "round", "test_acc", hue="method", col="partition", ylabel="global test accuracy (%)",
                        hue_order=order_of(df["method"]),
                        title="Global model accuracy per round (mean ± std over seeds)")


def fig_forgetting(summary: pd.DataFrame, prefix: str):
    """Out-of-local-class accuracy of the received global model and of the client models after training,
    by the official measure (prefix "official_") or ours (prefix "")."""
    df = tidy(summary)
    before, after = f"{prefix}out_before", f"{prefix}out_after"
    df = df.melt(id_vars=["method", "partition", "seed"], value_vars=[before, after],
                 var_name="when", value_name="acc").dropna()
    df = df.assign(acc=100 * df["acc"], when=df["when"].map({before: "global model (before)",
                                                             after: "after local training"}))
    parts = [p for p in PARTITION_LABELS.values() if p in set(df["partition"])]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 3.8), squeeze=False, sharey=True)
    for ax, part in zip(axes[0], parts):
        sub = df[df["partition"] == part]
        order = order_of(sub["method"])
        sns.barplot(data=sub, x="method", y="acc", hue="when", order=order, errorbar="sd", capsize=0.1,
                    alpha=0.85, ax=ax)
        sns.stripplot(data=sub, x="method", y="acc", hue="when", order=order, dodge=True, palette="dark:k",
                      size=3, legend=False, ax=ax)
        ax.set_title(part)
        ax.set_xlabel("")
        ax.set_ylabel("out-of-local accuracy (%)")
        ax.tick_params(axis="x", rotation=30)
        if ax is axes[0][-1]:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), title="")
        else:
            ax.get_legend().remove()
    fig.suptitle(f"Forgetting outside the local distribution, {FORGETTING[prefix]} (sampled clients, probed "
                 "rounds, seeds as dots)", y=1.03)
    return fig


def fig_forgetting_rounds(hist: pd.DataFrame):
    """Out-of-local-class accuracy after local training (official measure), per probed round."""
    df = tidy(hist)
    if "official_out_after" not in df:
        return None
    df = df.dropna(subset=["official_out_after"]).assign(acc=lambda d: 100 * d["official_out_after"])
    return plots.curves(df, "round", "acc", hue="method", col="partition", hue_order=order_of(df["method"]),
                        ylabel="out-of-dist acc after training (%)",
                        title="Out-of-distribution accuracy of the client models across rounds (official measure)")


def fig_class_accuracy(hist: pd.DataFrame, settings: list[str]):
    """Per-class accuracy of the global model across rounds (mean over seeds), one panel per setting."""
    cols = sorted([c for c in hist if c.startswith("class_acc_")], key=lambda c: int(c.rsplit("_", 1)[1]))
    present = [s for s in settings if s in set(hist["setting"])]
    fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], present):
        mean = hist[hist["setting"] == setting].groupby("round")[cols].mean() * 100
        sns.heatmap(mean.T.values, ax=ax, vmin=0, vmax=100, cmap="magma", cbar=ax is axes[0][-1],
                    xticklabels=max(1, len(mean) // 5), yticklabels=range(len(cols)))
        ax.set_xticks(np.arange(0, len(mean), max(1, len(mean) // 5)) + 0.5)
        ax.set_xticklabels(mean.index[::max(1, len(mean) // 5)])
        method, part = split_setting(setting)
        ax.set_title(f"{method}, {part}")
        ax.set_xlabel("round")
        ax.set_ylabel("class")
    fig.suptitle("Global model per-class test accuracy (%) across rounds", y=1.03)
    return fig


def fig_partitions(records) -> dict:
    """Client-by-class counts of seed 0's partition for each partition setting."""
    figs = {}
    for part, label in PARTITION_LABELS.items():
        rec = next((r for r in records if r.setting == f"fedavg_{part}" and r.seed == 0), None)
        if rec is None:
            continue
        cfg = experiments.build_config(FedNTDConfig, {k: v for k, v in rec.config.items()})
        fed = Federation.build(cfg, rec.seed)
        counts = class_counts(fed.parts, fed.train.y.numpy(), fed.train.num_classes)
        figs[part] = plots.partition_heatmap(counts, f"{cfg.dataset}, {label}, "
                                                     f"{cfg.n_clients} clients (seed 0)")
    return figs


def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, summary = load_results(PAPER_ID, results, scale)
    cfg = next((r.config for r in records if r.setting == "fedavg_s2"), records[0].config)
    rep = Report(out, "FedNTD (Lee et al., NeurIPS 2022): not-true distillation", PAPER, scale, PAPER_ID,
                 records)
    fl = summary[summary["setting"] != "central_ref"]
    rep.section("Setup", f"""
{cfg['dataset'].upper()}, {cfg['train_subset'] or 'all'} training images split over {cfg['n_clients']} clients
({round(cfg['participation'] * cfg['n_clients'])} sampled per round, the same clients for every method at a given
seed), {cfg['rounds']} rounds of {cfg['local_epochs']} local epochs, batch {cfg['batch_size']}, SGD lr {cfg['lr']} ×
{cfg['lr_decay']}^round, momentum {cfg['momentum']} (reset every round), weight decay {cfg['weight_decay']},
augmentation `{cfg['augment']}`; model `{cfg['model']}` (`mlp2nn`: McMahan et al.'s 2NN, 784-200-200-10; `cnn`: the
McMahan CNN, `fedavg_mnist`/`fedavg_cifar`). Partitions as the released code: `sharding_partition` (each class cut
into n·s/C shards, s = 2 per client) and `lda_partition`'s capped Dirichlet split (a client stops receiving
samples at N/n). FedNTD τ = {cfg['ntd_tau']}, β = {cfg['ntd_beta']}; FedLSD τ = {cfg['lsd_tau']}, β =
{cfg['lsd_beta']}; FedProx μ = {cfg['prox_mu']}; FedAvgM β = {cfg['server_momentum']}. `central_ref`: the same model
on the whole training set as one client, 1 epoch per round. Test set: {cfg['test_subset'] or 'the whole official split'}. Seeds {sorted(set(fl['seed']))} (central_ref: seed 0). Mean wall time per federated run:
{fl['wall_time_s'].mean():.0f} s ({len(records)} runs; wall time on a shared machine, where other reports ran at the
same time; not a measurement of the methods' cost).

**Evaluation protocol.** {spec['protocol']}
""")
    rep.paper_and_claims(spec, summary,
                         "Paper vs ours (provenance: [abs] arXiv abstract, [issue#4] the author in Lee-Gihun/FedNTD#4)")
    rep.section("Results")
    rep.table("accuracy", table_accuracy(summary), f"Accuracy and forgetting per setting, mean ± std over seeds ({scale})")
    rep.table("gains", table_gains(summary), "Gain over FedAvg (last-5-round accuracy), paired by seed")
    rep.figure("learning_curves", fig_learning_curves(hist),
               "Global test accuracy per round (full test set), mean ± std over seeds; the centralised reference "
               "per epoch")
    for prefix, name in (("official_", "forgetting"), ("", "forgetting_ours")):
        rep.figure(name, fig_forgetting(summary, prefix),
                   f"Out-of-local-class accuracy before (the global model received) and after local training, "
                   f"{FORGETTING[prefix]}")
    fig = fig_forgetting_rounds(hist)
    if fig is not None:
        rep.figure("forgetting_rounds", fig, "Out-of-distribution accuracy after local training (official measure), "
                   "per probed round")
    rep.figure("class_accuracy", fig_class_accuracy(hist, ["fedavg_s2", "fedlsd_s2", "fedntd_s2"]),
               "Per-class accuracy of the global model across rounds (s = 2, mean over seeds)")
    for part, fig in fig_partitions(records).items():
        rep.figure(f"partition_{part}", fig, f"Client-by-class sample counts, {PARTITION_LABELS[part]} (seed 0)")
    rep.section("Reading the results", reading(summary, hist))
    rep.write()


def _mean(summary: pd.DataFrame, setting: str, metric: str) -> float:
    rows = summary[summary["setting"] == setting]
    return float(100 * rows[metric].mean()) if not rows.empty and metric in rows else float("nan")


def paired(summary: pd.DataFrame, a: str, b: str, metric: str = "last5_test_acc") -> pd.Series:
    """Per-seed difference a − b in points."""
    get = lambda s: summary[summary["setting"] == s].set_index("seed")[metric]
    return ((get(a) - get(b)) * 100).dropna()


def reading(summary: pd.DataFrame, hist: pd.DataFrame) -> str:
    """What the numbers say, written from the results (so it stays true at any scale)."""
    m = lambda s, k="last5_test_acc": _mean(summary, s, k)
    have = set(summary["setting"])
    lines = []
    if "central_ref" in have:
        curve = hist[hist["setting"] == "central_ref"].sort_values("round")["test_acc"].to_numpy() * 100
        tail = curve[-5:]
        lines.append(
            f"- **Reference.** The centralised model (`central_ref`) reaches {curve[-1]:.2f} % after {len(curve)} epochs; over its last "
            f"{len(tail)} epochs the accuracy moves within {tail.min():.2f}-{tail.max():.2f} % (a spread of "
            f"{tail.max() - tail.min():.2f} pt), " + ("so its curve is flat at the end: converged for this optimiser."
                                                        if tail.max() - tail.min() < 0.5 else
                                                        "so it is still moving: the reference may be low.")
            + (f" IID FedAvg reaches {m('fedavg_iid'):.1f} % (last 5 rounds)." if "fedavg_iid" in have else ""))
    if {"fedavg_s2", "fedntd_s2"} <= have:
        lines.append(
            f"- **Forgetting.** At s = 2 the received global model gets {m('fedavg_s2', 'official_out_before'):.1f} % "
            f"(FedAvg) by the official out-of-distribution measure; after 5 epochs on its two classes FedAvg's client "
            f"models get {m('fedavg_s2', 'official_out_after'):.1f} %, FedNTD's {m('fedntd_s2', 'official_out_after'):.1f} % "
            f"and FedLSD's {m('fedlsd_s2', 'official_out_after'):.1f} % (our measure, classes the client lacks: "
            f"{m('fedavg_s2', 'out_after'):.1f} / {m('fedntd_s2', 'out_after'):.1f} / {m('fedlsd_s2', 'out_after'):.1f} %). "
            "The official measure counts the client's own classes too (weight (1 − p_c)/(C − 1): at s = 2 with two "
            "classes of half the data each, each own class gets half a lacking class's weight, 1/9 of the total "
            "together), which lifts it above ours, since the clients learn their own classes well. "
            + ("Not-true distillation keeps part of the out-of-local predictions that local cross-entropy destroys."
               if m("fedntd_s2", "out_after") > m("fedavg_s2", "out_after") + 2 else
               "Not-true distillation does not visibly keep the out-of-local predictions at this scale."))
        if {"fedavg_a01", "fedntd_a01"} <= have:
            lines.append(
                f"  Under the Dirichlet splits (official measure): FedAvg {m('fedavg_a01', 'official_out_after'):.1f} % "
                f"vs FedNTD {m('fedntd_a01', 'official_out_after'):.1f} % at α = 0.1, "
                f"{m('fedavg_a05', 'official_out_after'):.1f} % vs {m('fedntd_a05', 'official_out_after'):.1f} % at "
                "α = 0.5 (the global models they start from differ too: see `tables/accuracy.csv`).")
    if {"fedavg_s2", "fedntd_s2", "fedlsd_s2"} <= have:
        accs = ", ".join(f"{label} {m(f'{method}_s2'):.1f} %" for method, label in METHOD_LABELS.items()
                         if f"{method}_s2" in have)
        lines.append(
            f"- **Accuracy at s = 2** (last 5 rounds): {accs}. "
            "Sharded training swings from round to round (the seed bands in `learning_curves`), so gains of a few "
            "points need several seeds; see the claims table for which exceed the seed spread.")
    if {"fedavgm_s2", "fedavg_s2"} <= have:
        lines.append(
            f"- **FedAvgM** (server momentum β = 0.7, the released config): {paired(summary, 'fedavgm_s2', 'fedavg_s2').mean():+.1f} pt "
            "over FedAvg. Server momentum multiplies the effective server step (up to 1/(1 − β) ≈ 3.3x), which helps "
            "runs that are still far from converged; its clients forget as much as FedAvg's (official measure "
            f"{m('fedavgm_s2', 'official_out_before'):.1f} % → {m('fedavgm_s2', 'official_out_after'):.1f} %).")
    if {"fedlsd_s2", "fedntd_s2"} <= have:
        d = paired(summary, "fedntd_s2", "fedlsd_s2")
        lsd_in, ntd_in = m("fedlsd_s2", "in_after"), m("fedntd_s2", "in_after")
        sd = d.std(ddof=1) if len(d) > 1 else 0.0
        verdict = "within the seed spread of" if abs(d.mean()) <= sd else "above" if d.mean() > 0 else "below"
        lines.append(
            f"- **Not-true vs all-class distillation.** FedNTD − FedLSD = {d.mean():+.1f} ± {sd:.1f} pt: FedNTD is "
            f"{verdict} FedLSD. The paper's reason to drop the true class is that distilling the global model's (often "
            "wrong) true-class probability holds back learning the local labels; FedLSD's client models reach "
            f"{lsd_in:.1f} % on their own classes after training vs FedNTD's {ntd_in:.1f} %, so that cost is "
            + ("visible" if lsd_in < ntd_in - 1 else "not visible") + " here.")
    if {"fedavg_a01", "fedntd_a01", "fedavg_a05", "fedntd_a05"} <= have:
        lines.append(
            f"- **Heterogeneity.** FedNTD − FedAvg: {m('fedntd_a01') - m('fedavg_a01'):+.1f} pt at α = 0.1, "
            f"{m('fedntd_a05') - m('fedavg_a05'):+.1f} pt at α = 0.5, {m('fedntd_s2') - m('fedavg_s2'):+.1f} pt at s = 2.")
    lines.append(
        "- **Scale.** The quick scale has the paper's federated shape (100 clients, 10 per round, 5 local epochs) on "
        "half of MNIST (300 images per client), 20 of its 200 rounds, the 2NN MLP instead of the CNN and no "
        "crop/flip/Cutout (see `papers/fedntd/README.md`). The paper's Table 1 numbers are not verified here, so the "
        "only number of theirs beside ours is FedAvg on MNIST s = 2 [issue#4] (a CNN after 200 rounds).")
    return "\n".join(lines)
