"""KD-SVD's report: one function per table or figure, and `report` that assembles them."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from common import plots
from common.report import Report, aggregate, load_results, mean_std, summary_rows
from common.results import RunRecord
from papers.kd_svd import PAPER
from papers.kd_svd.config import PAPER_ID
METHOD_LABELS = {"student": "Student alone", "hinton": "Hinton KD (τ = 4)", "fitnets": "FitNets", "fsp": "FSP",
                 "at": "AT", "kd_svd": "KD-SVD", "kd_eid": "KD-EID", "kd_svd_noalign": "KD-SVD, no alignment"}
METHOD_ORDER = list(METHOD_LABELS)


# ------------------------------------------------------------------------------------------------- the frames
def runs_frame(records) -> pd.DataFrame:
    """One row per run: setting, seed, the config values the report groups by, the run's scalar summary and
    `over_ce`, the share of its probed batches after the first epoch where ‖g_KD‖ > ‖g_CE‖."""
    return summary_rows(records, lambda r: {
        "method": r.config["method"], "dataset": r.config["dataset"],
        "train_images": r.summary.get("train_images"), "epochs": r.config["epochs"], "panel": panel_of(r),
        "over_ce": over_ce_share(r.history)})


def over_ce_share(history: list[dict]) -> float:
    """The share of the main stage's probed batches, after the first epoch, where the weighted distillation
    gradient outnorms the cross-entropy's (grad_ratio > 1: where KD-SVD's multi-task rule clips it to ‖g_CE‖);
    NaN for a run without a distillation gradient."""
    ratios = [h["grad_ratio"] for h in history if h.get("stage") == "main" and "grad_ratio" in h][1:]
    return float(np.mean([r > 1 for r in ratios])) if ratios else float("nan")


def panel_of(record) -> str:
    """The data panel a run belongs to: '<dataset>, <n> training images, <epochs> epochs'."""
    c = record.config
    return f"{c['dataset']}, {record.summary.get('train_images', '?'):,} images, {plural(c['epochs'], 'epoch')}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def setting_label(setting: str, runs: pd.DataFrame) -> str:
    row = runs[runs["setting"] == setting].iloc[0]
    return f"{METHOD_LABELS.get(row['method'], row['method'])} [{setting}]"


def teacher_records(results: Path) -> list[RunRecord]:
    return [RunRecord.load(p) for p in sorted(Path(results, "teacher").glob("teacher-seed*.json"))]


# ------------------------------------------------------------------------------------------------- the tables
def table_results(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting, mean ± std over seeds: final and best test accuracy (%), top-1 agreement with the teacher
    (%), predictive KL(teacher ‖ student) (nats), ‖g_KD‖ / ‖g_CE‖, the relation distance to the teacher on a
    fixed test batch."""
    pct = [c for c in ("final_test_acc", "best_test_acc", "final_agreement") if c in runs]
    out = aggregate(runs, pct, scale=100)
    if runs["over_ce"].notna().any():
        out = out.merge(aggregate(runs, ["over_ce"], scale=100, digits=0).drop(columns="seeds"), on="setting",
                        how="left")
    other = [c for c in ("final_kl_teacher_student", "grad_ratio", "relation_distance") if c in runs]
    out = out.merge(aggregate(runs, other, digits=3).drop(columns="seeds"), on="setting")
    first = runs.drop_duplicates("setting").set_index("setting")
    out.insert(1, "method", out["setting"].map(lambda s: METHOD_LABELS.get(first.loc[s, "method"])))
    out.insert(2, "data", out["setting"].map(first["panel"]))
    return out.rename(columns={
        "final_test_acc": "final test acc (%)", "best_test_acc": "best test acc (%)",
        "final_agreement": "top-1 agreement with teacher (%)", "final_kl_teacher_student": "KL(T ‖ S) (nats)",
        "grad_ratio": "‖g_KD‖ / ‖g_CE‖", "over_ce": "probes with ‖g_KD‖ > ‖g_CE‖ (%)",
        "relation_distance": "relation distance to teacher"})


