"""Claims: their evidence fields, their verdicts, and what each verdict rests on (DESIGN.md "Reports and claims").

A claim of experiments.yaml compares settings on a summary of their runs, paired by seed (the same seed means the
same partition, initialisation and client sampling in every setting):

    - id: ntd_beats_avg_a01
      text: FedNTD beats FedAvg at alpha = 0.1
      origin: paper                # paper | check | illustrative (shown, never judged or counted)
      kind: greater                # greater | not_worse | ratio_at_least | gap_greater
      metric: final_test_acc       # a summary of the runs: the paper's own (summary_source says where)
      a: fedntd_a01                # gap_greater also c, d: (a - b) > (c - d) + margin; greater without b: a > margin
      b: fedavg_a01
      margin: 0.0
      margin_source: "ours: ..."   # paper: / resolution: / ours:, for every judged claim
      source: {where: Table 2, tag: "[pdf]", says: ...}   # origin paper; tag [mem] = recalled, unverified
      summary_source: "paper: Table 2 is the accuracy after the last round"
      curve: test_acc              # optional: the logged curve the metric summarises (default: the metric less its
      better: higher               #   final_/best_/lastN_ prefix; `none` for none); better: lower for HD95, loss
      members: [{label: ..., a: ..., b: ...}, ...]   # optional: a family the paper claims over, judged on the
                                   #   per-seed mean over the members run at the scale
      target: {curve: test_acc, value: 0.9, x: round, source: ...}   # optional: rounds (x) to reach a value

Verdicts are symmetric in the spread: with d the per-seed statistic and sd its standard deviation (ddof 1),
- greater / gap_greater: reproduced if mean(d) - sd > margin; not reproduced if mean(d) + sd < margin.
- not_worse:             reproduced if mean(d) - sd >= -margin; not reproduced if mean(d) + sd < -margin.
- ratio_at_least:        reproduced if mean(r) - sd >= margin; not reproduced if mean(r) + sd < margin.
Otherwise inconclusive. On top of the rule:
- `robustness`: the verdict under every standard summary of the same runs (final, best, mean of the last quarter of
  the curve; each member of a family); `metric_sensitive` when any differs from the claim's own verdict.
- `under_budget`: a claim on an end-of-training metric whose settings still rise, over the last quarter of their
  evaluations, by more than the curve's `resolution` (experiments.yaml), or a rounds-to-target claim with a run
  that never reached the target (never imputed), is inconclusive whatever its statistic says.
- `needs_seeds`: a paper claim whose mean lies within two sds of its margin asks for 5 seeds.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from common import experiments
from common.experiments import ConfigError

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOT_JUDGED = "shown, not judged (illustrative)"
NOT_RUN = "not run at this scale"
DECISIVE = (REPRODUCED, NOT_REPRODUCED)
CLAIM_KINDS = ("greater", "not_worse", "ratio_at_least", "gap_greater")
ORIGINS = ("paper", "check", "illustrative")
TAGS = ("[pdf]", "[abs]", "[code]", "[readme]", "[issue#", "[wiz]", "[mem]", "[config]")
MARGIN_SOURCES = ("paper:", "resolution:", "ours:")
SETTING_KEYS = ("a", "b", "c", "d")
X_AXES = ("round", "step", "epoch")
SUMMARY_PREFIX = re.compile(r"^(final|best|last\d*|lastq|last_quarter)_")
PANEL = ("final", "best", "last_quarter")
CLOSE_SDS, MORE_SEEDS = 2.0, 5


def check(paper: str) -> None:
    """The evidence fields of a paper's claims (raises ConfigError naming the claim and the fix). Called by the
    check before any job and by the report build, not by a run: this module is report code, so a change to it
    leaves every run record current."""
    spec = experiments.experiments(paper)
    check_spec(experiments.REPO / "papers" / paper / "experiments.yaml", spec)


# ------------------------------------------------------------------------------------------- the claim's fields
def judged(claim: dict) -> bool:
    return claim.get("origin") != "illustrative"


def recalled(claim: dict) -> bool:
    """A paper claim that rests on a recalled, unverified source ([mem])."""
    return claim.get("origin") == "paper" and str((claim.get("source") or {}).get("tag", "")).lower() == "[mem]"


def members(claim: dict) -> list[dict]:
    """The claim's members: its `members`, or the claim itself as one member (label '')."""
    if claim.get("members"):
        return [{"label": str(m.get("label", i)), **{k: m[k] for k in SETTING_KEYS if k in m}}
                for i, m in enumerate(claim["members"])]
    return [{"label": "", **{k: claim[k] for k in SETTING_KEYS if k in claim}}]


