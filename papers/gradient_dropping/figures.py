"""Gradient dropping's report: one function per figure or table, and `report` that assembles them."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from common import plots
from common.report import Report, aggregate, load_results, paper_vs_ours
from papers.gradient_dropping import PAPER

PAPER_ID = "gradient_dropping"
LABELS = {
    "dense": "dense", "drop90": "R=90%", "drop99": "R=99%", "drop999": "R=99.9%",
    "drop99_nores": "R=99%, no residual", "drop99_local": "R=99%, local",
    "dense_ln": "dense, LN", "drop99_ln": "R=99%, LN", "drop99_local_ln": "R=99%, local, LN",
    "central_ref": "central reference (1 worker)",
}
DROP_RATIOS = ["drop90", "drop99", "drop999"]
THRESHOLD_SETTINGS = ["drop99", "drop99_local", "drop99_ln", "drop99_local_ln"]
PAPER_SPEEDUP = 1.49  # "up to 49 % speed up on MNIST" [abs]


def _label(tflops: float, gbps: float) -> str:
    return f"{tflops:g} TFLOP/s, {gbps:g} Gb/s"


def modelled_time(frame: pd.DataFrame, tflops: float, gbps: float) -> pd.Series:
    """Seconds per worker: counted operations at `tflops` + bytes over its link at `gbps` (compute and
    communication not overlapped, workers in parallel)."""
    return frame["compute_ops"] / (tflops * 1e12) + 8 * frame["link_bytes"] / (gbps * 1e9)


def time_to_target(hist: pd.DataFrame, targets: dict[int, float], tflops: float, gbps: float) -> pd.Series:
    """Per run (setting, seed): modelled time at which test accuracy first reaches targets[seed], linearly
    interpolated between the two evaluations around the crossing; inf if never reached, NaN without a target."""
    out = {}
    for (setting, seed), run in hist.sort_values("step").groupby(["setting", "seed"]):
        if seed not in targets:
            out[(setting, seed)] = math.nan
            continue
        acc, time = run["test_acc"].to_numpy(), modelled_time(run, tflops, gbps).to_numpy()
        hit = np.flatnonzero(acc >= targets[seed])
        if not hit.size:
            out[(setting, seed)] = math.inf
        elif hit[0] == 0:
            out[(setting, seed)] = time[0]
        else:
            i = hit[0]
            share = (targets[seed] - acc[i - 1]) / (acc[i] - acc[i - 1])
            out[(setting, seed)] = time[i - 1] + share * (time[i] - time[i - 1])
    return pd.Series(out)


def with_time_model(hist: pd.DataFrame, summary: pd.DataFrame, model: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Adds the modelled times the claims and tables use: per run `time_to_target_s` and `speedup_to_target`
    (dense / this run, same seed) at `claim_at`, and `modelled_time_1gbps_s` (the whole run) at
    `illustrative_at`; per history row `modelled_time_s` at `claim_at`. Targets: each seed's dense final
    accuracy minus `target_tolerance`."""
    at, ill = model["claim_at"], model["illustrative_at"]
    dense = summary[summary["setting"] == "dense"].set_index("seed")["final_test_acc"]
    targets = (dense - model["target_tolerance"]).to_dict()
    reach = time_to_target(hist, targets, at["tflops"], at["gbps"])
    summary = summary.copy()
    keys = list(zip(summary["setting"], summary["seed"]))
    summary["time_to_target_s"] = [reach.get(k, math.nan) for k in keys]
    dense_reach = {seed: reach.get(("dense", seed), math.nan) for seed in summary["seed"]}
    summary["speedup_to_target"] = [dense_reach[s] / t for s, t in zip(summary["seed"], summary["time_to_target_s"])]
    summary["modelled_time_1gbps_s"] = modelled_time(summary, ill["tflops"], ill["gbps"])
    return hist.assign(modelled_time_s=modelled_time(hist, at["tflops"], at["gbps"])), summary


