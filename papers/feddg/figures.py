"""FedDG's report: one function per table or figure, and `report` that assembles them."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from common import plots
from common.report import Report, aggregate, load_results, mean_std, summary_rows
from papers.feddg import PAPER, fourier
from papers.feddg.config import PAPER_ID
from papers.feddg.domains import build_domain, unit_float

METHOD_LABELS = {"fedavg": "FedAvg", "amplitude_mix": "FedAvg + CFSI", "episodic": "+ episodic learning",
                 "feddg": "FedDG (ELCFS)", "central": "Centralised (all sources)"}
METHOD_ORDER = list(METHOD_LABELS)
DOMAIN_NAMES = {"mnist": "MNIST", "usps": "USPS", "mnist_m": "MNIST-M", "styled_mnist": "styled MNIST"}
DEFAULT_BAND = 0.05
SIDE = 32


# ------------------------------------------------------------------------------------------------- the frames
def runs_frame(records) -> pd.DataFrame:
    """One row per run: setting, seed, the config values the report groups by, and the scalar summary."""
    def columns(r) -> dict:
        c = r.config
        return {"task": c["task"], "unseen": c["unseen"], "method": c["method"], "transform": c["freq_transform"],
                "band": c["band"], "local_epochs": c["local_epochs"], "label": label(c),
                "wall_time_s": r.wall_time_s}
    return summary_rows(records, columns)


def label(c: dict) -> str:
    """A run's method as the tables show it, with its variant (DC swap, band, reference)."""
    name = METHOD_LABELS[c["method"]]
    if c["method"] in ("amplitude_mix", "episodic", "feddg"):
        if c["freq_transform"] == "dc_swap":
            return name + ", DC-only swap (the code)"
        if c["band"] != DEFAULT_BAND:
            return name + f", L = {c['band']:g}"
    if c["local_epochs"] > 1:
        return name + f", {c['local_epochs']} local epochs (reference)"
    return name


def box_side(band: float) -> int:
    """Side of the low-frequency box on 32 px images (`low_frequency_mask`: 2 floor(32 L) + 1)."""
    return 2 * int(np.floor(SIDE * band)) + 1