def settings_read(claim: dict) -> list[str]:
    return list(dict.fromkeys(m[k] for m in members(claim) for k in SETTING_KEYS if k in m))


def metric_of(claim: dict) -> str:
    """The summary a claim is judged on (a rounds-to-target claim's is computed by the report)."""
    if "target" in claim:
        t = claim["target"]
        return f"{t.get('x', 'x')}s_to_{t['curve']}_{float(t['value']):g}"
    return claim["metric"]


def curve_of(claim: dict) -> str | None:
    """The logged curve behind the claim's metric: `curve`, else the metric less a summary prefix, else none."""
    if "target" in claim:
        return None
    if "curve" in claim:
        return None if claim["curve"] in (None, "none") else claim["curve"]
    stripped = SUMMARY_PREFIX.sub("", claim["metric"])
    return stripped if stripped != claim["metric"] else None


def sign(claim: dict) -> float:
    return -1.0 if claim.get("better", "higher") == "lower" else 1.0


def check_spec(path: Path, spec: dict) -> None:
    """The evidence fields of every claim and the regime rows of one experiments.yaml."""
    resolution = spec.get("resolution") or {}
    if not isinstance(resolution, dict):
        raise ConfigError(f"{path}: `resolution` maps each curve to {{value, source}}")
    for curve, entry in resolution.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("value"), (int, float)) and entry["value"] > 0
                and str(entry.get("source", "")).startswith(MARGIN_SOURCES)):
            raise ConfigError(f"{path}: resolution.{curve} needs a positive `value` and a `source` starting with "
                             f"{' / '.join(MARGIN_SOURCES)}")
    for setting, longer in (spec.get("longer") or {}).items():
        if setting not in spec["settings"] or longer not in spec["settings"]:
            raise ConfigError(f"{path}: longer: {setting} -> {longer} names an undefined setting")
    for claim in spec.get("claims", []):
        _check_claim(path, spec, claim, resolution)
    # the regime lists the baselines the paper's claims read (a teaching report without paper claims: its checks')
    readers = [c for c in spec.get("claims", []) if c.get("origin") == "paper"] or \
        [c for c in spec.get("claims", []) if judged(c)]
    read = {s for c in readers for s in settings_read(c)}
    for row in spec.get("regime", []):
        if row.get("setting") not in read:
            raise ConfigError(f"{path}: regime row {row.get('baseline')!r} reads setting {row.get('setting')!r}, "
                             "which no paper claim reads: list the baselines the paper's claims read")


