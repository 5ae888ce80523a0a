"""Gradient dropping's report: one function per figure or table, and `report` that assembles them."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common import plots
from common.report import Report, aggregate, load_results
from papers.gradient_dropping import PAPER

PAPER_ID = "gradient_dropping"
LABELS = {
    "dense": "dense", "drop90": "R=90%", "drop99": "R=99%", "drop999": "R=99.9%",
    "drop99_nores": "R=99%, no residual", "drop99_local": "R=99%, local",
    "dense_ln": "dense, LN", "drop99_ln": "R=99%, LN", "drop99_local_ln": "R=99%, local, LN",
}


def _present(df: pd.DataFrame, settings: list[str]) -> list[str]:
    return [LABELS[s] for s in settings if s in set(df["setting"])]


def fig_accuracy_curves(hist: pd.DataFrame):
    """Test accuracy vs step: drop ratios, the residual, and threshold x LayerNorm, one panel each."""
    panels = {"drop ratio": ["dense", "drop90", "drop99", "drop999"],
              "residual": ["dense", "drop99", "drop99_nores"],
              "threshold x LayerNorm": ["drop99", "drop99_local", "drop99_ln", "drop99_local_ln"]}
    frames = [hist[hist["setting"].isin(s)].assign(panel=p) for p, s in panels.items()]
    df = pd.concat(frames)
    df = df.assign(setting=df["setting"].map(LABELS), test_acc=100 * df["test_acc"])
    return plots.curves(df, "step", "test_acc", col="panel", ylabel="test accuracy (%)",
                        title="MNIST test accuracy vs server step (mean ± std over seeds)")


def fig_bytes(summary: pd.DataFrame):
    df = summary.assign(setting=summary["setting"].map(LABELS), MB=summary["bytes_up"] / 1e6)
    return plots.bars(df, "setting", "MB", ylabel="worker → server MB (log)", logy=True,
                      title="Bytes pushed by all workers over the run")


def fig_modelled_time(hist: pd.DataFrame):
    df = hist[hist["setting"].isin(["dense", "drop90", "drop99", "drop999"])]
    df = df.assign(setting=df["setting"].map(LABELS), test_acc=100 * df["test_acc"])
    return plots.curves(df, "modelled_time_s", "test_acc", xlabel="modelled time (s): compute/W + bytes / 1 Gb/s",
                        ylabel="test accuracy (%)", title="Where the speed-up comes from: accuracy vs modelled time")


def _tensor_role(name: str, layer_norm: bool) -> str:
    """`net.<i>.weight` of common.models.MLP -> fc<k>.weight / ln<k>.weight (Flatten, Linear, [LayerNorm,] ReLU...)."""
    _, index, kind = name.split(".")
    stride = 3 if layer_norm else 2
    block, offset = divmod(int(index) - 1, stride)
    return f"{'fc' if offset == 0 else 'ln'}{block + 1}.{kind}"


def fig_layer_density(summary: pd.DataFrame):
    """Fraction of each tensor's entries sent per step: a global threshold starves small-gradient layers."""
    cols = [c for c in summary.columns if c.startswith("kept_")]
    keep = summary[summary["setting"].isin(["drop99", "drop99_local", "drop99_ln", "drop99_local_ln"])]
    df = keep.melt(id_vars=["setting", "seed"], value_vars=cols, var_name="tensor", value_name="kept")
    df = df.dropna()
    df = df.assign(tensor=[_tensor_role(t.removeprefix("kept_"), s.endswith("_ln"))
                           for t, s in zip(df["tensor"], df["setting"])],
                   setting=df["setting"].map(LABELS))
    order = sorted(df["tensor"].unique(), key=lambda t: (t[2:].split(".")[0], t[:2] == "ln", t))
    return plots.bars(df, "tensor", "kept", hue="setting", logy=True, ylabel="fraction of entries sent", order=order,
                      title="Per-tensor density at R = 99 % (global vs local threshold, ± LayerNorm)")


def table_results(summary: pd.DataFrame) -> pd.DataFrame:
    pct = aggregate(summary, ["final_test_acc", "best_test_acc"], scale=100)
    other = aggregate(summary, ["upload_reduction", "mean_density", "modelled_time_s"], digits=3)
    mb = aggregate(summary, ["bytes_up"], scale=1e-6, digits=1)
    out = pct.merge(other, on=["setting", "seeds"]).merge(mb, on=["setting", "seeds"])
    out["setting"] = out["setting"].map(LABELS)
    return out.rename(columns={"final_test_acc": "final acc (%)", "best_test_acc": "best acc (%)",
                               "bytes_up": "MB pushed", "upload_reduction": "upload reduction (x)",
                               "mean_density": "density", "modelled_time_s": "modelled time (s)"})


def table_speedup(summary: pd.DataFrame) -> pd.DataFrame:
    """Modelled speed-up over dense, paired by seed: the paper's 'up to 49 %' on MNIST [abs]."""
    dense = summary[summary["setting"] == "dense"].set_index("seed")["modelled_time_s"]
    rows = []
    for setting, group in summary[summary["setting"].str.startswith("drop")].groupby("setting", sort=False):
        ratio = dense / group.set_index("seed")["modelled_time_s"]
        ratio = ratio.dropna()
        if len(ratio):
            rows.append({"setting": LABELS[setting], "speed-up vs dense (x)": f"{ratio.mean():.2f} ± {ratio.std(ddof=1) if len(ratio) > 1 else 0:.2f}",
                         "paper (MNIST, measured on 4 GPUs)": "up to 1.49x [abs]"})
    return pd.DataFrame(rows)


