"""Prompt tuning's report: one function per table or figure, and `report` that assembles them.

The panels are read from the runs' configs, not listed by hand: a run is on the *main line* when its prompt
length, initialisation and steps are the scale's base values; the scale figure (the paper's Fig. 1) takes the
main-line runs of every method and model; the *ablation model* is the (task, backbone, layers) with the most
prompt-tuning settings, and the length and initialisation figures (Fig. 3a, 3b) vary one of the two there.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from common import plots
from common.experiments import build_config, scale_spec
from common.report import Report, aggregate, load_results, mean_std, summary_rows
from papers.prompt_tuning import PAPER
from papers.prompt_tuning.config import PAPER_ID, PromptTuningConfig

METHOD_LABELS = {"prompt_tuning": "Prompt tuning", "model_tuning": "Model tuning", "linear_probe": "Linear probe"}
BACKBONE_LABELS = {"minilm": "MiniLM", "mpnet": "MPNet", "t5": "T5 v1.1 LM-adapted"}
INIT_LABELS = {"random": "random U[-0.5, 0.5]", "random_flax": "random U[0, 0.5) (released config)",
               "vocab": "sampled vocabulary", "class_labels": "class labels"}
ENSEMBLE_VIEWS = {"mean_member_test_acc": "average prompt", "val_best_member_test_acc": "prompt best on validation",
                  "best_member_test_acc": "best prompt on test", "ensemble_test_acc": "majority vote"}


# ------------------------------------------------------------------------------------------------- the frames
def runs_frame(records) -> pd.DataFrame:
    """One row per run: setting, seed, the config values the panels group by, and the run's scalar summary."""
    keys = ("method", "task", "backbone", "prompt_length", "prompt_init", "ensemble_size", "steps")
    runs = summary_rows(records, lambda r: {**{k: r.config[k] for k in keys}, "wall_time_s": r.wall_time_s})
    runs["model"] = [model_label(b, int(n)) for b, n in zip(runs["backbone"], runs["layers"])]
    return runs


def model_label(backbone: str, layers: int) -> str:
    return f"{BACKBONE_LABELS.get(backbone, backbone)}, {layers} layer{'s' if layers > 1 else ''}"


def base_config(scale: str) -> PromptTuningConfig:
    """The scale's base (experiments.yaml `scales.<scale>.base` over the config defaults)."""
    return build_config(PromptTuningConfig, scale_spec(PAPER_ID, scale).get("base", {}))


def main_line(runs: pd.DataFrame, base: PromptTuningConfig) -> pd.DataFrame:
    """Runs at the base steps; prompt tuning at the base prompt length and initialisation too."""
    prompt = runs["method"] == "prompt_tuning"
    same_prompt = (runs["prompt_length"] == base.prompt_length) & (runs["prompt_init"] == base.prompt_init)
    return runs[(runs["steps"] == base.steps) & (~prompt | same_prompt)]


def ablation_runs(runs: pd.DataFrame, base: PromptTuningConfig) -> pd.DataFrame:
    """Prompt-tuning runs at the base steps on the model with the most prompt-tuning settings."""
    pt = runs[(runs["method"] == "prompt_tuning") & (runs["steps"] == base.steps)]
    if pt.empty:
        return pt
    key = pt.groupby(["task", "model"])["setting"].nunique().idxmax()
    return pt[(pt["task"] == key[0]) & (pt["model"] == key[1])]


def paired_gap(runs: pd.DataFrame) -> pd.DataFrame:
    """Model tuning minus prompt tuning (test accuracy, pt), paired by seed, per task and model."""
    rows = []
    for (task, model), g in runs.groupby(["task", "model"], sort=False):
        by = {m: g[g["method"] == m].set_index("seed")["test_acc"] for m in ("model_tuning", "prompt_tuning")}
        diff = (by["model_tuning"] - by["prompt_tuning"]).dropna()
        rows += [{"task": task, "model": model, "parameters": g["parameters"].iloc[0], "seed": s, "gap": 100 * d}
                 for s, d in diff.items()]
    return pd.DataFrame(rows, columns=["task", "model", "parameters", "seed", "gap"])