def _check_claim(path: Path, spec: dict, claim: dict, resolution: dict) -> None:
    cid = f"{path}: claim {claim.get('id', '?')!r}"
    if claim.get("kind") not in CLAIM_KINDS:
        raise ConfigError(f"{cid} has kind {claim.get('kind')!r}; use one of {', '.join(CLAIM_KINDS)}")
    if claim.get("origin") not in ORIGINS:
        raise ConfigError(f"{cid} has origin {claim.get('origin')!r}; use one of {', '.join(ORIGINS)}")
    if ("metric" in claim) == ("target" in claim):
        raise ConfigError(f"{cid} needs exactly one of `metric` (a summary of the runs) and `target` (rounds to a "
                         "value)")
    if "members" in claim and any(k in claim for k in SETTING_KEYS):
        raise ConfigError(f"{cid}: give the settings either at the top (a, b, ...) or in `members`, not both")
    needed = {"gap_greater": "abcd", "ratio_at_least": "ab"}.get(claim["kind"], "a")
    for m in members(claim):
        missing = [k for k in needed if k not in m]
        unknown = [m[k] for k in SETTING_KEYS if k in m and m[k] not in spec["settings"]]
        if missing or unknown:
            raise ConfigError(f"{cid}{' member ' + repr(m['label']) if m['label'] else ''}: "
                             + (f"missing setting key(s) {missing}" if missing else f"undefined setting(s) {unknown}"))
    if claim.get("better", "higher") not in ("higher", "lower"):
        raise ConfigError(f"{cid}: better is {claim['better']!r}; use higher or lower")
    if "target" in claim:
        t = claim["target"]
        if not (isinstance(t, dict) and t.get("curve") and isinstance(t.get("value"), (int, float))
                and t.get("x", "round") in X_AXES and str(t.get("source", "")).startswith(MARGIN_SOURCES)):
            raise ConfigError(f"{cid}: target needs curve, value, x ({' | '.join(X_AXES)}) and a source starting "
                             f"with {' / '.join(MARGIN_SOURCES)}")
    if not judged(claim):
        return
    if not str(claim.get("margin_source", "")).startswith(MARGIN_SOURCES):
        raise ConfigError(f"{cid} has no margin_source: say where its margin comes from, starting with "
                         f"{' / '.join(MARGIN_SOURCES)}")
    if claim["origin"] == "paper":
        src = claim.get("source")
        if not (isinstance(src, dict) and all(str(src.get(k, "")).strip() for k in ("where", "tag", "says"))):
            raise ConfigError(f"{cid} is origin: paper without source {{where, tag, says}}: say where the paper states "
                             "it, or make it a check")
        if not str(src["tag"]).lower().startswith(TAGS):
            raise ConfigError(f"{cid}: source tag {src['tag']!r}; use one of {', '.join(TAGS)}")
        if not str(claim.get("summary_source", "")).strip():
            raise ConfigError(f"{cid} has no summary_source: say which summary the paper reports (final, best, last "
                             "k) and where")
    curve = curve_of(claim)
    if curve is not None and curve not in resolution:
        raise ConfigError(f"{cid} reads the curve {curve!r}, which has no `resolution:` entry (the smallest change "
                         "it resolves, with its source); or set `curve: none`")


# --------------------------------------------------------------------------------------------- the statistics
def verdict(kind: str, values, margin: float = 0.0) -> str:
    """Reproduced / not reproduced / inconclusive from per-seed values (see the module docstring)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return INCONCLUSIVE
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    if kind in ("greater", "gap_greater"):
        bar, strict = margin, True
    elif kind == "not_worse":
        bar, strict = -margin, False
    elif kind == "ratio_at_least":
        bar, strict = margin, False
    else:
        raise ValueError(f"unknown claim kind {kind!r}; use one of {CLAIM_KINDS}")
    if mean - sd > bar or (not strict and mean - sd == bar):
        return REPRODUCED
    return NOT_REPRODUCED if mean + sd < bar else INCONCLUSIVE


def _bar(claim: dict) -> float:
    margin = float(claim.get("margin", 0.0))
    return -margin if claim["kind"] == "not_worse" else margin


def per_seed_values(summary: pd.DataFrame, setting: str, metric: str) -> pd.Series:
    """A setting's metric per seed (empty for a setting this scale does not run)."""
    rows = summary[summary["setting"] == setting]
    if rows.empty:  # a setting this scale does not run: the claim is judged on no seeds
        return pd.Series(dtype=float)
    if metric not in rows:
        raise KeyError(f"metric {metric!r} not in the run summaries; have {', '.join(rows.columns)}")
    return rows.set_index("seed")[metric].astype(float)


def member_statistic(kind: str, member: dict, summary: pd.DataFrame, metric: str) -> pd.Series:
    """A member's per-seed statistic: a − b, (a − b) − (c − d), a / b, or a itself (greater without b)."""
    runs = {k: per_seed_values(summary, member[k], metric) for k in SETTING_KEYS if k in member}
    if any(not len(v) for v in runs.values()):   # a setting this scale does not run
        return pd.Series(dtype=float)
    a, b, c, d = (runs.get(k) for k in SETTING_KEYS)
    if kind == "ratio_at_least":
        stat = a / b
    elif kind == "gap_greater":
        stat = (a - b) - (c - d)
    else:
        stat = a - b if b is not None else a
    seeds = set.intersection(*(set(v.index) for v in runs.values()))   # paired: the seeds every setting ran
    return stat[stat.index.isin(seeds)]


def claim_statistic(claim: dict, summary: pd.DataFrame, metric: str | None = None) -> pd.Series:
    """The per-seed statistic of a claim: its member's, or the mean over its members of the seeds all of them ran
    (NaN kept where a seed's run missed a target)."""
    if claim.get("kind") not in CLAIM_KINDS:
        raise ValueError(f"claim {claim.get('id')!r}: unknown kind {claim.get('kind')!r}; use one of {CLAIM_KINDS}")
    metric = metric or metric_of(claim)
    stats = [member_statistic(claim["kind"], m, summary, metric) for m in members(claim)]
    stats = [s for s in stats if len(s)]
    if not stats:
        return pd.Series(dtype=float)
    return pd.concat(stats, axis=1, join="inner").mean(axis=1, skipna=False)


