"""A paper's report: `reports/<paper>/README.md`, `figures/*.png`, `tables/*.csv` and `claims.json`.

Claims come from the paper's experiments.yaml and are checked on the run summaries, paired by seed
(the same seed means the same partition, initialisation and client sampling in every setting):

    - id: drop99_matches_dense
      text: 99 % dropping reaches the dense accuracy
      metric: final_test_acc
      kind: not_worse          # greater | not_worse | ratio_at_least | gap_greater
      a: drop99
      b: dense
      margin: 0.005            # greater/not_worse: in the metric's units; ratio_at_least: the ratio
      origin: paper            # paper | check | illustrative
      # gap_greater only: c, d -- claim (a - b) > (c - d) + margin; greater without b: a itself > margin

`origin` says where a claim comes from: `paper` (the paper states it), `check` (our own control or
ablation) or `illustrative` (true by construction or set by an assumed constant: shown with its value,
never judged, never counted).

Verdicts are symmetric in the spread: with d_s the per-seed statistic (difference or ratio) and sd its
standard deviation over seeds (ddof 1),
- greater:        reproduced if mean(d) - sd > margin; not reproduced if mean(d) + sd < margin; else inconclusive.
- gap_greater:    as greater, on d_s = (a - b) - (c - d).
- not_worse:      reproduced if mean(d) - sd >= -margin; not reproduced if mean(d) + sd < -margin; else inconclusive.
- ratio_at_least: reproduced if mean(r) - sd >= margin; not reproduced if mean(r) + sd < margin; else inconclusive.

The regime (experiments.yaml `regime:`): for each baseline, our accuracy at this scale against the reference
it should approach (the paper's verified number, or the mean of a reference setting: the same model trained
centrally to convergence). A report whose best ratio is under REGIME_FLOOR says so at its top.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from common.experiments import CLAIM_KINDS, ORIGINS
from common.results import atomic_write_text, git_commit

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOT_JUDGED = "shown, not judged (illustrative)"
NOT_RUN = "not run at this scale"
REGIME_FLOOR = 0.9


def _per_seed(summary: pd.DataFrame, setting: str, metric: str) -> pd.Series:
    rows = summary[summary["setting"] == setting]
    if rows.empty:  # a setting this scale does not run: the claim is judged on no seeds
        return pd.Series(dtype=float)
    if metric not in rows:
        raise KeyError(f"metric {metric!r} not in the run summaries; have {', '.join(rows.columns)}")
    return rows.set_index("seed")[metric].astype(float)


def claim_statistic(claim: dict, summary: pd.DataFrame) -> pd.Series:
    """The per-seed statistic a claim is judged on (difference, gap of differences, or ratio; a `greater`
    claim without `b` judges the metric of `a` itself against the margin)."""
    kind = claim["kind"]
    if kind not in CLAIM_KINDS:
        raise ValueError(f"claim {claim.get('id')!r}: unknown kind {kind!r}; use one of {CLAIM_KINDS}")
    get = lambda key: _per_seed(summary, claim[key], claim["metric"])  # noqa: E731
    if kind == "ratio_at_least":
        stat = get("a") / get("b")
    elif kind == "gap_greater":
        stat = (get("a") - get("b")) - (get("c") - get("d"))
    else:
        stat = get("a") - get("b") if "b" in claim else get("a")
    return stat.dropna()


def verdict(kind: str, values: pd.Series | np.ndarray, margin: float = 0.0) -> str:
    """Reproduced / not reproduced / inconclusive from per-seed values (see the module docstring)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return INCONCLUSIVE
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    if kind in ("greater", "gap_greater"):
        low, high, bar, strict = mean - sd, mean + sd, margin, True
    elif kind == "not_worse":
        low, high, bar, strict = mean - sd, mean + sd, -margin, False
    elif kind == "ratio_at_least":
        low, high, bar, strict = mean - sd, mean + sd, margin, False
    else:
        raise ValueError(f"unknown claim kind {kind!r}; use one of {CLAIM_KINDS}")
    if low > bar or (not strict and low == bar):
        return REPRODUCED
    return NOT_REPRODUCED if high < bar else INCONCLUSIVE


def check_origin(claim: dict) -> str:
    origin = claim.get("origin")
    if origin not in ORIGINS:
        raise ValueError(f"claim {claim.get('id')!r}: origin {origin!r}; give `origin:` one of {', '.join(ORIGINS)}")
    return origin