# ------------------------------------------------------------------------------------------------- the tables
def scale_tasks(main: pd.DataFrame) -> list[str]:
    """Tasks run on more than one model (the scale trend); the others are the task panel's."""
    models = main.groupby("task", sort=False)["model"].nunique()
    return list(models[models > 1].index)


def task_panel(main: pd.DataFrame) -> pd.DataFrame:
    """Main-line runs of the models run on more than one task (the task panel; empty with one task)."""
    tasks = main.groupby("model")["task"].nunique()
    return main[main["model"].isin(tasks[tasks > 1].index)]


def table_results(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: the run's method and model, trainable parameters, and mean ± std over seeds of the test
    and best validation accuracy (%) and the selected step."""
    out = aggregate(runs, ["test_acc", "val_acc"], scale=100)
    steps = aggregate(runs, ["best_step"], digits=0).drop(columns="seeds")
    out = out.merge(steps, on="setting")
    first = runs.drop_duplicates("setting").set_index("setting")
    out.insert(1, "method", out["setting"].map(lambda s: METHOD_LABELS[first.loc[s, "method"]]))
    out.insert(2, "task", out["setting"].map(first["task"]))
    out.insert(3, "model", out["setting"].map(first["model"]))
    out.insert(4, "prompt", out["setting"].map(
        lambda s: f"P = {first.loc[s, 'prompt_length']}, {first.loc[s, 'prompt_init']}"
        + (f", N = {first.loc[s, 'ensemble_size']}" if first.loc[s, "ensemble_size"] > 1 else "")
        if first.loc[s, "method"] == "prompt_tuning" else "-"))
    out.insert(5, "trainable parameters", out["setting"].map(lambda s: f"{int(first.loc[s, 'trainable_parameters']):,}"))
    return out.rename(columns={"test_acc": "test acc (%)", "val_acc": "best validation acc (%)",
                               "best_step": "selected step"})


def table_scale(main: pd.DataFrame) -> pd.DataFrame:
    """Per task and model (the scale trend's tasks first, models by parameters): test accuracy of each method and
    the model-tuning gap, mean ± std."""
    gaps = paired_gap(main)
    rows = []
    order = main.assign(panel_only=~main["task"].isin(scale_tasks(main)))
    for (task, model), g in order.sort_values(["panel_only", "task", "parameters"]).groupby(["task", "model"],
                                                                                           sort=False):
        row = {"task": task, "model": model, "parameters": f"{int(g['parameters'].iloc[0]):,}"}
        for m, label in METHOD_LABELS.items():
            row[f"{label} (%)"] = mean_std(g[g["method"] == m]["test_acc"], 100)
        gap = gaps[(gaps["task"] == task) & (gaps["model"] == model)]["gap"]
        row["model − prompt tuning (pt)"] = mean_std(gap)
        rows.append(row)
    return pd.DataFrame(rows)


def table_ensemble(runs: pd.DataFrame) -> pd.DataFrame:
    """Per ensemble setting: the mean, the validation-chosen and the best (on test) single prompt, and the
    majority vote, test accuracy (%), mean ± std over seeds."""
    cols = {k: f"{v} (%)" for k, v in ENSEMBLE_VIEWS.items()}
    ens = runs[runs["ensemble_size"] > 1]
    out = aggregate(ens, list(cols), scale=100).rename(columns=cols)
    first = ens.drop_duplicates("setting").set_index("setting")
    out.insert(1, "prompts (N)", out["setting"].map(first["ensemble_size"]))
    out.insert(2, "model", out["setting"].map(first["model"]))
    return out


def table_cost(runs: pd.DataFrame) -> pd.DataFrame:
    """Seconds per training step and per run (a shared machine: shown, never judged)."""
    out = aggregate(runs, ["step_s"], scale=1e3, digits=0).rename(columns={"step_s": "training step (ms)"})
    wall = aggregate(runs, ["wall_time_s"], digits=0).drop(columns="seeds")
    out = out.merge(wall.rename(columns={"wall_time_s": "run (s)"}), on="setting")
    frozen = runs.dropna(subset=["encoder_unchanged"]) if "encoder_unchanged" in runs else runs.iloc[:0]

    def unchanged(setting):
        values = frozen[frozen["setting"] == setting]["encoder_unchanged"].astype(bool)
        return "- (tuned)" if values.empty else "yes" if values.all() else "NO"

    out["frozen encoder bit-identical after training"] = out["setting"].map(unchanged)
    return out


# ------------------------------------------------------------------------------------------------ the figures
def _mean_sd(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    return df.groupby(keys, sort=False)[value].agg(["mean", "std", "count"]).reset_index().fillna({"std": 0.0})


def fig_scale(main: pd.DataFrame):
    """The paper's Fig. 1 shape: test accuracy by frozen-model parameters for each method (mean ± std over
    seeds), and model tuning minus prompt tuning (paired by seed), one row per task."""
    tasks = scale_tasks(main)
    gaps = paired_gap(main)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.8 * len(tasks)), squeeze=False)
    palette = dict(zip(METHOD_LABELS.values(), sns.color_palette("colorblind", 3)))
    for row, task in zip(axes, tasks):
        df = main[main["task"] == task].assign(acc=lambda d: 100 * d["test_acc"])
        stats = _mean_sd(df, ["method", "model", "parameters"], "acc").sort_values("parameters")
        for method, label in METHOD_LABELS.items():
            g = stats[stats["method"] == method]
            row[0].errorbar(g["parameters"], g["mean"], yerr=g["std"], marker="o", capsize=3, label=label,
                            color=palette[label])
        for _, r in stats.drop_duplicates("model").iterrows():
            row[0].annotate(r["model"], (r["parameters"], stats["mean"].min()), rotation=90, fontsize=7,
                            xytext=(3, 2), textcoords="offset points", va="bottom", color="0.4")
        row[0].set(xscale="log", xlabel="parameters of the frozen (or tuned) model", ylabel="test accuracy (%)",
                   title=f"{task}: accuracy by model size")
        row[0].legend(frameon=False, fontsize=8)
        g = gaps[gaps["task"] == task]
        if len(g):
            s = _mean_sd(g, ["model", "parameters"], "gap").sort_values("parameters")
            row[1].errorbar(s["parameters"], s["mean"], yerr=s["std"], marker="o", capsize=3, color="k")
            sns.stripplot(data=g, x="parameters", y="gap", native_scale=True, ax=row[1], color="0.5", size=3,
                          jitter=False)
        row[1].axhline(0, color="0.6", lw=1, ls="--")
        row[1].set(xscale="log", xlabel="parameters", ylabel="model tuning − prompt tuning (pt)",
                   title=f"{task}: the gap (paired by seed; the paper: it closes with scale)")
        for ax in row:
            ax.set_xticks(sorted(set(stats["parameters"])))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e6:.0f}M"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    return fig


def fig_tasks(panel: pd.DataFrame):
    """Test accuracy per task of each method on one model (mean ± std over seeds, the seeds as dots), and the
    model-tuning gap paired by seed."""
    tasks = list(dict.fromkeys(panel.sort_values("task", key=lambda t: t != "sst2")["task"]))
    hue_order = [m for m in METHOD_LABELS.values() if m in set(panel["method"].map(METHOD_LABELS))]
    df = panel.assign(acc=100 * panel["test_acc"], method=panel["method"].map(METHOD_LABELS))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    sns.pointplot(data=df, x="task", y="acc", hue="method", order=tasks, hue_order=hue_order, errorbar="sd",
                  dodge=0.4, linestyle="none", capsize=0.08, marker="s", ax=left, palette="colorblind")
    sns.stripplot(data=df, x="task", y="acc", hue="method", order=tasks, hue_order=hue_order, dodge=True,
                  ax=left, palette="colorblind", size=3, alpha=0.5, legend=False)
    left.set(xlabel="task", ylabel="test accuracy (%)",
             title=f"Tasks on one frozen model ({', '.join(sorted(set(panel['model'])))})")
    left.legend(frameon=False, fontsize=8)
    gaps = paired_gap(panel)
    sns.pointplot(data=gaps, x="task", y="gap", order=tasks, errorbar="sd", capsize=0.1, color="k",
                  linestyle="none", ax=right)
    sns.stripplot(data=gaps, x="task", y="gap", order=tasks, color="0.5", size=3, jitter=False, ax=right)
    right.axhline(0, color="0.6", lw=1, ls="--")
    right.set(xlabel="task", ylabel="model tuning − prompt tuning (pt)", title="The gap per task (paired by seed)")
    fig.tight_layout()
    return fig


def fig_length(abl: pd.DataFrame, base: PromptTuningConfig, refs: pd.DataFrame):
    """The paper's Fig. 3a: test accuracy by prompt length at the base initialisation (mean ± std over seeds),
    with the same model's model tuning and linear probe as horizontal lines."""
    df = abl[abl["prompt_init"] == base.prompt_init].assign(acc=lambda d: 100 * d["test_acc"])
    stats = _mean_sd(df, ["prompt_length"], "acc").sort_values("prompt_length")
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    ax.errorbar(stats["prompt_length"], stats["mean"], yerr=stats["std"], marker="o", capsize=3,
                label="prompt tuning")
    sns.stripplot(data=df, x="prompt_length", y="acc", native_scale=True, ax=ax, color="0.4", size=3, jitter=False)
    for (method, g), ls in zip(refs.groupby("method", sort=False), ("--", ":")):
        ax.axhline(100 * g["test_acc"].mean(), ls=ls, color="0.4", label=f"{METHOD_LABELS[method]} (mean)")
    ax.set(xscale="log", xlabel="prompt length P", ylabel="test accuracy (%)",
           title=f"Prompt length ({df['model'].iloc[0]}, {INIT_LABELS[base.prompt_init]} init)")
    ax.set_xticks(stats["prompt_length"], [str(p) for p in stats["prompt_length"]])
    ax.legend(frameon=False, fontsize=8)
    return fig


def paired_points(df: pd.DataFrame, x: str, order: list[str], title: str):
    """Test accuracy (%) per category of `x`: mean ± std over seeds (black), each seed's values joined by a
    grey line (the comparisons are paired by seed); the axis is not cut at 0, so point differences show."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(order) + 1.5), 3.8))
    pos = {k: i for i, k in enumerate(order)}
    for _, g in df.groupby("seed"):
        g = g.sort_values(x, key=lambda c: c.map(pos))
        ax.plot(g[x].map(pos), g["acc"], color="0.7", lw=1, marker="o", ms=3, zorder=1)
    stats = _mean_sd(df, [x], "acc")
    ax.errorbar(stats[x].map(pos), stats["mean"], yerr=stats["std"], fmt="s", color="k", capsize=4, zorder=2,
                label="mean ± std over seeds")
    ax.set_xticks(range(len(order)), order, rotation=20, ha="right")
    ax.set(ylabel="test accuracy (%)", title=title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def fig_init(abl: pd.DataFrame, base: PromptTuningConfig):
    """The paper's Fig. 3b: test accuracy by initialisation at the base prompt length."""
    df = abl[abl["prompt_length"] == base.prompt_length]
    order = [INIT_LABELS[i] for i in INIT_LABELS if i in set(df["prompt_init"])]
    df = df.assign(acc=100 * df["test_acc"], init=df["prompt_init"].map(INIT_LABELS))
    return paired_points(df, "init", order, f"Prompt initialisation ({df['model'].iloc[0]}, P = {base.prompt_length})")


def fig_ensemble(runs: pd.DataFrame):
    """Per seed: the average, the validation-chosen and the best single prompt, and the N-prompt majority vote."""
    ens = runs[runs["ensemble_size"] > 1]
    df = ens.melt(id_vars=["seed"], value_vars=list(ENSEMBLE_VIEWS), var_name="what", value_name="acc")
    df = df.assign(what=df["what"].map(ENSEMBLE_VIEWS), acc=100 * df["acc"])
    n = int(ens["ensemble_size"].iloc[0])
    return paired_points(df, "what", list(ENSEMBLE_VIEWS.values()),
                         f"Prompt ensembling: {n} prompts on one frozen {ens['model'].iloc[0]}")


def fig_curves(hist: pd.DataFrame, main: pd.DataFrame):
    """Validation accuracy during training, every method of the main line, one panel per model."""
    keep = main[["setting", "method", "model"]].drop_duplicates("setting")
    df = hist.merge(keep, on="setting").dropna(subset=["val_acc"])
    df = df.assign(val=100 * df["val_acc"], method=df["method"].map(METHOD_LABELS))
    order = list(dict.fromkeys(main.sort_values("parameters")["model"]))
    return plots.curves(df, "step", "val", hue="method", col="model", col_order=order,
                        hue_order=[m for m in METHOD_LABELS.values() if m in set(df["method"])],
                        ylabel="validation accuracy (%)",
                        title="Validation accuracy during training (early stopping keeps each run's best step)")


# ------------------------------------------------------------------------------------------------- the report
def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, _ = load_results(PAPER_ID, results, scale)
    runs = runs_frame(records)
    base = base_config(scale)
    main, abl = main_line(runs, base), ablation_runs(runs, base)
    rep = Report(out, "Prompt tuning (Lester, Al-Rfou and Constant, EMNLP 2021): the power of scale for "
                 "parameter-efficient prompt tuning", PAPER, scale, PAPER_ID, records)
    rep.section("Setup", setup_text(spec, runs, base))
    rep.paper_and_claims(spec, runs, "The paper's and the official code's numbers (provenance: [pdf] the paper's "
                         "text and tables, [README] the released prompts' README, [mem] recalled and "
                         "unverified) beside "
                         "ours", note=spec.get("paper_note", ""))
    rep.section("Results")
    rep.table("scale", table_scale(main), "Test accuracy by model (the paper's Fig. 1 as a table), mean ± std "
              "over seeds; the gap is paired by seed")
    if scale_tasks(main):
        rep.figure("fig1_scale", fig_scale(main), "Accuracy by model size for prompt tuning, model tuning and "
                   "the linear probe, and the gap between model and prompt tuning (the paper's Fig. 1)")
    panel = task_panel(main)
    if len(panel):
        rep.figure("tasks", fig_tasks(panel), "The task panel: prompt tuning, model tuning and the linear probe "
                   "on one small frozen model across tasks, and the gap between model and prompt tuning")
    refs = main[main["model"].isin(set(abl["model"])) & main["task"].isin(set(abl["task"]))
                & (main["method"] != "prompt_tuning")]
    if abl["prompt_length"].nunique() > 1:
        rep.figure("fig3a_length", fig_length(abl, base, refs), "Test accuracy by prompt length (the paper's "
                   "Fig. 3a)")
    if abl["prompt_init"].nunique() > 1:
        rep.figure("fig3b_init", fig_init(abl, base), "Test accuracy by prompt initialisation (the paper's "
                   "Fig. 3b)")
    if (runs["ensemble_size"] > 1).any():
        rep.table("ensemble", table_ensemble(runs), "Prompt ensembling: single prompts and their majority vote "
                  "(test accuracy, mean ± std over seeds)")
        rep.figure("ensemble", fig_ensemble(runs), "The majority vote of N prompts against the average, the "
                   "validation-chosen and the best single prompt (the paper's Table 3)")
    rep.figure("curves", fig_curves(hist, main), "Validation accuracy during training, main line")
    rep.table("results", table_results(runs), f"Every setting at the {scale} scale, mean ± std over seeds")
    rep.table("cost", table_cost(runs), "Milliseconds per training step (an ensemble's step trains its N "
              "prompts) and seconds per run (a shared machine: shown, not judged), and the check that every frozen "
              "encoder ends bit-identical")
    rep.section("Reading the results", reading(runs, main, abl, base))
    rep.write()


def setup_text(spec: dict, runs: pd.DataFrame, base: PromptTuningConfig) -> str:
    tasks = ", ".join(sorted(set(runs["task"])))
    models = "; ".join(f"{m} ({int(p):,} parameters)" for m, p in
                       runs.drop_duplicates("model").sort_values("parameters")[["model", "parameters"]].values)
    sizes = runs.drop_duplicates("task")[["task", "train_examples", "val_examples", "test_examples"]]
    split = "; ".join(f"{t}: {int(a):,} training examples, validation on {int(b):,}, test on {int(c):,}"
                      for t, a, b, c in sizes.values)
    return f"""
Task(s): {tasks} ({split}). Frozen models: {models}. Every method puts a linear head on the mean of the final
hidden states over the input tokens (the encoders have no decoder to generate the label words, as T5 does).
Prompt tuning trains P vectors in front of the embedded input (attention mask extended) and the head; model
tuning trains every weight and the head; the linear probe trains the head on the frozen encoder's pooled
features. All three use the paper's optimiser, Adafactor with T5X's factoring rule, no parameter scaling, a
constant learning rate and weight decay {base.weight_decay:g} (lr per setting: see `tables/results.csv` and
experiments.yaml), batch {base.batch_size}, {base.steps:,} steps, inputs cut at {base.max_length} tokens
{'(batches cut from pools of ' + str(base.length_pool) + ' x B examples sorted by length)' if base.length_pool else ''}.
The main line: P = {base.prompt_length}, {INIT_LABELS[base.prompt_init]} initialisation. Each member of an
ensemble trains its own prompt and head from its own seed; member 0 is the run's seed, so an ensemble setting's
`test_acc` is that of its single first prompt. Seeds {sorted(set(runs['seed']))}; mean wall time per run
{runs['wall_time_s'].mean():.0f} s (a shared machine).

**Evaluation.** {spec.get('protocol', '')}
"""


def reading(runs: pd.DataFrame, main: pd.DataFrame, abl: pd.DataFrame, base: PromptTuningConfig) -> str:
    """Sentences written from the numbers."""
    lines = []
    gaps = paired_gap(main)
    for task, g in gaps[gaps["task"].isin(scale_tasks(main))].groupby("task", sort=False):
        s = _mean_sd(g, ["model", "parameters"], "gap").sort_values("parameters")
        trend = ", ".join(f"{r.model}: {r.mean:+.1f} ± {r.std:.1f}" for r in s.itertuples())
        lines.append(f"- **Scale ({task}).** Model tuning minus prompt tuning, by model size (pt): {trend}.")
    panel = task_panel(main)
    if len(panel):
        acc = _mean_sd(panel.assign(acc=100 * panel["test_acc"]), ["task", "method"], "acc")
        acc = acc.sort_values("method", key=lambda m: m.map(list(METHOD_LABELS).index), kind="stable")
        per_task = "; ".join(
            f"{task}: " + ", ".join(f"{METHOD_LABELS[r.method].lower()} {r.mean:.1f} ± {r.std:.1f} %"
                                    for r in g.itertuples())
            for task, g in acc.groupby("task", sort=False))
        lines.append(f"- **Task panel** ({', '.join(sorted(set(panel['model'])))}): {per_task}.")
    if len(abl):
        acc = abl.assign(acc=100 * abl["test_acc"])
        by_len = _mean_sd(acc[acc["prompt_init"] == base.prompt_init], ["prompt_length"], "acc")
        if len(by_len) > 1:
            lines.append("- **Prompt length** (" + abl["model"].iloc[0] + "): " + ", ".join(
                f"P = {r.prompt_length}: {r.mean:.1f} ± {r.std:.1f} %" for r in by_len.sort_values(
                    "prompt_length").itertuples()) + ".")
        by_init = _mean_sd(acc[acc["prompt_length"] == base.prompt_length], ["prompt_init"], "acc")
        if len(by_init) > 1:
            lines.append("- **Initialisation:** " + ", ".join(
                f"{INIT_LABELS[r.prompt_init]}: {r.mean:.1f} ± {r.std:.1f} %" for r in by_init.itertuples()) + ".")
    ens = runs[runs["ensemble_size"] > 1]
    if len(ens):
        lines.append(f"- **Ensembling:** the majority vote of {int(ens['ensemble_size'].iloc[0])} prompts is "
                     f"{mean_std(ens['ensemble_gain_over_mean'], 100)} pt above the average prompt and "
                     f"{mean_std(ens['ensemble_minus_best'], 100)} pt from the best prompt on test.")
    probe = main[main["method"] == "linear_probe"]
    if len(probe):
        lines.append(f"- **Linear probe:** {len(probe['model'].unique())} models, "
                     + ", ".join(f"{m}: {100 * g['test_acc'].mean():.1f} %" for m, g in probe.groupby("model"))
                     + "; prompt tuning's gain over it is the part the prompt adds to a trained head.")
    lines.append("- Timings come from a shared machine and are shown, never judged; see `tables/cost.csv`.")
    lines.append("- See `papers/prompt_tuning/README.md` for every deviation from the paper and the official "
                 "code.")
    return "\n".join(lines)