def speedups(hist: pd.DataFrame, summary: pd.DataFrame, model: dict) -> pd.DataFrame:
    """Tidy rows (tflops, gbps, setting, seed, run_ratio, speedup) for every swept rate and link: the whole-run
    modelled time ratio dense / R (fixed by the assumed constants) and the speed-up to the dense accuracy
    (dense / R time to target, paired by seed; 0 if R never gets there)."""
    dense = summary[summary["setting"] == "dense"].set_index("seed")
    targets = (dense["final_test_acc"] - model["target_tolerance"]).to_dict()
    rows = []
    for tflops in model["tflops"]:
        for gbps in model["gbps"]:
            reach = time_to_target(hist, targets, tflops, gbps)
            for setting in DROP_RATIOS:
                runs = summary[summary["setting"] == setting].set_index("seed")
                for seed in runs.index.intersection(dense.index):
                    ratio = (modelled_time(dense.loc[[seed]], tflops, gbps) / modelled_time(runs.loc[[seed]], tflops, gbps)).item()
                    rows.append({"tflops": tflops, "gbps": gbps, "setting": setting, "seed": seed, "run_ratio": ratio,
                                 "speedup": reach[("dense", seed)] / reach[(setting, seed)]})
    return pd.DataFrame(rows, columns=["tflops", "gbps", "setting", "seed", "run_ratio", "speedup"])