def evaluate_claims(claims: list[dict], summary: pd.DataFrame) -> list[dict]:
    """Each claim with its per-seed statistic, mean, std and verdict (`illustrative` claims get no verdict)."""
    out = []
    for claim in claims:
        origin = check_origin(claim)
        stat = claim_statistic(claim, summary)
        margin = float(claim.get("margin", 0.0))
        if not len(stat):
            judged = NOT_RUN
        elif origin == "illustrative":
            judged = NOT_JUDGED
        else:
            judged = verdict(claim["kind"], stat, margin)
        out.append({**claim, "verdict": judged,
                    "mean": float(stat.mean()) if len(stat) else None,
                    "std": float(stat.std(ddof=1)) if len(stat) > 1 else 0.0,
                    "n_seeds": int(len(stat)), "per_seed": {int(k): float(v) for k, v in stat.items()}})
    return out


def mean_std(values, scale: float = 1.0, digits: int = 2) -> str:
    values = np.asarray(values, dtype=float) * scale
    if values.size == 0 or np.all(np.isnan(values)):
        return "n/a"
    values = values[~np.isnan(values)]
    sd = values.std(ddof=1) if values.size > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {sd:.{digits}f}"


def aggregate(summary: pd.DataFrame, metrics: list[str], scale: float = 1.0, digits: int = 2) -> pd.DataFrame:
    """Per setting: 'mean ± std' over seeds of each metric, and the number of seeds."""
    rows = []
    for setting, group in summary.groupby("setting", sort=False):
        row = {"setting": setting, "seeds": len(group)}
        row.update({m: mean_std(group[m], scale, digits) for m in metrics})
        rows.append(row)
    return pd.DataFrame(rows)