def ordered(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs sorted by unseen domain, then method rung, then variant."""
    key = runs.assign(_d=runs["unseen"].map(list(DOMAIN_NAMES).index), _m=runs["method"].map(METHOD_ORDER.index))
    return key.sort_values(["_d", "_m", "label", "seed"], kind="stable").drop(columns=["_d", "_m"])


# ------------------------------------------------------------------------------------------------- the tables
def table_segmentation(runs: pd.DataFrame) -> pd.DataFrame:
    """Per unseen domain and method, mean ± std over seeds: Dice (%) and HD95 (px) at the final round and at
    the best-Dice round on the test site, the seen domains' Dice, the share of empty predictions."""
    seg = ordered(runs[runs["task"] == "segmentation"])
    if seg.empty:
        return pd.DataFrame()
    out = aggregate(seg, ["final_dice", "best_dice", "final_seen_dice", "final_empty"], scale=100, digits=1)
    out = out.merge(aggregate(seg, ["final_hd95", "best_hd95"], digits=2).drop(columns="seeds"), on="setting")
    first = seg.drop_duplicates("setting").set_index("setting")
    out.insert(1, "unseen domain", out["setting"].map(first["unseen"]).map(DOMAIN_NAMES))
    out.insert(2, "method", out["setting"].map(first["label"]))
    return out[["setting", "unseen domain", "method", "seeds", "final_dice", "best_dice", "final_hd95", "best_hd95",
                "final_seen_dice", "final_empty"]].rename(columns={
        "final_dice": "Dice, final (%)", "best_dice": "Dice, best round (%)", "final_hd95": "HD95, final (px)",
        "best_hd95": "HD95 at the best round (px)", "final_seen_dice": "seen domains' Dice, final (%)",
        "final_empty": "empty predictions, final (%)"})


def paired_gain(runs: pd.DataFrame, setting: str, base: str, metric: str, scale: float = 100) -> str:
    """setting − base, paired by seed: 'mean ± std' (or '-' when either is missing)."""
    a = runs[runs["setting"] == setting].set_index("seed")[metric]
    b = runs[runs["setting"] == base].set_index("seed")[metric]
    both = a.index.intersection(b.index)
    if setting == base or both.empty:
        return "-"
    return mean_std((a[both] - b[both]).to_numpy(), scale, 1 if scale == 100 else 2)


def table_ablation(runs: pd.DataFrame, unseen: str = "mnist_m") -> pd.DataFrame:
    """The paper's ablation on one left-out domain: each component added in turn, then the frequency transform
    (the code's DC-only swap) and the band L; Dice and HD95 with the gain over FedAvg paired by seed."""
    seg = ordered(runs[(runs["task"] == "segmentation") & (runs["unseen"] == unseen) & (runs["local_epochs"] == 1)
                       & (runs["method"] != "central")])
    base = seg[seg["method"] == "fedavg"]["setting"]
    if seg.empty or base.empty:
        return pd.DataFrame()
    base = base.iloc[0]
    rows = []
    for setting, g in seg.groupby("setting", sort=False):
        r = g.iloc[0]
        mixes = r["method"] != "fedavg"
        rows.append({"setting": setting, "method": r["label"], "CFSI": "✓" if mixes else "",
                     "episodic": "✓" if r["method"] in ("episodic", "feddg") else "",
                     "boundary loss": "✓" if r["method"] == "feddg" else "",
                     "transform": ("DC swap (λ = 1)" if r["transform"] == "dc_swap" else
                                   f"L = {r['band']:g} ({box_side(r['band'])} × {box_side(r['band'])} box)")
                     if mixes else "-",
                     "Dice, final (%)": mean_std(g["final_dice"], 100, 1),
                     "Dice − FedAvg (pt)": paired_gain(runs, setting, base, "final_dice"),
                     "Dice, best round (%)": mean_std(g["best_dice"], 100, 1),
                     "HD95, final (px)": mean_std(g["final_hd95"]),
                     "HD95 − FedAvg (px)": paired_gain(runs, setting, base, "final_hd95", 1)})
    if (seg["band"] == 0).any():
        rows.append({"setting": "-", "method": "FedDG (ELCFS), L = 0.01", "CFSI": "✓", "episodic": "✓",
                     "boundary loss": "✓", "transform": "L = 0.01 (1 × 1 box)",
                     "Dice, final (%)": "= L = 0: on 32 px floor(0.32) = 0, the same box, not run twice"})
    return pd.DataFrame(rows).fillna("")


def table_classification(runs: pd.DataFrame) -> pd.DataFrame:
    """Per unseen domain and method: top-1 accuracy (%) at the final and the best round, the seen domains'."""
    cls = ordered(runs[runs["task"] == "classification"])
    if cls.empty:
        return pd.DataFrame()
    out = aggregate(cls, ["final_test_acc", "best_test_acc", "final_seen_acc"], scale=100, digits=1)
    first = cls.drop_duplicates("setting").set_index("setting")
    out.insert(1, "unseen domain", out["setting"].map(first["unseen"]).map(DOMAIN_NAMES))
    out.insert(2, "method", out["setting"].map(first["label"]))
    return out.rename(columns={"final_test_acc": "accuracy, final (%)", "best_test_acc": "accuracy, best round (%)",
                               "final_seen_acc": "seen domains' accuracy, final (%)"})


# ------------------------------------------------------------------------------------------------ the figures
def fig_curves(hist: pd.DataFrame, runs: pd.DataFrame, task: str):
    """Unseen-domain Dice (segmentation) or accuracy (classification) after every round, mean ± std over
    seeds, one panel per left-out domain (the references left out)."""
    main = runs[(runs["task"] == task) & (runs["local_epochs"] == 1)].drop_duplicates("setting")
    df = hist[hist["setting"].isin(main["setting"])].merge(main[["setting", "label", "unseen"]], on="setting")
    metric, name = ("test_dice", "unseen-domain Dice (%)") if task == "segmentation" else (
        "test_acc", "unseen-domain accuracy (%)")
    df = df.assign(**{name: 100 * df[metric], "left out": df["unseen"].map(DOMAIN_NAMES), "method": df["label"]})
    order = list(dict.fromkeys(ordered(main)["label"]))
    return plots.curves(df, "round", name, hue="method", col="left out", hue_order=order,
                        title=f"{task.capitalize()}: the averaged model on the unseen domain after every round")


def fig_dice_per_domain(runs: pd.DataFrame):
    """Each main method's final unseen-domain Dice minus FedAvg's (same left-out domain, same seed), seeds as
    dots: the differences are a few points on a scale of 100, so they are drawn, not the levels (the table)."""
    seg = ordered(runs[(runs["task"] == "segmentation") & (runs["local_epochs"] == 1)
                       & (runs["label"].isin(METHOD_LABELS.values()))])
    fedavg = seg[seg["method"] == "fedavg"].set_index(["unseen", "seed"])["final_dice"]
    keyed = seg.set_index(["unseen", "seed"]).index
    gain = 100 * (seg["final_dice"].to_numpy() - fedavg.reindex(keyed).to_numpy())
    df = seg.assign(**{"Dice − FedAvg (pt)": gain, "left out": seg["unseen"].map(DOMAIN_NAMES),
                       "method": seg["label"]})
    df = df[(df["method"] != METHOD_LABELS["fedavg"]) & df["Dice − FedAvg (pt)"].notna()]
    fig = plots.bars(df, "left out", "Dice − FedAvg (pt)", hue="method",
                     title="Unseen-domain Dice at the final round minus FedAvg's, paired by seed (mean ± std)")
    fig.axes[0].axhline(0.0, color="k", linewidth=0.8)
    return fig


def fig_interpolation(config: dict, seed: int = 0):
    """Each source client's first training image restyled towards the next client's first image: CFSI (Eq. 2)
    at lam = 0.25 ... 1 with the run's band L, L = 0.1 at lam = 1, and the code's DC-only swap."""
    sources = [d for d in config["domains"] if d != config["unseen"]]
    images = torch.stack([unit_float(build_domain(d, config["n_train"], config["n_test"], seed)[0].x[0])
                          for d in sources])                                          # [K, 3, H, W]
    partner = fourier.amplitude_phase(images.roll(-1, 0))[0]                          # the next client's
    columns = [("original", images)]
    for lam in (0.25, 0.5, 0.75, 1.0):
        columns.append((f"L = {config['band']:g}, λ = {lam:g}", fourier.frequency_interpolate(
            images, partner, config["band"], torch.full((len(images),), lam))))
    columns.append(("L = 0.1, λ = 1", fourier.frequency_interpolate(images, partner, 0.1, torch.ones(len(images)))))
    columns.append(("DC swap (code)", fourier.dc_swap(images, partner)))
    columns.append(("partner", images.roll(-1, 0)))
    fig, axes = plt.subplots(len(sources), len(columns), figsize=(1.5 * len(columns), 1.6 * len(sources)))
    for j, (title, x) in enumerate(columns):
        for i in range(len(sources)):
            ax = axes[i, j]
            ax.imshow(x[i].clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{DOMAIN_NAMES[sources[i]]}\n→ {DOMAIN_NAMES[sources[(i + 1) % len(sources)]]}",
                              fontsize=8)
    fig.suptitle("Continuous frequency space interpolation: a client's image in another client's style "
                 "(phase kept)", fontsize=9)
    return fig


def fig_predictions(records, unseen: str):
    """The first unseen test images of seed 0, their stroke masks and each main method's final prediction."""
    chosen = {}
    for r in records:
        c = r.config
        if (r.seed == 0 and c["task"] == "segmentation" and c["unseen"] == unseen and c["local_epochs"] == 1
                and label(c) in METHOD_LABELS.values() and "example_masks" in r.summary):
            chosen[label(c)] = (c, r.summary["example_masks"])
    if not chosen:
        return None
    order = [m for m in METHOD_LABELS.values() if m in chosen]
    config = chosen[order[0]][0]
    test = build_domain(unseen, config["n_train"], config["n_test"], 0)[1]
    n = len(chosen[order[0]][1])
    panels = [("image", lambda i: test.x[i].permute(1, 2, 0).numpy()), ("ground truth", lambda i: test.mask[i, 0])]
    panels += [(m, lambda i, m=m: np.array([[ch == "1" for ch in row] for row in chosen[m][1][i]])) for m in order]
    fig, axes = plt.subplots(n, len(panels), figsize=(1.45 * len(panels), 1.45 * n))
    for j, (title, show) in enumerate(panels):
        for i in range(n):
            axes[i, j].imshow(show(i), cmap=None if j == 0 else "gray")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(title, fontsize=7)
    fig.suptitle(f"{DOMAIN_NAMES[unseen]} left out: predicted stroke masks of the final models (seed 0)", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------- the report
def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, _ = load_results(PAPER_ID, results, scale)
    runs = runs_frame(records)
    seg_cfg = next((r.config for r in records if r.config["task"] == "segmentation"), records[0].config)
    rep = Report(out, "FedDG (Liu, Chen, Qin, Dou and Heng, CVPR 2021): episodic learning in continuous "
                 "frequency space", PAPER, scale, PAPER_ID, records)
    rep.section("Setup", setup(seg_cfg, runs, spec))
    rep.paper_and_claims(spec, runs, "The paper's numbers (none verified: its Tables 1-2 were not read here) and our digit analogue "
                         "beside them; ours: mean ± std over seeds, final round")
    rep.section("Results")
    for name, table, caption in (
            ("ablation", table_ablation(runs), "The ablation with MNIST-M left out: each component added in turn, "
             "the frequency transform and the band L; gains over FedAvg paired by seed"),
            ("segmentation", table_segmentation(runs), "Segmentation per unseen domain: Dice and HD95 at the final "
             "round and at the best round on the test site (the code's evaluation allows that selection)"),
            ("classification", table_classification(runs), "Classification per unseen domain: top-1 accuracy")):
        if len(table):
            rep.table(name, table, caption)
    for task in ("segmentation", "classification"):
        if (runs["task"] == task).any():
            rep.figure(f"curves_{task}", fig_curves(hist, runs, task),
                       f"{task.capitalize()}: the unseen domain after every round, mean ± std over seeds")
    if (runs["task"] == "segmentation").any():
        rep.figure("dice_per_domain", fig_dice_per_domain(runs), "Final unseen-domain Dice minus FedAvg's per "
                   "left-out domain, paired by seed")
        rep.figure("interpolation", fig_interpolation(seg_cfg),
                   "Original and amplitude-mixed images: CFSI at several λ, a wider band, the code's DC swap")
        for unseen in DOMAIN_NAMES:
            fig = fig_predictions(records, unseen)
            if fig is not None:
                rep.figure(f"predictions_{unseen}", fig, f"{DOMAIN_NAMES[unseen]} left out: images, stroke masks "
                           "and the final models' predicted masks (seed 0)")
    rep.section("Reading the results", reading(runs))
    rep.write()


def setup(cfg: dict, runs: pd.DataFrame, spec: dict) -> str:
    seeds = sorted(set(runs[runs["local_epochs"] == 1]["seed"]))
    left_out = ", ".join(DOMAIN_NAMES[d] for d in dict.fromkeys(ordered(runs)["unseen"]))
    return f"""
Digit domains stand in for the paper's hospitals (`papers/feddg/domains.py`): MNIST, USPS, MNIST-M and a
restyled MNIST, every image 3 × 32 × 32 with its stroke mask (the pixels where the grey digit has ink). One
client per source domain ({cfg['n_train']:,} training images each), the left-out domain's {cfg['n_test']:,} test
images only test; left out here: {left_out}. Segmentation: the official U-Net (instance norm) of width
{cfg['width']} and {cfg['depth']} levels, sigmoid output, soft Dice loss; classification: its encoder, a hidden
layer and a linear head, cross-entropy. Every round each source client trains {cfg['local_epochs']} local
epoch(s) (batch {cfg['batch_size']}, Adam lr {cfg['lr']:g} kept per client), then the server averages the
parameters by client size; {cfg['rounds']} rounds. CFSI: Eq. 2 as corrected by the authors, λ ~ U(0, 1), band L =
{cfg['band']:g} (a {box_side(cfg['band'])} × {box_side(cfg['band'])} box on 32 px, the demo's 3 × 3 box on 384 px),
partners from a bank of {cfg['bank_fraction']:g} of every other client's amplitude spectra; episodic step: meta step
{cfg['meta_step_size']:g}, gradients clamped to ±{cfg['clip_value']:g}, first order; contrastive loss weight
{cfg['contrast_weight']:g}, τ = {cfg['contrast_tau']:g}. Seeds {seeds}; the references one seed. Mean wall time per
run {runs['wall_time_s'].mean():.0f} s ({len(runs)} runs on a shared machine: not a measurement of the methods'
cost). Data substitution and every deviation from the paper and the code: `papers/feddg/README.md`.

**Evaluation protocol.** {spec['protocol']}
"""


def _mean(runs: pd.DataFrame, setting: str, metric: str, scale: float = 100) -> float:
    rows = runs[runs["setting"] == setting]
    return float(scale * rows[metric].mean()) if not rows.empty and metric in rows else float("nan")


def reading(runs: pd.DataFrame) -> str:
    """What the numbers say, written from the results (so it stays true at any scale)."""
    have = set(runs["setting"])
    lines = []
    rungs = [s for s in ("mnistm_fedavg", "mnistm_amplitude_mix", "mnistm_episodic", "mnistm_feddg") if s in have]
    if len(rungs) > 1:
        lines.append("- **The ablation (MNIST-M left out), final Dice**: " + " → ".join(
            f"{runs[runs['setting'] == s]['label'].iloc[0]} {_mean(runs, s, 'final_dice'):.1f} %" for s in rungs)
            + ".")
    if {"mnistm_feddg", "mnistm_feddg_dc"} <= have:
        lines.append(f"- **The code's DC-only swap** gives {_mean(runs, 'mnistm_feddg_dc', 'final_dice'):.1f} % "
                     f"against {_mean(runs, 'mnistm_feddg', 'final_dice'):.1f} % with the 3 × 3 band. A DC swap "
                     "changes only each channel's mean; the U-Net's first convolution turns that into a constant "
                     "per output channel (but near the zero-padded border), which the instance norm after it "
                     "removes, so the network sees nearly the raw image again (tests/test_feddg.py: the first "
                     "normalised features move a tenth as much as under the 3 × 3 band).")
    if {"mnistm_fedavg", "mnistm_central"} <= have:
        lines.append(f"- **Seen vs unseen**: FedAvg scores {_mean(runs, 'mnistm_fedavg', 'final_seen_dice'):.1f} % "
                     f"Dice on its source domains' test images and {_mean(runs, 'mnistm_fedavg', 'final_dice'):.1f} % "
                     f"on MNIST-M; centralised training on all sources scores "
                     f"{_mean(runs, 'mnistm_central', 'final_seen_dice'):.1f} % and "
                     f"{_mean(runs, 'mnistm_central', 'final_dice'):.1f} %.")
    if {"mnistm_fedavg", "mnistm_feddg"} <= have:
        gap = lambda s: _mean(runs, s, "best_dice") - _mean(runs, s, "final_dice")  # noqa: E731
        lines.append(f"- **Best round vs final**: selecting the best round on the test site adds "
                     f"{gap('mnistm_fedavg'):.1f} pt to FedAvg and {gap('mnistm_feddg'):.1f} pt to FedDG.")
    if {"cls_mnistm_fedavg", "cls_mnistm_feddg"} <= have:
        lines.append(f"- **Classification (MNIST-M left out)**: FedAvg "
                     f"{_mean(runs, 'cls_mnistm_fedavg', 'final_test_acc'):.1f} %, FedDG "
                     f"{_mean(runs, 'cls_mnistm_feddg', 'final_test_acc'):.1f} % (seen domains: "
                     f"{_mean(runs, 'cls_mnistm_fedavg', 'final_seen_acc'):.1f} % and "
                     f"{_mean(runs, 'cls_mnistm_feddg', 'final_seen_acc'):.1f} %).")
    lines.append("- **Scale.** Digits, not fundus or prostate images: none of the paper's own numbers was verified "
                 "here, so no number of ours is compared with one of theirs; the claims test the paper's "
                 "orderings on our domains.")
    return "\n".join(lines)
