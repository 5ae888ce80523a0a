"""Figures in one style: seaborn on tidy frames, seed bands (± one std over seeds)."""
from __future__ import annotations

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")

# how a method id is shown in a legend (the papers' own spelling)
METHOD_NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedavgm": "FedAvgM", "fedntd": "FedNTD",
                "fedlsd": "FedLSD", "fedgen": "FedGen", "feddf": "FedDF", "fedavg_hetero": "FedAvg (hetero)",
                "feddf_hetero": "FedDF (hetero)", "feddistill": "FedDistill", "fedensemble": "FedEnsemble",
                "local": "Local only", "central": "Centralised"}
ROUND_AXES = ("round", "rounds", "step", "steps", "local_steps", "visits")


def _named(df: pd.DataFrame, hue: str | None, order):
    """Method ids in `hue` (and its order) shown by their papers' names."""
    if not hue or hue not in df or not df[hue].isin(list(METHOD_NAMES)).any():
        return df, order
    name = lambda v: METHOD_NAMES.get(v, v)  # noqa: E731
    return df.assign(**{hue: df[hue].map(name)}), [name(v) for v in order] if order is not None else None


def curves(df: pd.DataFrame, x: str, y: str, hue: str = "setting", *, col: str | None = None,
           title: str = "", xlabel: str | None = None, ylabel: str | None = None, logy: bool = False,
           hue_order=None, col_order=None, height: float = 3.6):
    """Line per `hue` (mean over seeds) with a ± 1 std band over seeds; one panel per `col` value. Each line
    has its own dash pattern too (two curves that overlap stay apart); rounds and steps tick at integers."""
    df, hue_order = _named(df, hue, hue_order)
    grid = sns.relplot(data=df, x=x, y=y, hue=hue, style=hue, col=col, kind="line", errorbar="sd", height=height,
                       aspect=1.35, hue_order=hue_order, style_order=hue_order, col_order=col_order,
                       markers=df[x].nunique() <= 30, dashes=True, facet_kws={"sharey": True})
    grid.set_axis_labels(xlabel or x, ylabel or y)
    if x in ROUND_AXES:
        for ax in grid.axes.flat:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if col:
        grid.set_titles("{col_name}")
    if logy:
        grid.set(yscale="log")
    if title:
        grid.figure.suptitle(title, y=1.03)
    return grid.figure


def bars(df: pd.DataFrame, x: str, y: str, hue: str | None = None, *, title: str = "", ylabel: str | None = None,
         logy: bool = False, order=None):
    """Bar of the mean over seeds with a ± 1 std error bar, seeds as dots; the legend sits outside the axes so
    it never covers a bar."""
    df, order = _named(df, x, order)
    df, _ = _named(df, hue, None)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * df[x].nunique() + 2), 3.6))
    sns.barplot(data=df, x=x, y=y, hue=hue, errorbar="sd", ax=ax, order=order, capsize=0.15, alpha=0.85)
    dots = {"palette": "dark:k"} if hue else {"color": "k"}
    sns.stripplot(data=df, x=x, y=y, hue=hue, dodge=hue is not None, ax=ax, order=order, size=3, legend=False,
                  **dots)
    ax.set_ylabel(ylabel or y)
    ax.set_xlabel("")
    if logy:
        ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(title)
    if hue and ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def partition_heatmap(counts: np.ndarray, title: str = ""):
    """Client-by-class sample counts [clients, classes] as a heatmap."""
    n_clients, n_classes = counts.shape
    fig, ax = plt.subplots(figsize=(min(12, 1.2 + 0.45 * n_classes), min(10, 1.0 + 0.28 * n_clients)))
    sns.heatmap(counts, ax=ax, cmap="viridis", cbar_kws={"label": "samples"}, annot=n_clients * n_classes <= 200,
                fmt="d", annot_kws={"size": 6})
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(title)
    return fig