def robust_modelled_time(hist: pd.DataFrame, summary: pd.DataFrame, workers: int):
    """Replace the measured compute in the modelled time by each run's fastest per-step compute.

    Runs share the cores with other jobs, so a summed compute time carries their contention; the fastest
    logging interval's compute / steps (timeit's rule: the minimum is the least disturbed) carries the least.
    Communication time is kept as logged."""
    hist = hist.sort_values(["setting", "seed", "step"]).copy()
    per_step = (hist.groupby(["setting", "seed"])["compute_time_s"].diff().fillna(hist["compute_time_s"])
                / hist.groupby(["setting", "seed"])["step"].diff().fillna(hist["step"]))
    fastest = per_step.groupby([hist["setting"], hist["seed"]]).transform("min")
    comm = hist["modelled_time_s"] - hist["compute_time_s"] / workers
    hist["modelled_time_s"] = comm + hist["step"] * fastest / workers
    last = hist.groupby(["setting", "seed"]).tail(1).set_index(["setting", "seed"])["modelled_time_s"]
    summary = summary.copy()
    summary["modelled_time_s"] = [last[(s, k)] for s, k in zip(summary["setting"], summary["seed"])]
    return hist, summary


def _layer_norm_reading(claims: list[dict]) -> str:
    verdict = next((c["verdict"] for c in claims if c["id"] == "local_needed_without_ln"), None)
    if verdict in ("not reproduced", "inconclusive"):
        return ("- Without LayerNorm, on this small MLP the global threshold does not starve any layer badly enough "
                "to cost accuracy (see the per-tensor density figure): the paper's need for local thresholds came "
                "from NMT models, whose embedding and attention gradients differ in scale far more than the "
                "layers of an MNIST MLP.\n")
    return ""


def report(results: Path, out: Path, scale: str) -> None:
    spec, records, hist, summary = load_results(PAPER_ID, results, scale)
    hist, summary = robust_modelled_time(hist, summary, records[0].config["workers"])
    cfg = records[0].config
    rep = Report(out, "Gradient dropping (Aji & Heafield, 2017): sparse communication", PAPER, scale, PAPER_ID,
                 [r.commit for r in records])
    rep.section("Setup", f"""
Simulated synchronous data parallelism: {cfg['workers']} workers, each with an IID shard of MNIST and a batch of
{cfg['batch_size']}; every step each worker adds its residual to its gradient, keeps the entries above the
sampled R-quantile of |g| (≤ {cfg['sample_size']:,} samples, Marian's CPU dropper) and pushes (int32 index, float32
value) pairs; the server averages the messages and applies {cfg['optimizer'].upper()} (lr {cfg['lr']}).
Model: MLP 784-{'-'.join(map(str, cfg['hidden']))}-10, optionally with LayerNorm after each hidden layer.
{cfg['steps']} server steps, seeds {sorted({r.seed for r in records})}.

**Evaluation protocol.** {spec['protocol']}

**Modelled time** = the run's fastest measured compute per step (over its logging intervals, which discounts
other jobs sharing the cores) / {cfg['workers']} (workers run in parallel) + (largest push + fetch) / {cfg['bandwidth_gbps']} Gb/s. With SGD the fetched parameter delta is as sparse as the union of the pushed
indices, so the fetch is counted as index+value pairs too; dense runs push and fetch dense float32.
""")
    rep.paper_and_claims(spec, summary, "Paper vs ours (provenance tags: see shared/papers/README.md)")
    rep.section("Results")
    rep.table("results", table_results(summary), f"Final and best test accuracy, traffic and modelled time ({scale})")
    rep.table("speedup", table_speedup(summary), "Modelled speed-up over dense, paired by seed")
    rep.figure("accuracy_curves", fig_accuracy_curves(hist), "Test accuracy vs step, mean ± std over seeds")
    rep.figure("bytes", fig_bytes(summary), "Bytes pushed per run (log scale); dots are seeds")
    rep.figure("modelled_time", fig_modelled_time(hist), "Accuracy vs modelled wall-clock time")
    rep.figure("layer_density", fig_layer_density(summary), "Fraction of each tensor sent per step at R = 99 %")
    rep.section("Reading the results", """
- The residual is what makes dropping work: without it 99 % of each gradient is lost for good, and the
  model trains on a hundredth of its signal.
- The bytes shrink by about 50x, not 100x, because every kept value travels with its index.
- The per-tensor density figure shows why the paper needs LayerNorm for a global threshold: without it the
  threshold is set by the layers with the largest gradients, and the others send far fewer entries.
- The speed-up is modelled, not measured: on a 2-core CPU there is no network to save time on. It depends
  on the stated bandwidth and on how compute compares with communication, as the paper's own 49 % does.
  At R = 99 % communication dominates and the ratio is stable; at R = 99.9 % almost nothing is sent, compute
  dominates, and the ratio mostly reflects how loaded the shared CPU was while those runs measured their
  compute (the fastest interval discounts, but cannot remove, other jobs' load).
""" + _layer_norm_reading(rep.claims))
    rep.write()
