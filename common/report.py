"""A paper's report: `reports/<paper>/README.md`, `figures/*.png`, `tables/*.csv` and `claims.json`.

Claims, their verdicts and the evidence behind each (sources, margins, robustness, convergence) are
common/claims.py's; this module lays them out with the regime, the paper's numbers and the provenance.

The regime (experiments.yaml `regime:`): for each baseline, our accuracy at this scale against the reference
it should approach (the paper's verified number, or the mean of a reference setting: the same model trained
centrally to convergence). A report whose best ratio is under REGIME_FLOOR says so at its top.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from common import claims, provenance
from common.claims import per_seed_values
from common.files import FILE_MODE, make_dirs
from common.results import atomic_write_text, git_commit

REGIME_FLOOR = 0.9


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
    """(experiments spec, run records, per-step frame, per-run frame) of a paper's results folder: exactly the
    runs the scale configures (its settings, with `provenance.READ["seeds"]` when the workflow overrides the
    seeds), each made with the setting as it resolves now. A record whose code files differ from the tree is
    refused, naming the runs and the files, unless `provenance.READ["allow_stale"]` (a draft)."""
    from common import experiments
    from common.results import history_frame, load_records, summary_frame

    claims.check(paper)
    wanted = set(experiments.run_ids(paper, scale, provenance.READ["seeds"]))
    current = {s: _canonical(experiments.resolve(paper, scale, s)) for s in experiments.settings(paper, scale)}
    # a record made before records kept their overrides (None) is judged by the code check alone
    records = [r for r in load_records(Path(results).glob("*/seed*.json"))
               if f"{r.setting}/seed{r.seed}" in wanted
               and (r.overrides is None or _canonical(r.overrides) == current[r.setting])]
    if not records:
        raise experiments.ConfigError(f"no run records of the current settings under {results}: run the workflow "
                                      f"first (snakemake reports/{paper})")
    stale = stale_runs(records)
    if stale and not provenance.READ["allow_stale"]:
        shown = "; ".join(f"{s['run']} ({', '.join(s['files'][:3])}{', ...' if len(s['files']) > 3 else ''})"
                          for s in stale[:5])
        raise experiments.ConfigError(
            f"{len(stale)} of {len(records)} run records of {paper} were made by other code than the tree's: {shown}"
            f"{' ...' if len(stale) > 5 else ''}; rerun them (snakemake reports/{paper} reruns exactly these), or "
            "build a draft from them with --allow-stale (workflow: --config allow_stale=true)")
    return experiments.experiments(paper), records, history_frame(records), summary_frame(records)


def _canonical(overrides: dict) -> str:
    """A setting's resolved overrides as comparable text (a record's, read back from JSON, or experiments.yaml's)."""
    return json.dumps(overrides, sort_keys=True, default=str)


def stale_runs(records) -> list[dict]:
    """[{run, files}] for each record whose code files differ from the tree (common/provenance.py)."""
    out = []
    for r in records:
        files = provenance.changed_files(r.code_files)
        if files:
            out.append({"run": f"{r.setting}/seed{r.seed}", "files": files})
    return out


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
        values = per_seed_values(summary, setting, metric)
        return float(values.mean()) if len(values) else float("nan")

    rows = []
    for e in entries:
        ours = mean_of(e["setting"], e["metric"])
        ref = float(e["reference"]) if "reference" in e else mean_of(e["reference_setting"], e["metric"])
        rows.append({"baseline": e["baseline"], "setting": e["setting"], "ours": ours, "reference": ref,
                     "reference_source": e["reference_source"], "ratio": ours / ref if ref else float("nan")})
    return pd.DataFrame(rows, columns=["baseline", "setting", "ours", "reference", "reference_source", "ratio"])