def curve_summaries(hist: pd.DataFrame, curve: str) -> pd.DataFrame:
    """Per (setting, seed) the standard summaries of a logged curve: final, best (max), last_quarter (mean of
    the last quarter of the evaluations), and the last-quarter gain (least-squares change over that quarter)."""
    rows = []
    if curve not in hist:
        return pd.DataFrame(columns=["setting", "seed", "final", "best", "best_low", "last_quarter", "gain", "evals"])
    for (setting, seed), group in hist[["setting", "seed", curve]].dropna().groupby(["setting", "seed"], sort=False):
        y = group[curve].to_numpy(dtype=float)
        tail = y[-max(2, math.ceil(len(y) / 4)):] if len(y) > 1 else y
        gain = float(np.polyfit(np.arange(len(tail)), tail, 1)[0] * (len(tail) - 1)) if len(tail) > 1 else math.nan
        rows.append({"setting": setting, "seed": seed, "final": y[-1], "best": y.max(), "best_low": y.min(),
                     "last_quarter": float(tail.mean()), "gain": gain, "evals": len(y)})
    return pd.DataFrame(rows)


def rounds_to_target(hist: pd.DataFrame, target: dict) -> pd.DataFrame:
    """Per (setting, seed) the first x at which the curve reaches the target value; NaN for a run that never did."""
    curve, value = target["curve"], float(target["value"])
    x = target.get("x") or next((a for a in X_AXES if a in hist), None)
    rows = []
    if x is None or curve not in hist:
        return pd.DataFrame(columns=["setting", "seed", "value"])
    for (setting, seed), group in hist[["setting", "seed", x, curve]].dropna().groupby(["setting", "seed"]):
        hit = group[group[curve] >= value]
        rows.append({"setting": setting, "seed": seed, "value": float(hit[x].iloc[0]) if len(hit) else math.nan})
    return pd.DataFrame(rows)


def with_targets(claims: list[dict], summary: pd.DataFrame, hist: pd.DataFrame | None) -> pd.DataFrame:
    """The run summaries with a column per rounds-to-target claim (computed from the logged curves)."""
    summary = summary.copy()
    for claim in claims:
        if "target" in claim and hist is not None and len(hist):
            reach = rounds_to_target(hist, claim["target"]).set_index(["setting", "seed"])["value"]
            keys = list(zip(summary["setting"], summary["seed"]))
            summary[metric_of(claim)] = [reach.get(k, math.nan) for k in keys]
    return summary


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(claims: list[dict], summary: pd.DataFrame, hist: pd.DataFrame | None = None,
             resolution: dict | None = None) -> list[dict]:
    """Each claim with its per-seed statistic, mean, std, verdict and evidence fields (module docstring)."""
    hist = hist if hist is not None else pd.DataFrame()
    resolution = resolution or {}
    summary = with_targets(claims, summary, hist)
    curves = {c: curve_summaries(hist, c) for c in {curve_of(cl) for cl in claims} if c is not None}
    out = []
    for claim in claims:
        if claim.get("origin") not in ORIGINS:
            raise ValueError(f"claim {claim.get('id')!r}: origin {claim.get('origin')!r}; give `origin:` one of "
                             f"{', '.join(ORIGINS)}")
        stat = claim_statistic(claim, summary)
        reached = stat.dropna()
        row = {**claim, "mean": float(reached.mean()) if len(reached) else None,
               "std": float(reached.std(ddof=1)) if len(reached) > 1 else 0.0, "n_seeds": int(len(reached)),
               "per_seed": {int(k): float(v) for k, v in reached.items()}, "recalled": recalled(claim)}
        if not len(stat):
            row["verdict"] = NOT_RUN
        elif not judged(claim):
            row["verdict"] = NOT_JUDGED
        else:
            row.update(_evidence(claim, stat, summary, curves, resolution))
        out.append(row)
    return out