def table_gains(runs: pd.DataFrame) -> pd.DataFrame:
    """Each distillation setting minus the student alone of its panel (same data, same epochs), paired by seed:
    test accuracy, agreement (pt) and KL (nats)."""
    rows = []
    for panel, group in runs.groupby("panel", sort=False):
        base = group[group["method"] == "student"]
        if base.empty:
            continue
        base = base.groupby("seed").first()
        for setting, g in group[group["method"] != "student"].groupby("setting", sort=False):
            g = g.set_index("seed")
            d_acc = (g["final_test_acc"] - base["final_test_acc"]).dropna() * 100
            d_agr = (g["final_agreement"] - base["final_agreement"]).dropna() * 100
            d_kl = (g["final_kl_teacher_student"] - base["final_kl_teacher_student"]).dropna()
            rows.append({"setting − student": setting, "data": panel, "accuracy (pt)": mean_std(d_acc),
                         "agreement (pt)": mean_std(d_agr), "KL (nats)": mean_std(d_kl, digits=3),
                         "seeds": len(d_acc)})
    return pd.DataFrame(rows)


def table_cost(runs: pd.DataFrame) -> pd.DataFrame:
    """Seconds per training step and per distillation-loss step (forward + backward on one batch): shown, never
    judged (a shared machine)."""
    out = aggregate(runs, ["step_s"], scale=1e3, digits=1).rename(columns={"step_s": "training step (ms)"})
    if "dist_loss_s" in runs:
        dist = aggregate(runs, ["dist_loss_s"], scale=1e3, digits=1).drop(columns="seeds")
        out = out.merge(dist.rename(columns={"dist_loss_s": "distillation loss, fwd + bwd (ms)"}), on="setting")
    return out


def table_teachers(teachers: list[RunRecord]) -> pd.DataFrame:
    rows = [{"seed": t.seed, "test acc (%)": f"{100 * t.summary['test_acc']:.2f}",
             "train images": t.summary.get("train_images"), "epochs": t.config["epochs"],
             "widths": "/".join(map(str, t.config["widths"])), "blocks per stage": t.config["blocks"],
             "parameters": t.summary.get("parameters"), "wall time (s)": round(t.wall_time_s)} for t in teachers]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ the figures
def fig_learning_curves(hist: pd.DataFrame, runs: pd.DataFrame, panel: str):
    """Test accuracy and top-1 agreement with the teacher per epoch (main stage), mean ± std over seeds."""
    settings = runs[runs["panel"] == panel]["setting"].unique()
    df = hist[hist["setting"].isin(settings) & hist["test_acc"].notna()]
    df = df.assign(method=df["setting"].map(lambda s: setting_label(s, runs)))
    long = df.melt(id_vars=["method", "seed", "epoch"], value_vars=["test_acc", "agreement"], var_name="metric",
                   value_name="value").dropna()
    long = long.assign(value=100 * long["value"],
                       metric=long["metric"].map({"test_acc": "test accuracy", "agreement": "agreement with teacher"}))
    order = [setting_label(s, runs) for s in sorted(settings, key=lambda s: _order(runs, s))]
    fig = plots.curves(long, "epoch", "value", hue="method", col="metric", hue_order=order,
                       col_order=["test accuracy", "agreement with teacher"], ylabel="%",
                       title=f"{panel}: test accuracy and top-1 agreement with the teacher (mean ± std over "
                             "seeds; FitNets and FSP count their initialisation epochs)")
    for ax in fig.axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return fig


def fig_grad_ratio(hist: pd.DataFrame, runs: pd.DataFrame, panel: str,
                   methods=("kd_svd", "kd_eid", "kd_svd_noalign")):
    """‖g_KD‖ / ‖g_CE‖ on each epoch's first batch, one line per seed, a panel per multi-task method (log
    scale): above 1, the rule clips the distillation gradient to the cross-entropy's norm."""
    settings = [s for s in runs[(runs["panel"] == panel) & runs["method"].isin(methods)]["setting"].unique()]
    if "grad_ratio" not in hist or not settings:
        return None
    settings.sort(key=lambda s: _order(runs, s))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        df = hist[(hist["setting"] == setting) & hist["grad_ratio"].notna()]
        sns.lineplot(data=df, x="epoch", y="grad_ratio", hue="seed", palette="deep", marker="o", markersize=3,
                     ax=ax, legend=ax is axes[0][-1])
        ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(setting_label(setting, runs), fontsize=10)
        ax.set_ylabel("‖g_KD‖ / ‖g_CE‖ (first batch of the epoch)")
    sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.01, 1), frameon=False, title="seed")
    fig.suptitle(f"{panel}: the distillation gradient against the cross-entropy's, before the clip (dashed: "
                 "above it the clip holds ‖g_KD‖ at ‖g_CE‖)", y=1.03, fontsize=10)
    return fig


