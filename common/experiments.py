"""A paper's `experiments.yaml`: the runs per scale, the paper's reported numbers and the claims.

    scales:                      # smoke | quick | paper
      quick:
        seeds: [0, 1, 2]
        base: {steps: 1500}      # overrides of the paper's config defaults at this scale
        settings: [dense, drop99]  # optional: a subset of `settings` (default: all)
        setting_seeds: {central_ref: [0]}  # optional: a setting run with its own seeds (a reference run)
    settings:                    # named settings: overrides on top of the scale's base
      dense: {drop_ratio: 0.0}
    reported: [...]              # the paper's numbers with provenance tags (see common/report.py)
    regime: [...]                # baselines against their references (see common/report.py)
    claims: [...]                # comparisons over the results, each with its origin (see common/report.py)

A run is (scale, setting, seed); its record lives at results/<scale>/<paper>/<setting>/seed<k>.json.

Checked on every load, so before any job (the workflow's pre-run check loads every requested paper's file): every
key at every level against workflow/schemas/experiments.schema.yaml (a misspelt `setings:` is named with the allowed
keys), the claims (here and common/claims.py), and every claim, regime and `reported:` metric against the summary
metrics the paper declares (`SUMMARY_METRICS` in papers/<paper>/__init__.py).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SCALES = ("smoke", "quick", "paper")


class ConfigError(ValueError):
    """A configuration value is unknown or out of range; the message names the key and the fix."""


def experiments(paper: str) -> dict:
    path = REPO / "papers" / paper / "experiments.yaml"
    if not path.exists():
        raise ConfigError(f"no experiments file for paper {paper!r} at {path}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where} ({getattr(exc, 'problem', exc)}): fix the file") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} must be a YAML mapping with `scales` and `settings`")
    for key in ("scales", "settings"):
        if key not in spec:
            raise ConfigError(f"{path}: missing top-level key {key!r}")
    _check_schema(path, spec)
    _check_claims(path, spec)
    _check_metrics(path, spec, paper)
    return spec


SCHEMA = REPO / "workflow" / "schemas" / "experiments.schema.yaml"
_VALID: set[str] = set()   # digests of the specs that passed the schema in this process


def _name(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _where(spec: dict, error_path) -> str:
    """`scales.smoke`, `claims[3] (id 'x')`: where in the file a schema error is."""
    parts, node = [], spec
    for key in error_path:
        parts.append(f"[{key}]" if isinstance(key, int) else ("." if parts else "") + str(key))
        node = node[key] if isinstance(node, (dict, list)) else None
        if isinstance(key, int) and isinstance(node, dict) and ("id" in node or "baseline" in node):
            parts.append(f" ({'id' if 'id' in node else 'baseline'} {node.get('id', node.get('baseline'))!r})")
    return "".join(parts)


def _check_schema(path: Path, spec: dict) -> None:
    """Every key of the file, at every level, against workflow/schemas/experiments.schema.yaml: a misspelt key
    (`setings:`, `bsae:`, `sedes:`) is named with the allowed ones, before any job."""
    import hashlib
    import json

    import jsonschema

    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    if digest in _VALID:
        return
    schema = yaml.safe_load(SCHEMA.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(spec))
    if error is None:
        _VALID.add(digest)
        return
    where = _where(spec, error.absolute_path) or "top level"
    fix = f"see {SCHEMA.relative_to(REPO)}"
    if error.validator == "additionalProperties" and error.schema.get("properties"):
        allowed = list(error.schema["properties"])
        unknown = [k for k in error.instance if k not in allowed]
        raise ConfigError(f"{_name(path)}: {where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)} ({fix})")
    raise ConfigError(f"{_name(path)}: {where}: {error.message} ({fix})")


COMMON_METRICS = ("wall_time_s", "bytes_sent")   # every run's summary row has these (common/results.summary_frame)


def summary_metrics(paper: str) -> tuple[str, ...]:
    """The summary metrics a paper's runs (and its report's derived columns) produce: `SUMMARY_METRICS` in
    papers/<paper>/__init__.py (names, or fnmatch patterns such as `kept_*`), plus the common ones."""
    import importlib

    declared = getattr(importlib.import_module(f"papers.{paper}"), "SUMMARY_METRICS", None)
    if declared is None:
        raise ConfigError(f"papers/{paper}/__init__.py declares no SUMMARY_METRICS: list the summary metrics its "
                          "runs produce (method.py's record.summary) there")
    return tuple(declared) + COMMON_METRICS


def _check_metrics(path: Path, spec: dict, paper: str) -> None:
    """Every claim, regime row and `reported:` entry reads a declared summary metric (a claim with `target:`
    reads a curve, not a metric)."""
    import fnmatch

    declared = summary_metrics(paper)
    rows = [(f"claim {c.get('id', '?')!r}", c) for c in spec.get("claims") or [] if "target" not in c]
    rows += [(f"regime row {r.get('baseline', '?')!r}", r) for r in spec.get("regime") or []]
    rows += [(f"reported entry {r.get('quantity', '?')!r}", r) for r in spec.get("reported") or [] if r.get("metric")]
    for what, row in rows:
        metric = row.get("metric")
        if not isinstance(metric, str) or not any(fnmatch.fnmatchcase(metric, d) for d in declared):
            raise ConfigError(f"{_name(path)}: {what} reads metric {metric!r}, which the runs of {paper} do not "
                              f"produce; use one of the declared metrics: {', '.join(declared)} "
                              f"(papers/{paper}/__init__.py SUMMARY_METRICS)")


CLAIM_KINDS = ("greater", "not_worse", "ratio_at_least", "gap_greater")
ORIGINS = ("paper", "check", "illustrative")


def _check_claims(path: Path, spec: dict) -> None:
    """Every claim names a known kind and origin and only defined settings; every regime row too."""
    for claim in spec.get("claims", []):
        cid = claim.get("id", "?")
        if claim.get("kind") not in CLAIM_KINDS:
            raise ConfigError(f"{path}: claim {cid!r} has kind {claim.get('kind')!r}; use one of {', '.join(CLAIM_KINDS)}")
        if claim.get("origin") not in ORIGINS:
            raise ConfigError(f"{path}: claim {cid!r} has origin {claim.get('origin')!r}; "
                              f"use one of {', '.join(ORIGINS)}")
        unknown = [claim[k] for k in ("a", "b", "c", "d") if k in claim and claim[k] not in spec["settings"]]
        if unknown:
            raise ConfigError(f"{path}: claim {cid!r} names undefined setting(s) {unknown}")
    for row in spec.get("regime", []):
        missing = [k for k in ("baseline", "setting", "metric", "reference_source") if k not in row]
        if missing or ("reference" in row) == ("reference_setting" in row):
            raise ConfigError(f"{path}: regime row {row.get('baseline', '?')!r} needs baseline, setting, metric, "
                              "reference_source and exactly one of reference / reference_setting")
        for key in ("setting", "reference_setting"):
            if key in row and row[key] not in spec["settings"]:
                raise ConfigError(f"{path}: regime row {row['baseline']!r} names undefined setting {row[key]!r}")


def scale_spec(paper: str, scale: str) -> dict:
    spec = experiments(paper)
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    if scale not in spec["scales"]:
        raise ConfigError(f"paper {paper!r} defines no {scale!r} scale in its experiments.yaml")
    return spec["scales"][scale]


def settings(paper: str, scale: str) -> list[str]:
    spec = experiments(paper)
    chosen = scale_spec(paper, scale).get("settings", list(spec["settings"]))
    unknown = [s for s in chosen if s not in spec["settings"]]
    if unknown:
        raise ConfigError(f"{paper}/{scale}: settings {unknown} are not defined under `settings`")
    return list(chosen)


def seeds(paper: str, scale: str, override: list[int] | None = None) -> list[int]:
    return list(override) if override else list(scale_spec(paper, scale)["seeds"])


def run_ids(paper: str, scale: str, seed_override: list[int] | None = None) -> list[str]:
    """`<setting>/seed<k>` for every run of this paper at this scale (a setting listed under the scale's
    `setting_seeds` runs with its own seeds, e.g. one reference run trained to convergence). A `seed_override`
    (the workflow's `--config seeds=...`) replaces every seed list, `setting_seeds` included."""
    own = {} if seed_override else scale_spec(paper, scale).get("setting_seeds", {})
    return [f"{s}/seed{k}" for s in settings(paper, scale)
            for k in (own[s] if s in own else seeds(paper, scale, seed_override))]


def resolve(paper: str, scale: str, setting: str) -> dict:
    """The overrides of one run: the scale's base, then the setting's own."""
    spec = experiments(paper)
    if setting not in spec["settings"]:
        raise ConfigError(f"unknown setting {setting!r} for {paper}; known: {', '.join(spec['settings'])}")
    return {**scale_spec(paper, scale).get("base", {}), **(spec["settings"][setting] or {})}


def build_config(cls, overrides: dict[str, Any]):
    """Instantiate the paper's config dataclass from overrides, rejecting unknown keys by name.

    Values are coerced to the field's declared type where YAML is looser (int -> float, list -> tuple);
    range checks live in the dataclass's own `__post_init__`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} for {cls.__name__}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in overrides.items():
        kind = hints[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif typing.get_origin(kind) is tuple and isinstance(value, list):
            value = tuple(value)
        elif kind in (int, float, str, bool) and not isinstance(value, kind):
            raise ConfigError(f"{cls.__name__}.{key} must be {kind.__name__}, got {value!r}")
        values[key] = value
    return cls(**values)


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds: the one-liner for __post_init__ checks."""
    if not condition:
        raise ConfigError(message)