def _sentence(text) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "!", "?")) else text + "."


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
    records: list = field(default_factory=list)   # the run records it reads (common.results.RunRecord)
    parts: list[str] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)
    regime_best: float | None = None   # the lowest ratio of the baselines the claims read (the gate)
    captions: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        make_dirs(self.out / "figures")
        make_dirs(self.out / "tables")

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
        os.chmod(tmp, FILE_MODE)
        tmp.replace(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.captions[name] = caption
        self.parts.append(f"![{caption}](figures/{name}.png)\n\n*{caption}*\n")

    def paper_and_claims(self, spec: dict, summary: pd.DataFrame, caption: str, note: str = "") -> None:
        """The sections every paper report opens with: the regime check (experiments.yaml's `regime`), the
        paper's numbers beside ours (`reported`), then the claims with their verdicts and evidence."""
        self.regime(spec, summary)
        self.section("The paper's numbers beside ours")
        if note:
            self.text(note)
        self.table("paper_vs_ours", paper_vs_ours(spec["reported"], summary), caption)
        self.section("Claims")
        self.add_claims(spec["claims"], summary, spec)

    def regime(self, spec: dict, summary: pd.DataFrame) -> None:
        """Section "Is this the paper's regime?" and tables/regime.csv (see `regime_table`); remembers the lowest
        ratio (every row is a baseline the paper's claims read) so that `write()` warns when it is under
        REGIME_FLOOR."""
        table = regime_table(spec.get("regime", []), summary)
        self.regime_best = float(table["ratio"].min()) if len(table) and table["ratio"].notna().any() else None
        self.section("Is this the paper's regime?")
        low = "no baseline was measured" if self.regime_best is None else f"lowest ratio {self.regime_best:.2f}"
        self.text(f"Each baseline that the paper's claims read, at this scale, against the reference it should "
                  f"approach (the paper's verified number, or the same model trained to convergence by this "
                  f"workflow: `reference_source` says which). The claims test the paper near convergence only if "
                  f"every such baseline reaches ratio ≥ {REGIME_FLOOR:g}: here {low}.")
        shown = table.assign(ours=table["ours"].map(_pct), reference=table["reference"].map(_pct),
                             ratio=table["ratio"].map(lambda r: "n/a" if pd.isna(r) else f"{r:.3f}"))
        atomic_write_text(self.out / "tables" / "regime.csv",
                          table.to_csv(index=False, float_format="%.4f", na_rep="not run"))
        self.captions["regime"] = ("Regime: each baseline the claims read against its reference "
                                   "(ratio = ours / reference)")
        self.parts.append(f"**Regime: baselines against their references** (`tables/regime.csv`)\n\n"
                          f"{markdown_table(shown)}\n")

    def add_claims(self, claims_: list[dict], summary: pd.DataFrame, spec: dict | None = None) -> None:
        """Evaluate the claims (common.claims: verdict, robustness, convergence) and add their tables: the claims
        with their evidence, the convergence of every setting they read, and what the rule means at this number
        of seeds. A claim's optional `scale` and `unit` only change how its statistic is shown (e.g. 100, " pt")."""
        from common.results import history_frame

        spec = spec or {}
        hist = history_frame(self.records)
        self.claims = claims.evaluate(claims_, summary, hist, spec.get("resolution"))
        rows = [self._claim_row(c) for c in self.claims]
        paper = [c for c in self.claims if c["origin"] == "paper"]
        def tally(cs):
            return ", ".join(f"{n} {v}" for v, n in Counter(c["verdict"] for c in cs).most_common()) or "none"

        recalled = [c for c in paper if c["recalled"]]
        self.parts.append(
            f"Paper claims with a verified source: {tally([c for c in paper if not c['recalled']])}; recalled, "
            f"unverified (`[mem]`): {tally(recalled)}. Checks (our controls, ablations and the members of a family "
            "the paper claims over) and illustrative rows (true by construction or set by an assumed constant: "
            "shown, not judged) are not counted.\n\n"
            "| claim | origin | verdict | statistic | settings | ours (mean ± std over seeds) | rule | seeds | "
            "under other summaries | source |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
            + "\n\nVerdict rules, symmetric in the spread (per-seed paired statistic d, its seed std sd, ddof 1): "
            "*greater*: reproduced if mean(d) − sd > margin, not reproduced if mean(d) + sd < margin, else "
            "inconclusive; *not_worse*: reproduced if mean(d) − sd ≥ −margin, not reproduced if mean(d) + sd < "
            "−margin; *ratio_at_least*: reproduced if mean − sd ≥ margin, not reproduced if mean + sd < margin. "
            "A family claim is judged on the per-seed mean over its members. **Under budget**: a setting the claim "
            "reads still rises over the last quarter of its evaluations by more than the curve's resolution, or a "
            "run never reached a target; the claim is then inconclusive whatever its statistic. **Metric-sensitive**: "
            "the verdict differs under another standard summary of the same runs (final, best, mean of the last "
            "quarter, each member).\n")
        self._margins()
        self._seeds()
        table = claims.convergence_table(self.claims, hist, spec)
        atomic_write_text(self.out / "tables" / "convergence.csv", table.to_csv(index=False, float_format="%.4g"))
        self.captions["convergence"] = ("Convergence of every setting a judged claim reads: the last-quarter gain "
                                        "of its curve against the curve's resolution")
        self.section("Have the claims' settings converged?", "Every setting a judged claim reads: the change of "
                     "its curve over the last quarter of its evaluations (least-squares, mean over seeds, in the "
                     "improving direction) against the smallest change the measurement resolves (`resolution` in "
                     "experiments.yaml), and its final value over a longer run's where one exists.")
        self.parts.append(f"**Convergence** (`tables/convergence.csv`)\n\n{markdown_table(table)}\n")

    def _claim_row(self, c: dict) -> str:
        stat = {"ratio_at_least": "ratio a/b", "gap_greater": "(a−b)−(c−d)"}.get(
            c["kind"], "a − b" if ("b" in c or c.get("members")) else "a")
        unit = c.get("unit", "x" if c["kind"] == "ratio_at_least" else "")
        value = mean_std(list(c["per_seed"].values()), c.get("scale", 1.0)) + unit if c["n_seeds"] else "n/a"
        settings = "; ".join(f"{m['label']}: " * bool(m["label"]) + ", ".join(m[k] for k in "abcd" if k in m)
                             for m in claims.members(c))
        origin = "paper (recalled, unverified)" if c["recalled"] else c["origin"]
        flags = [f for f, on in (("under budget: " + c.get("budget_note", ""), c.get("under_budget")),
                                 ("metric-sensitive", c.get("metric_sensitive")),
                                 (f"needs {c.get('needs_seeds')} seeds", c.get("needs_seeds"))) if on]
        verdict_ = f"**{c['verdict']}**" + (f" ({'; '.join(flags)})" if flags else "")
        panel = ", ".join(f"{k}: {v}" for k, v in (c.get("robustness") or {}).items()) or "-"
        src = c.get("source") or {}
        source = f"{src.get('where', '')} {src.get('tag', '')}".strip() or "-"
        return (f"| {c['text']} | {origin} | {verdict_} | {stat} of {claims.metric_of(c)} | {settings} | {value} | "
                f"{c['kind']} {_margin(c)} | {c['n_seeds']} | {panel} | {source} |")

    def _margins(self) -> None:
        """Where each judged claim's source, summary and margin come from (the claims table names only where)."""
        lines = []
        for c in self.claims:
            if c["origin"] == "illustrative":
                continue
            src = c.get("source") or {}
            said = f"{src.get('where')} {src.get('tag')}: {_sentence(src.get('says'))} " if src else ""
            summary = f"Summary: {_sentence(c['summary_source'])} " if c.get("summary_source") else ""
            target = f"Target: {_sentence(c['target']['source'])} " if c.get("target") else ""
            lines.append(f"- `{c['id']}` ({c['origin']}): {said}{summary}{target}Margin: "
                         f"{_sentence(c.get('margin_source'))}")
        if lines:
            self.section("Where each claim, summary and margin comes from", "\n".join(lines))

    def _seeds(self) -> None:
        """What the symmetric rule means at the seeds this report has."""
        counts = sorted({c["n_seeds"] for c in self.claims if c.get("robustness") is not None and c["n_seeds"] > 1})
        if not counts:
            return
        rates = ", ".join(f"with {n} seeds {100 * claims.false_positive_rate(n):.0f} %" for n in counts)
        close = [c["id"] for c in self.claims if c.get("needs_seeds")]
        self.section("What the rule means at this number of seeds", (
            f"A claim with no effect at all (normal noise) passes mean − sd > 0 by chance {rates} of the time "
            f"(P(t with n − 1 degrees of freedom > √n)); with 5 seeds about 4 %. Paper claims whose mean lies "
            f"within "
            f"two sds of their margin need 5 seeds: {', '.join(f'`{c}`' for c in close) or 'none'}."))

    def provenance(self) -> dict:
        """What made this report: the command, the commit, one hash of the code its runs loaded (as the tree has it
        now), the runs read and those made by other code (refused unless --allow-stale built a draft)."""
        stale = stale_runs(self.records)
        if stale and not provenance.READ["allow_stale"]:
            from common.experiments import ConfigError

            raise ConfigError(f"{len(stale)} run records of {self.paper} were made by other code than the tree's "
                              f"({stale[0]['run']}: {', '.join(stale[0]['files'][:3])}): rerun them, or build a "
                              "draft with --allow-stale")
        return {"paper": self.paper, "scale": self.scale, "command": reproduce_command(self.paper, self.scale),
                "report_commit": git_commit(), "code_hash": provenance.code_hash([r.code_files for r in self.records]),
                "n_runs": len(self.records), "seeds": sorted({r.seed for r in self.records}),
                "stale_runs": stale, "draft_from_stale_records": bool(stale)}

    def write(self) -> None:
        prov = self.provenance()
        header = (
            f"# {self.title}\n\n> {self.citation}\n\n"
            f"| | |\n|---|---|\n| scale | `{self.scale}` |\n"
            f"| command | `{prov['command']}` |\n"
            f"| report commit | `{prov['report_commit']}` |\n"
            f"| code | `{prov['code_hash']}`: the files its {prov['n_runs']} runs loaded, as in this tree "
            f"(`provenance.json`; {len(prov['stale_runs'])} runs made by other code) |\n"
            f"| generated | {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} |\n")
        if prov["stale_runs"]:
            header += (f"\n> [!WARNING]\n> **Draft from stale records**: {len(prov['stale_runs'])} of "
                       f"{prov['n_runs']} runs were made by other code than this tree's (`provenance.json` names "
                       "them and the files); their numbers may not be what this code gives.\n")
        if self.regime_best is None or self.regime_best < REGIME_FLOOR:
            low = "no baseline measured" if self.regime_best is None else f"lowest ratio {self.regime_best:.2f}"
            header += (f"\n> [!CAUTION]\n> **Not the paper's regime** ({low} < {REGIME_FLOOR:g}): a baseline the "
                       f"claims read is far from its reference, so the verdicts below do not test the paper's claims "
                       f"near convergence. See \"Is this the paper's regime?\".\n")
        atomic_write_text(self.out / "README.md", header + "\n" + "\n".join(self.parts))
        atomic_write_text(self.out / "provenance.json", json.dumps(prov, indent=1) + "\n")
        keys = ("id", "text", "origin", "kind", "metric", "target", "a", "b", "c", "d", "members", "margin",
                "margin_source", "source", "summary_source", "recalled", "verdict", "rule_verdict", "mean", "std",
                "n_seeds", "per_seed", "robustness", "metric_sensitive", "under_budget", "budget_note", "needs_seeds")
        atomic_write_text(self.out / "claims.json", json.dumps(
            [{k: c.get(k) for k in keys if k in c} for c in self.claims], indent=1) + "\n")
        # Snakemake's HTML report shows each figure and table with its own caption (workflow/report/figure.rst),
        # the claims among the tables, in the units of the text (a claim's `scale` and `unit`)
        shown = pd.DataFrame([{"id": c["id"], "text": c["text"], "origin": c["origin"], "verdict": c["verdict"],
                               "mean": None if c.get("mean") is None else c["mean"] * c.get("scale", 1.0),
                               "std": c.get("std", 0.0) * c.get("scale", 1.0),
                               "margin": float(c.get("margin", 0.0)) * (1 if c["kind"] == "ratio_at_least"
                                                                         else c.get("scale", 1.0)),
                               "unit": c.get("unit", "x" if c["kind"] == "ratio_at_least" else "").strip(),
                               "n_seeds": c["n_seeds"], "under_budget": c.get("under_budget"),
                               "metric_sensitive": c.get("metric_sensitive")} for c in self.claims])
        atomic_write_text(self.out / "tables" / "claims.csv", shown.to_csv(index=False, float_format="%.6g"))
        self.captions["claims"] = ("Every claim with its origin and verdict (mean and std of its per-seed statistic, "
                                   "in the unit shown)")
        atomic_write_text(self.out / "captions.json", json.dumps(self.captions, indent=1) + "\n")