def _order(runs, setting):
    method = runs[runs["setting"] == setting]["method"].iloc[0]
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else 99, setting)


def fig_accuracy_agreement(runs: pd.DataFrame):
    """Each run's final test accuracy against its agreement with the teacher (Stanton et al. 2021: more
    accurate need not mean more faithful)."""
    df = runs.assign(acc=100 * runs["final_test_acc"], agree=100 * runs["final_agreement"],
                     method=runs["method"].map(METHOD_LABELS))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sns.scatterplot(data=df, x="agree", y="acc", hue="method", style="panel", s=60, ax=ax,
                    hue_order=[METHOD_LABELS[m] for m in METHOD_ORDER if m in set(runs["method"])])
    ax.set_xlabel("top-1 agreement with the teacher (%)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy against fidelity to the teacher (one dot per run)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def relation_matrices(records, settings=("student", "kd_svd", "kd_eid")) -> tuple[int, dict] | None:
    """The relation matrices of the lowest seed's runs (last pair of distillation points): the teacher's and
    each student's, {label: matrix}."""
    by = {(r.setting, r.seed): r for r in records if r.summary.get("relation_sample")}
    seeds = sorted({seed for (s, seed) in by if s in settings})
    if not seeds:
        return None
    seed = seeds[0]
    have = [s for s in settings if (s, seed) in by]
    pair = by[(have[0], seed)].summary["relation_sample"][-1]
    mats = {f"teacher (seed {seed})": np.array(pair["teacher"])}
    for s in have:
        mats[f"{METHOD_LABELS.get(by[(s, seed)].config['method'], s)} [{s}]"] = \
            np.array(by[(s, seed)].summary["relation_sample"][-1]["student"])
    return pair["points"], mats


def fig_relations(points, mats: dict):
    """R[i, j] = exp(−(v_l[i] − v_{l−1}[j])² / 8) of the first test image, teacher and students side by side,
    with each student's mean |R_S − R_T|."""
    teacher = next(iter(mats.values()))
    fig, axes = plt.subplots(1, len(mats), figsize=(3.4 * len(mats), 3.4), squeeze=False)
    lo, hi = min(m.min() for m in mats.values()), 1.0
    for ax, (name, m) in zip(axes[0], mats.items()):
        sns.heatmap(m, ax=ax, vmin=lo, vmax=hi, cmap="viridis", cbar=ax is axes[0][-1], xticklabels=False,
                    yticklabels=False)
        diff = "" if m is teacher else f"\nmean |R_S − R_T| = {np.abs(m - teacher).mean():.4f}"
        ax.set_title(name + diff, fontsize=9)
        ax.set_xlabel(f"channel j of point {points[0] + 1}")
        ax.set_ylabel(f"channel i of point {points[1] + 1}")
    fig.suptitle("KD-SVD's relation matrices R between the last two distillation points (first test image; "
                 "the student's vector aligned to the teacher's)", y=1.04, fontsize=10)
    return fig


def main_panel(runs: pd.DataFrame) -> str:
    """The panel with the most settings (the small-data regime at the quick scale)."""
    return runs.groupby("panel", sort=False)["setting"].nunique().idxmax()


def fig_cost(runs: pd.DataFrame):
    """Milliseconds per forward + backward of each distillation loss alone on one batch (the main panel)."""
    df = runs[runs["panel"] == main_panel(runs)]
    df = df.dropna(subset=["dist_loss_s"]) if "dist_loss_s" in df else df.iloc[:0]
    if df.empty:
        return None
    order = [METHOD_LABELS[m] for m in METHOD_ORDER if m in set(df["method"])]
    df = df.assign(ms=1e3 * df["dist_loss_s"], method=df["method"].map(METHOD_LABELS))
    return plots.bars(df, "method", "ms", order=order,
                      ylabel="ms per forward + backward",
                      title="Cost of the distillation loss alone, one batch (timing on a shared machine: shown, "
                            "not judged)")


# ------------------------------------------------------------------------------------------------- the report
def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, _ = load_results(PAPER_ID, results, scale)
    runs = runs_frame(records)
    teachers = teacher_records(results)
    rep = Report(out, "KD-SVD and KD-EID (Lee, Kim and Song, ECCV 2018; Lee and Song, TNNLS 2022): distilling "
                 "singular vectors", PAPER, scale, PAPER_ID, records + teachers)
    rep.section("Setup", setup_text(spec, records, runs, teachers))
    rep.paper_and_claims(spec, runs, "The paper's numbers ([README-KDTF]: the author's ResNet32 → ResNet8 "
                         "benchmark on CIFAR-100, mean of 5 runs, rows of its K = 4 code; [README-TF2]: WRN40-4 → WRN16-4 on a "
                         "share of CIFAR-100's training set, a table withdrawn by its author (only at 0474ff4); "
                         "[README-SSKD]: the ECCV table) beside ours",
                         note=spec.get("paper_note", ""))
    rep.section("Results")
    rep.table("results", table_results(runs), f"Every setting at the {scale} scale, mean ± std over seeds")
    gains = table_gains(runs)
    if len(gains):
        rep.table("gains", gains, "Each method minus the student alone on the same data, paired by seed")
    if teachers:
        rep.table("teachers", table_teachers(teachers), "The cached teachers, one per seed (each student of a "
                  "seed distils that seed's teacher)")
    for i, panel in enumerate(runs["panel"].unique()):
        if "test_acc" in hist and runs[runs["panel"] == panel]["setting"].nunique() > 1:
            rep.figure(f"learning_curves_{i}", fig_learning_curves(hist, runs, panel),
                       f"Test accuracy and agreement with the teacher per epoch, {panel}")
    fig = fig_grad_ratio(hist, runs, main_panel(runs))
    if fig is not None:
        rep.figure("grad_ratio", fig, "The distillation gradient's norm against the cross-entropy's per epoch, "
                   "for KD-SVD, KD-EID and the no-alignment ablation (one line per seed)")
    rep.figure("accuracy_agreement", fig_accuracy_agreement(runs), "Final test accuracy against top-1 "
               "agreement with the teacher, one dot per run")
    rel = relation_matrices(records)
    if rel is not None:
        rep.figure("relations", fig_relations(*rel), "Relation matrices R of the teacher and of the students "
                   "(first test image, last pair of distillation points)")
    rep.table("cost", table_cost(runs), "Milliseconds per training step and per distillation-loss step (a "
              "shared machine: shown, not judged)")
    fig = fig_cost(runs)
    if fig is not None:
        rep.figure("cost", fig, "Milliseconds per forward + backward of each distillation loss on one batch")
    rep.section("Reading the results", reading(runs, teachers))
    rep.write()


def setup_text(spec: dict, records, runs: pd.DataFrame, teachers) -> str:
    c = records[0].config
    t = teachers[0].config if teachers else records[0].config.get("teacher", {})
    t_acc = ", ".join(f"{100 * r.summary['test_acc']:.2f} %" for r in teachers) or "n/a"
    wall = np.mean([r.wall_time_s for r in records])
    teacher_wall = np.mean([r.wall_time_s for r in teachers]) if teachers else float("nan")
    panels = "; ".join(f"{p} ({', '.join(sorted(runs[runs['panel'] == p]['setting'].unique()))})"
                       for p in runs["panel"].unique())
    return f"""
{c['dataset'].upper()}; the author's benchmark ResNet (`nets/ResNet.py`): a 3×3 stem of {c['widths'][0]} channels,
three stages of {'/'.join(map(str, c['widths'][1:]))} channels; the student has {c['blocks']} basic block per stage,
the teacher {t.get('blocks', '?')}. Distillation points: the three stage outputs. Each seed has its own teacher,
trained once ({plural(t.get('epochs', 0), 'epoch')} on {t.get('train_fraction', 1):.0%} of the training split, SGD lr
{t.get('lr', '?')} {t.get('lr_schedule', '')}), cached and distilled by every student of that seed (frozen, BN in
inference mode): test accuracy {t_acc}. Students: SGD with Nesterov momentum {c['momentum']}, lr {c['lr']}
({c['lr_schedule']} schedule), batch {c['batch_size']}, weight decay {c['weight_decay']}, flip + pad-4 crop; the
same seed gives every method the same initialisation, training subset and batches. FitNets and FSP first train
{plural(c['init_epochs'], 'epoch')} on their distillation loss alone (the official two-stage schedule), then the others.
Panels: {panels}. Seeds {sorted(set(runs['seed']))}. Mean wall time per run {wall:.0f} s, per teacher
{teacher_wall:.0f} s (a shared machine: not a measurement of the methods' cost).

**Evaluation.** {spec.get('protocol', '')}
"""


def reading(runs: pd.DataFrame, teachers) -> str:
    """A few sentences written from the numbers: per data panel, each method against the student alone."""
    def m(setting, metric="final_test_acc", scale=100):
        rows = runs[runs["setting"] == setting]
        return float(scale * rows[metric].mean()) if len(rows) and metric in rows else float("nan")

    def diff(a, b, metric="final_test_acc"):
        x = runs[runs["setting"] == a].set_index("seed")[metric]
        y = runs[runs["setting"] == b].set_index("seed")[metric]
        d = (x - y).dropna() * 100
        return mean_std(d) + " pt" if len(d) else "n/a"

    lines = []
    t_acc = np.mean([100 * t.summary["test_acc"] for t in teachers]) if teachers else float("nan")
    if teachers:
        lines.append(f"- **Teachers.** {t_acc:.2f} % on average over {len(teachers)} seed(s).")
    longest = runs[runs["method"] == "student"].sort_values("epochs").tail(1)
    if teachers and len(longest) and longest["epochs"].iloc[0] > runs["epochs"].min():
        s = longest["setting"].iloc[0]
        lines.append(f"- **Teacher headroom.** The student alone trained longest ({s}, "
                     f"{plural(int(longest['epochs'].iloc[0]), 'epoch')}) reaches {m(s):.2f} %; the teachers' mean "
                     f"minus it is {t_acc - m(s):+.2f} pt, the room a distiller has at convergence.")
    for panel, group in runs.groupby("panel", sort=False):
        base = group[group["method"] == "student"]["setting"].unique()
        others = sorted(set(group["setting"]) - set(base), key=lambda s: _order(runs, s))
        if len(base) != 1 or not others:
            continue
        student = base[0]
        lines.append(f"- **{panel}.** Student alone ({student}) {m(student):.2f} % (agreement with its teacher "
                     f"{m(student, 'final_agreement'):.1f} %).")
        for s in others:
            label = METHOD_LABELS.get(group[group["setting"] == s]["method"].iloc[0], s)
            lines.append(f"  {label} ({s}): {m(s):.2f} % ({diff(s, student)} over the student alone, agreement "
                         f"{diff(s, student, 'final_agreement')}).")
    clipped = runs[runs["method"].isin(["kd_svd", "kd_eid", "kd_svd_noalign"]) & runs["over_ce"].notna()]
    if len(clipped):
        shares = [f"{setting_label(s, runs)} {100 * g['over_ce'].mean():.0f} %"
                  for s, g in sorted(clipped.groupby("setting"), key=lambda sg: _order(runs, sg[0]))]
        lines.append("- **Where the multi-task clip bites** (probed batches after the first epoch with ‖g_KD‖ > "
                     f"‖g_CE‖, mean over seeds; `figures/grad_ratio.png`): {'; '.join(shares)}.")
    lines.append("- Timings come from a shared machine and are shown, never judged; see `tables/cost.csv`.")
    lines.append("- See `papers/kd_svd/README.md` for every deviation from the paper and the official code.")
    return "\n".join(lines)