def _evidence(claim: dict, stat: pd.Series, summary: pd.DataFrame, curves: dict, resolution: dict) -> dict:
    """Verdict, robustness panel, convergence and seed advice of one judged claim."""
    kind, margin = claim["kind"], float(claim.get("margin", 0.0))
    reached = stat.dropna()
    own = verdict(kind, reached, margin)
    notes = []
    missed = int(stat.isna().sum())
    if missed:
        notes.append(f"{missed} of {len(stat)} seeds did not reach the target in every compared run (no imputation)")
    curve = curve_of(claim)
    panel = {}
    if curve is not None:
        frame = curves[curve]
        flip = "best_low" if claim.get("better") == "lower" else "best"
        for name in PANEL:
            col = flip if name == "best" else name
            as_summary = frame.rename(columns={col: "_panel"})[["setting", "seed", "_panel"]]
            panel[name] = verdict(kind, claim_statistic(claim, as_summary, "_panel").dropna(), margin)
        limit = resolution.get(curve, {}).get("value")
        for setting in settings_read(claim):
            gains = frame.loc[frame["setting"] == setting, "gain"] * sign(claim)
            if limit is not None and len(gains) and gains.mean() > limit:
                notes.append(f"{setting} still rises by {gains.mean():.3g} over its last quarter (resolution "
                             f"{limit:g})")
    if claim.get("members"):
        for m in members(claim):
            s = member_statistic(kind, m, summary, metric_of(claim)).dropna()
            if len(s):
                panel[f"member: {m['label']}"] = verdict(kind, s, margin)
    under = bool(notes)
    final = INCONCLUSIVE if under and own in DECISIVE else own
    mean, sd = float(reached.mean()) if len(reached) else math.nan, \
        float(reached.std(ddof=1)) if len(reached) > 1 else 0.0
    close = claim.get("origin") == "paper" and len(reached) < MORE_SEEDS and abs(mean - _bar(claim)) < CLOSE_SDS * sd
    return {"verdict": final, "rule_verdict": own, "robustness": panel,
            "metric_sensitive": any(v != own for v in panel.values()),
            "under_budget": under, "budget_note": "; ".join(notes), "needs_seeds": MORE_SEEDS if close else None}


def convergence_table(claims: list[dict], hist: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Every setting a judged claim reads, per curve: evaluations, last-quarter gain (mean over seeds, in the
    improving direction) against the curve's resolution, and its final value over a longer run's (inverted for a
    lower-is-better curve, so below 1 means the longer run does better)."""
    resolution, longer = spec.get("resolution") or {}, spec.get("longer") or {}
    wanted = {}
    for claim in claims:
        curve = curve_of(claim)
        if judged(claim) and curve is not None:
            for setting in settings_read(claim):
                wanted.setdefault((setting, curve), set()).add(claim["id"])
    rows = []
    frames = {c: curve_summaries(hist, c) for c in {c for _, c in wanted}}
    for (setting, curve), ids in wanted.items():
        frame = frames[curve]
        mine = frame[frame["setting"] == setting]
        if mine.empty:   # not run at this scale
            continue
        down = any(c.get("better") == "lower" for c in claims if c["id"] in ids)
        gain = float(mine["gain"].mean()) * (-1 if down else 1)
        limit = (resolution.get(curve) or {}).get("value", math.nan)
        ratio = math.nan
        if setting in longer:
            ref = frame.loc[frame["setting"] == longer[setting], "final"]
            if len(ref) and ref.mean() and mine["final"].mean():   # below 1 when the longer run does better
                ratio = float(ref.mean() / mine["final"].mean() if down else mine["final"].mean() / ref.mean())
        rows.append({"setting": setting, "curve": curve, "claims": " ".join(sorted(ids)), "seeds": len(mine),
                     "evaluations": int(mine["evals"].max()), "last_quarter_gain": gain,
                     "resolution": limit, "still_rising": bool(gain > limit),
                     "longer_setting": longer.get(setting, ""), "ratio_to_longer": ratio})
    return pd.DataFrame(rows, columns=["setting", "curve", "claims", "seeds", "evaluations", "last_quarter_gain",
                                       "resolution", "still_rising", "longer_setting", "ratio_to_longer"])


def false_positive_rate(n_seeds: int) -> float:
    """How often a claim with no effect passes `mean − sd > 0` with n seeds: P(t_{n−1} > √n) for normal noise."""
    from scipy import stats

    return float(stats.t.sf(math.sqrt(n_seeds), n_seeds - 1)) if n_seeds > 1 else math.nan