def table_time_sweep(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per (rate, link) and drop ratio: run time ratio and speed-up to the dense accuracy, mean ± std over seeds."""
    rows = []
    for (tflops, gbps), point in sweep.groupby(["tflops", "gbps"], sort=False):
        row = {"compute rate, link": _label(tflops, gbps)}
        for setting, runs in point.groupby("setting", sort=False):
            row[f"{LABELS[setting]}: run time ratio (x)"] = _mean_sd(runs["run_ratio"])
            row[f"{LABELS[setting]}: speed-up to dense acc. (x)"] = _mean_sd(runs["speedup"])
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_sd(values) -> str:
    values = np.asarray(list(values), dtype=float)
    sd = values.std(ddof=1) if values.size > 1 else 0.0
    return f"{values.mean():.2f} ± {sd:.2f}"


def speedup_reading(sweep: pd.DataFrame) -> str:
    """Where in the sweep R = 99 % clears the paper's 1.49x, from the runs."""
    points = sweep[sweep["setting"] == "drop99"].groupby(["tflops", "gbps"])["speedup"].agg(["mean", "std"])
    if points.empty:
        return ""
    below = [f"{_label(t, g)} ({m:.2f}x)" for (t, g), (m, _) in points.iterrows() if m < PAPER_SPEEDUP]
    return (f"- Across the sweep R = 99 % reaches the dense accuracy {points['mean'].min():.2f}x to "
            f"{points['mean'].max():.2f}x sooner; "
            + (f"below the paper's 1.49x at {', '.join(below)}, where compute dominates the step."
               if below else "above the paper's 1.49x at every swept rate and link.") + "\n")


def fig_speedup_sweep(sweep: pd.DataFrame, model: dict):
    """Speed-up to the dense accuracy vs link bandwidth, one panel per compute rate, the paper's 1.49x dashed
    (mean ± std over seeds of the runs that reach the target)."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(model["tflops"]), figsize=(4.8 * len(model["tflops"]), 3.6), sharey=True,
                             squeeze=False)
    reached = sweep[sweep["speedup"] > 0]
    for ax, tflops in zip(axes[0], model["tflops"]):
        for setting, runs in reached[reached["tflops"] == tflops].groupby("setting", sort=False):
            stats = runs.groupby("gbps")["speedup"].agg(["mean", "std"]).fillna(0.0)
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=LABELS[setting])
        ax.axhline(PAPER_SPEEDUP, color="k", ls="--", lw=1, label="paper: 1.49x")
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="link bandwidth (Gb/s, log)", title=f"{tflops:g} TFLOP/s",
               xticks=model["gbps"], xticklabels=[f"{b:g}" for b in model["gbps"]])
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0][0].set_ylabel("speed-up to dense accuracy (x, log)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Modelled speed-up over dense vs bandwidth (mean ± std over seeds)", y=1.02)
    return fig


def fig_accuracy_curves(hist: pd.DataFrame):
    """Test accuracy vs step: drop ratios, the residual, and threshold x LayerNorm, one panel each."""
    panels = {"drop ratio": ["dense", *DROP_RATIOS], "residual": ["dense", "drop99", "drop99_nores"],
              "threshold x LayerNorm": THRESHOLD_SETTINGS}
    frames = [hist[hist["setting"].isin(s)].assign(panel=p) for p, s in panels.items()]
    df = pd.concat(frames)
    df = df.assign(setting=df["setting"].map(LABELS), test_acc=100 * df["test_acc"])
    return plots.curves(df, "step", "test_acc", col="panel", ylabel="test accuracy (%)",
                        title="MNIST test accuracy vs server step (mean ± std over seeds)")


def fig_reference(hist: pd.DataFrame):
    """The regime's reference: the central run's test accuracy over its whole training."""
    df = hist[hist["setting"] == "central_ref"]
    df = df.assign(setting=df["setting"].map(LABELS), test_acc=100 * df["test_acc"])
    return plots.curves(df, "step", "test_acc", ylabel="test accuracy (%)", xlabel="step (batch 128)",
                        title="Central reference: is it flat at the end?")


def fig_bytes(summary: pd.DataFrame):
    df = summary[summary["setting"] != "central_ref"]
    df = df.assign(setting=df["setting"].map(LABELS), MB=df["bytes_up"] / 1e6)
    return plots.bars(df, "setting", "MB", ylabel="worker → server MB (log)", logy=True,
                      title="Bytes pushed by all workers over the run")


def fig_modelled_time(hist: pd.DataFrame, at: dict):
    df = hist[hist["setting"].isin(["dense", *DROP_RATIOS])]
    df = df.assign(setting=df["setting"].map(LABELS), test_acc=100 * df["test_acc"])
    return plots.curves(df, "modelled_time_s", "test_acc", ylabel="test accuracy (%)",
                        xlabel=f"modelled time (s): counted FLOPs at {at['tflops']:g} TFLOP/s + bytes at {at['gbps']:g} Gb/s",
                        title="Where the speed-up comes from: accuracy vs modelled time")


def _tensor_role(name: str, layer_norm: bool) -> str:
    """`net.<i>.weight` of common.models.MLP -> fc<k>.weight / ln<k>.weight (Flatten, Linear, [LayerNorm,] ReLU...)."""
    _, index, kind = name.split(".")
    stride = 3 if layer_norm else 2
    block, offset = divmod(int(index) - 1, stride)
    return f"{'fc' if offset == 0 else 'ln'}{block + 1}.{kind}"


def layer_densities(summary: pd.DataFrame) -> pd.DataFrame:
    """Tidy per-tensor densities (fraction of the tensor's entries sent per step) of the R = 99 % runs."""
    cols = [c for c in summary.columns if c.startswith("kept_")]
    keep = summary[summary["setting"].isin(THRESHOLD_SETTINGS)]
    df = keep.melt(id_vars=["setting", "seed"], value_vars=cols, var_name="tensor", value_name="kept").dropna()
    return df.assign(tensor=[_tensor_role(t.removeprefix("kept_"), s.endswith("_ln"))
                             for t, s in zip(df["tensor"], df["setting"])])


def fig_layer_density(dens: pd.DataFrame):
    """Fraction of each tensor's entries sent per step: a global threshold favours large-gradient tensors."""
    df = dens.assign(setting=dens["setting"].map(LABELS))
    order = sorted(df["tensor"].unique(), key=lambda t: (t[2:].split(".")[0], t[:2] == "ln", t))
    return plots.bars(df, "tensor", "kept", hue="setting", logy=True, ylabel="fraction of entries sent", order=order,
                      title="Per-tensor density at R = 99 % (global vs local threshold, ± LayerNorm)")


def layer_density_reading(dens: pd.DataFrame, claims: list[dict]) -> str:
    """What the per-tensor density figure shows for the global and the local threshold, with and without
    LayerNorm, computed from the runs, next to the accuracy claim it bears on."""
    quota = 0.01
    by_claim = {c["id"]: c for c in claims}
    lines = []
    for suffix, claim_id, name in (("", "local_needed_without_ln", "Without LayerNorm"),
                                   ("_ln", "global_with_ln_as_good_as_local", "With LayerNorm")):
        mean = dens[dens["setting"] == f"drop99{suffix}"].groupby("tensor")["kept"].mean()
        if mean.empty:
            continue
        high, low = mean.idxmax(), mean.idxmin()
        starved = sorted(t for t, v in mean.items() if v < quota / 2)
        text = (f"- {name}, the global threshold sends {100 * mean[high]:.2f} % of {high} ({mean[high] / quota:.1f}x "
                f"the 1 % quota) and {100 * mean[low]:.2f} % of {low} ({mean[low] / quota:.2f}x); "
                + (f"tensors under half the quota: {', '.join(starved)}." if starved
                   else "no tensor gets under half the quota."))
        local = dens[dens["setting"] == f"drop99_local{suffix}"].groupby("tensor")["kept"].mean()
        if not local.empty:
            text += (f" Local thresholds send between {100 * local.min():.2f} % ({local.idxmin()}) and "
                     f"{100 * local.max():.2f} % ({local.idxmax()}: a small tensor still sends one entry).")
        claim = by_claim.get(claim_id, {})
        sign = -1 if claim_id.startswith("global") else 1   # claims state global - local or local - global
        text += (f" Final accuracy, local minus global: {sign * 100 * claim['mean']:+.2f} ± {100 * claim['std']:.2f} pt "
                 f"({claim['verdict']})." if claim.get("n_seeds") else " The accuracy claim was not run at this scale.")
        lines.append(text)
    return "\n".join(lines) + "\n" if lines else ""


def table_results(summary: pd.DataFrame) -> pd.DataFrame:
    pct = aggregate(summary, ["final_test_acc", "best_test_acc"], scale=100)
    other = aggregate(summary, ["upload_reduction", "mean_density"], digits=3)
    mb = aggregate(summary, ["bytes_up"], scale=1e-6, digits=1)
    out = pct.merge(other, on=["setting", "seeds"]).merge(mb, on=["setting", "seeds"])
    out["setting"] = out["setting"].map(LABELS)
    return out.rename(columns={"final_test_acc": "final acc (%)", "best_test_acc": "best acc (%)",
                               "bytes_up": "MB pushed", "upload_reduction": "upload reduction (x)",
                               "mean_density": "density"})


def reference_reading(hist: pd.DataFrame) -> str:
    """Is the central reference converged? Its test accuracy over the last quarter of its steps."""
    ref = hist[hist["setting"] == "central_ref"].sort_values("step")
    if ref.empty:
        return "The central reference was not run at this scale."
    last = ref[ref["step"] > 0.75 * ref["step"].max()]
    acc = 100 * last["test_acc"]
    slope = np.polyfit(last["step"] / 1000, acc, 1)[0] if len(last) > 1 else math.nan
    return (f"The central reference ({int(ref['step'].max())} steps of batch 128, "
            f"{ref['step'].max() * 128 / 60000:.1f} epochs) ends at {acc.iloc[-1]:.2f} %; over its last quarter "
            f"({len(last)} evaluations) the test accuracy stays within {acc.min():.2f}–{acc.max():.2f} % and its "
            f"fitted slope is {slope:+.3f} pt per 1,000 steps (figure below).")


def seeds_text(records) -> str:
    """'[0, 1, 2] (dense / R=90%); [0] (central reference)': the seeds of each group of settings."""
    by_setting: dict[str, list[int]] = {}
    for r in records:
        by_setting.setdefault(r.setting, []).append(r.seed)
    groups: dict[tuple, list[str]] = {}
    for setting, seeds in by_setting.items():
        groups.setdefault(tuple(sorted(seeds)), []).append(LABELS[setting])
    return "; ".join(f"{list(seeds)} ({' / '.join(sorted(names))})" for seeds, names in groups.items())


def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, summary = load_results(PAPER_ID, results, scale)
    model = spec["time_model"]
    hist, summary = with_time_model(hist, summary, model)
    cfg = next(r.config for r in records if r.setting == "dense")
    step_flops = int(summary.loc[summary["setting"] == "dense", "step_flops"].iloc[0])
    drop_ops = int(summary.loc[summary["setting"] == "drop99", "dropping_ops"].iloc[0])
    at = model["claim_at"]
    rep = Report(out, "Gradient dropping (Aji & Heafield, 2017): sparse communication", PAPER, scale, PAPER_ID,
                 records)
    rep.section("Setup", f"""
Simulated synchronous data parallelism: {cfg['workers']} workers, each with an IID shard of MNIST and a batch of
{cfg['batch_size']}; every step each worker adds its residual to its gradient, keeps the entries above the
R-quantile of |g| estimated on a strided sample of ≤ {cfg['sample_size']:,} entries (Marian's GPU dropper,
`src/training/gradient_dropping/gpu/dropper.cu`) and pushes (int32 index, float32 value) pairs; the server
averages the messages and applies {cfg['optimizer'].upper()} (lr {cfg['lr']}). Model: MLP
784-{'-'.join(map(str, cfg['hidden']))}-10, optionally with LayerNorm after each hidden layer. {cfg['steps']} server
steps; seeds {seeds_text(records)}. Data set and model are the paper's task at every scale.

**Evaluation protocol.** {spec['protocol']}

**Modelled time, not measured.** Per worker and step: compute = the forward + backward matmul FLOPs counted by
torch's FlopCounterMode ({step_flops / 1e6:.1f} MFLOP) plus, when dropping, the dropper's own operations
({drop_ops / 1e6:.1f} M: six passes over the entries and an S log2 S sort of the sample, at the same rate, which
understates them: they are memory-bound); communication = the worker's push (the largest of the
{cfg['workers']}) + its fetch of the parameter delta. With SGD that delta is as sparse as the union of the pushed
indices, so it is counted as index+value pairs; dense runs push and fetch dense float32. Time = operations /
rate + bytes / bandwidth, swept over {', '.join(f'{r:g}' for r in model['tflops'])} TFLOP/s and
{', '.join(f'{b:g}' for b in model['gbps'])} Gb/s. The speed-up claim is computed at {_label(at['tflops'], at['gbps'])}
(a GPU-class rate and a PCIe-class link, like the paper's 4 GPUs in one machine) and shown as illustrative: both
rates are assumed, not measured, so they and not training set its value. No wall-clock time from this shared
machine enters any number.
""")
    rep.regime(spec, summary)
    rep.text(reference_reading(hist))
    if (hist["setting"] == "central_ref").any():
        rep.figure("reference", fig_reference(hist), "Central reference: test accuracy over its training")
    rep.section("The paper's numbers beside ours")
    rep.table("paper_vs_ours", paper_vs_ours(spec["reported"], summary), "Paper vs ours (provenance: [abs] = the paper's abstract, [mem] = recalled from the paper, unverified)")
    rep.section("Claims")
    rep.add_claims(spec["claims"], summary, spec)
    rep.section("Results")
    rep.table("results", table_results(summary), f"Final and best test accuracy and traffic ({scale})")
    sweep = speedups(hist, summary, model)
    rep.table("time_sweep", table_time_sweep(sweep),
              "Modelled speed-up over dense per compute rate and link (paired by seed): whole-run time ratio, and "
              "time to within 0.5 pt of the dense final accuracy")
    rep.figure("speedup_sweep", fig_speedup_sweep(sweep, model),
               "Speed-up to the dense accuracy vs bandwidth (runs that never reach it are left out); dashed: the "
               "paper's 1.49x")
    rep.figure("accuracy_curves", fig_accuracy_curves(hist), "Test accuracy vs step, mean ± std over seeds")
    rep.figure("bytes", fig_bytes(summary), "Bytes pushed per run (log scale); dots are seeds")
    rep.figure("modelled_time", fig_modelled_time(hist, at), "Accuracy vs modelled time at the claim's rate and link")
    dens = layer_densities(summary)
    rep.figure("layer_density", fig_layer_density(dens), "Fraction of each tensor sent per step at R = 99 %")
    rep.section("Reading the results", """
- The residual is what makes dropping work: without it 99 % of each gradient is lost for good, and the
  model trains on a hundredth of its signal.
- The bytes shrink by about 50x, not 100x, because every kept value travels with its index. The realised
  density is not exactly 1 % (the density column): the threshold comes from a strided sample that never sees
  the last entries of the flattened model (Marian's GPU sampling), whose gradients differ in scale.
- The speed-up is modelled from counted operations and bytes: the per-step ratio is fixed by the assumed rate
  and link (the "run time ratio" columns); only the number of steps to the target accuracy comes from training.
  Where compute dominates (a CPU-class rate on a fast link) dropping saves little; where the link dominates it
  saves up to the byte ratio. The paper's measured 1.49x includes overheads this model leaves out (kernel
  launches, the sparse scatter on the server, asynchrony).
""" + speedup_reading(sweep) + layer_density_reading(dens, rep.claims))
    rep.write()