def paper_vs_ours(reported: list[dict], summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's numbers (with provenance tags) beside ours: mean ± std over seeds of the same quantity.

    Each entry of `reported`: {quantity, paper, source, setting?, metric?, scale? (multiplier for ours)}."""
    rows = []
    for item in reported:
        ours_setting = item.get("setting") not in (None, "", "-")
        ours = "not run" if ours_setting else "-"   # "-": a reference number with nothing of ours beside it
        if ours_setting and item.get("metric"):
            rows_ = summary[summary["setting"] == item["setting"]]
            if not rows_.empty and item["metric"] in rows_:
                ours = mean_std(rows_[item["metric"]], item.get("scale", 1.0), item.get("digits", 2))
                ours += f" (n={len(rows_)})"
        rows.append({"quantity": item["quantity"], "paper": item["paper"], "source": item["source"],
                     "ours (mean ± std over seeds)": ours, "our setting": item.get("setting", "-")})
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                v = "n/a" if math.isnan(v) else f"{v:.4g}"
            cells.append(str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_rows(records, columns) -> pd.DataFrame:
    """One row per run: setting, seed, `columns(record)` (the config values a report groups by) and the run's
    scalar summary (lists and dicts left out)."""
    return pd.DataFrame([{"setting": r.setting, "seed": r.seed, **columns(r),
                          **{k: v for k, v in r.summary.items() if not isinstance(v, (list, dict))}}
                         for r in records])


def load_results(paper: str, results: Path, scale: str):
    """(experiments spec, run records, per-step frame, per-run frame) of a paper's results folder, keeping
    only the settings the scale runs now (a setting since removed from experiments.yaml may linger there)."""
    from common import experiments
    from common.results import history_frame, load_records, summary_frame

    current = set(experiments.settings(paper, scale))
    records = [r for r in load_records(Path(results).glob("*/seed*.json")) if r.setting in current]
    if not records:
        raise experiments.ConfigError(f"no run records under {results}: run the workflow first "
                                      f"(snakemake reports/{paper})")
    return experiments.experiments(paper), records, history_frame(records), summary_frame(records)


def reproduce_command(paper: str, scale: str) -> str:
    """The command that regenerates a report (see common/workflow.py for the paths)."""
    if scale == "quick":
        return f"make reports/{paper}   (= snakemake -c2 reports/{paper})"
    return f"make reports/{paper} SCALE={scale}   (= snakemake -c2 reports/{scale}/{paper} --config scale={scale})"


def regime_table(entries: list[dict], summary: pd.DataFrame) -> pd.DataFrame:
    """Rows `baseline, setting, ours, reference, reference_source, ratio` (ours and reference are means over
    seeds; ratio = ours / reference). Each entry of experiments.yaml's `regime`: {baseline, setting, metric,
    reference (a number) or reference_setting (a setting whose mean is the reference), reference_source}."""
    def mean_of(setting, metric):
        values = _per_seed(summary, setting, metric)
        return float(values.mean()) if len(values) else float("nan")

    rows = []
    for e in entries:
        ours = mean_of(e["setting"], e["metric"])
        ref = float(e["reference"]) if "reference" in e else mean_of(e["reference_setting"], e["metric"])
        rows.append({"baseline": e["baseline"], "setting": e["setting"], "ours": ours, "reference": ref,
                     "reference_source": e["reference_source"], "ratio": ours / ref if ref else float("nan")})
    return pd.DataFrame(rows, columns=["baseline", "setting", "ours", "reference", "reference_source", "ratio"])


def _pct(value: float) -> str:
    return "not run" if pd.isna(value) else f"{100 * value:.2f} %"


def _margin(claim: dict) -> str:
    margin = float(claim.get("margin", 0.0))
    if claim["kind"] == "ratio_at_least":
        return f"{margin:g}x"
    return f"{margin * claim.get('scale', 1.0):g}{claim.get('unit', '')}"


@dataclass
class Report:
    """Builds reports/<paper>/ piece by piece; `write()` puts README.md and claims.json in place."""

    out: Path
    title: str
    citation: str
    scale: str
    paper: str
    run_commits: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)
    regime_best: float | None = None
    captions: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        (self.out / "tables").mkdir(parents=True, exist_ok=True)

    def text(self, markdown: str) -> None:
        self.parts.append(markdown.strip() + "\n")

    def section(self, title: str, markdown: str = "") -> None:
        self.parts.append(f"## {title}\n\n{markdown.strip()}\n" if markdown else f"## {title}\n")

    def table(self, name: str, df: pd.DataFrame, caption: str) -> None:
        atomic_write_text(self.out / "tables" / f"{name}.csv", df.to_csv(index=False))
        self.captions[name] = caption
        self.parts.append(f"**{caption}** (`tables/{name}.csv`)\n\n{markdown_table(df)}\n")

    def figure(self, name: str, fig, caption: str) -> None:
        path = self.out / "figures" / f"{name}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        tmp.replace(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.captions[name] = caption
        self.parts.append(f"![{caption}](figures/{name}.png)\n\n*{caption}*\n")

    def paper_and_claims(self, spec: dict, summary: pd.DataFrame, caption: str, note: str = "") -> None:
        """The sections every paper report opens with: the regime check (experiments.yaml's `regime`), the
        paper's numbers beside ours (`reported`), then the claims with their verdicts."""
        self.regime(spec, summary)
        self.section("The paper's numbers beside ours")
        if note:
            self.text(note)
        self.table("paper_vs_ours", paper_vs_ours(spec["reported"], summary), caption)
        self.section("Claims")
        self.add_claims(spec["claims"], summary)

    def regime(self, spec: dict, summary: pd.DataFrame) -> None:
        """Section "Is this the paper's regime?" and tables/regime.csv (see `regime_table`); remembers the best
        ratio so that `write()` warns at the top when it is under REGIME_FLOOR."""
        table = regime_table(spec.get("regime", []), summary)
        self.regime_best = float(table["ratio"].max()) if len(table) and table["ratio"].notna().any() else None
        self.section("Is this the paper's regime?")
        best = "no baseline was measured" if self.regime_best is None else f"best ratio {self.regime_best:.2f}"
        self.text(f"Each baseline's accuracy at this scale against the reference it should approach (the paper's "
                  f"verified number, or the same model trained centrally to convergence by this workflow). A claim "
                  f"about how methods differ near convergence needs the strongest baseline at ratio ≥ "
                  f"{REGIME_FLOOR:g}: here {best}.")
        shown = table.assign(ours=table["ours"].map(_pct), reference=table["reference"].map(_pct),
                             ratio=table["ratio"].map(lambda r: "n/a" if pd.isna(r) else f"{r:.3f}"))
        atomic_write_text(self.out / "tables" / "regime.csv",
                          table.to_csv(index=False, float_format="%.4f", na_rep="not run"))
        self.parts.append(f"**Regime: baselines against their references** (`tables/regime.csv`)\n\n"
                          f"{markdown_table(shown)}\n")

    def add_claims(self, claims: list[dict], summary: pd.DataFrame) -> None:
        """Evaluate the claims and add their table (origin, the per-seed statistic, its mean ± std, the verdict).

        A claim's optional `scale` and `unit` only change how its statistic is shown (e.g. 100, " pt")."""
        self.claims = evaluate_claims(claims, summary)
        rows = []
        for c in self.claims:
            stat = {"ratio_at_least": "ratio a/b", "gap_greater": "(a−b)−(c−d)"}.get(
                c["kind"], "a − b" if "b" in c else "a")
            unit = c.get("unit", "x" if c["kind"] == "ratio_at_least" else "")
            value = mean_std(list(c["per_seed"].values()), c.get("scale", 1.0)) + unit if c["n_seeds"] else "n/a"
            settings = ", ".join(str(c[k]) for k in ("a", "b", "c", "d") if k in c)
            rows.append(f"| {c['text']} | {c['origin']} | **{c['verdict']}** | {stat} of {c['metric']} | "
                        f"{settings} | {value} | {c['kind']} {_margin(c)} | {c['n_seeds']} |")
        counts = Counter(c["verdict"] for c in self.claims if c["origin"] == "paper")
        tally = ", ".join(f"{n} {v}" for v, n in counts.most_common()) or "none"
        self.parts.append(
            f"Paper claims: {tally}. Checks (our controls and ablations) and illustrative rows (true by "
            "construction or set by an assumed constant: shown, not judged) are not counted.\n\n"
            "| claim | origin | verdict | statistic | settings (a, b, …) | ours (mean ± std over seeds) | rule | seeds |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
            + "\n\nVerdict rules, symmetric in the spread (per-seed paired statistic d, its seed std sd, ddof 1): "
            "*greater*: reproduced if mean(d) − sd > margin, not reproduced if mean(d) + sd < margin, else "
            "inconclusive; *not_worse*: reproduced if mean(d) − sd ≥ −margin, not reproduced if mean(d) + sd < "
            "−margin; *ratio_at_least*: reproduced if mean − sd ≥ margin, not reproduced if mean + sd < margin.\n")

    def write(self) -> None:
        commit = git_commit()
        runs = ", ".join(sorted(set(self.run_commits))) or "n/a"
        header = (
            f"# {self.title}\n\n> {self.citation}\n\n"
            f"| | |\n|---|---|\n| scale | `{self.scale}` |\n"
            f"| command | `{reproduce_command(self.paper, self.scale)}` |\n"
            f"| report commit | `{commit}` |\n| run commits | `{runs}` |\n"
            f"| generated | {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} |\n")
        if self.regime_best is None or self.regime_best < REGIME_FLOOR:
            best = "no baseline measured" if self.regime_best is None else f"best ratio {self.regime_best:.2f}"
            header += (f"\n> [!CAUTION]\n> **Not the paper's regime** ({best} < {REGIME_FLOOR:g}): the strongest "
                       f"baseline is far from its reference, so the verdicts below do not test the paper's claims "
                       f"near convergence. See \"Is this the paper's regime?\".\n")
        atomic_write_text(self.out / "README.md", header + "\n" + "\n".join(self.parts))
        atomic_write_text(self.out / "claims.json", json.dumps(
            [{k: c.get(k) for k in ("id", "text", "origin", "kind", "metric", "a", "b", "c", "d", "margin",
                                    "verdict", "mean", "std", "n_seeds", "per_seed") if k in c}
             for c in self.claims], indent=1) + "\n")
        # Snakemake's HTML report shows each figure and table with its own caption (workflow/report/figure.rst),
        # the claims among the tables
        claims = pd.DataFrame([{k: c.get(k) for k in ("id", "text", "origin", "verdict", "mean", "std", "margin",
                                                       "n_seeds")} for c in self.claims])
        atomic_write_text(self.out / "tables" / "claims.csv", claims.to_csv(index=False, float_format="%.6g"))
        self.captions["claims"] = "Every claim with its origin and verdict (mean and std of its per-seed statistic)"
        atomic_write_text(self.out / "captions.json", json.dumps(self.captions, indent=1) + "\n")
