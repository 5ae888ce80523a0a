"""Run records: one JSON file per run, written atomically, read back as tidy pandas frames.

A record holds the resolved config, the seed, the scale, the git commit, per-step (or per-round)
metrics, a summary of scalars, the wall time and the bytes communicated:

    {"paper": ..., "setting": ..., "seed": 0, "scale": "quick", "commit": "...", "config": {...},
     "history": [{"step": 10, "test_acc": 0.91, ...}, ...], "summary": {"final_test_acc": ...},
     "wall_time_s": ..., "bytes_sent": ..., "device": {"device": "cuda:0", "gpu": ..., ...}, "created": "2026-...",
     "overrides": {...}, "code_files": {"common/fl/engine.py": "<sha256>", ...}}

`overrides` and `code_files` say which setting and which code made the numbers (common/provenance.py).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from common.files import FILE_MODE, check_regular_or_new, make_dirs

REPO = Path(__file__).resolve().parent.parent


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator for the run's own random draws."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def git_commit() -> str:
    """The commit of the working tree (with '-dirty' when tracked files other than the generated reports/ have
    uncommitted changes: Snakemake clears a report's folder before rebuilding it), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file. The file is
    0644 and the folders it creates 0755 whatever the umask (readable by a group sharing a cluster disk). A path
    that exists and is not a regular file (a device such as /dev/full, a folder, a link) is refused: the rename
    would replace it."""
    path = Path(path)
    check_regular_or_new(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class RunRecord:
    paper: str
    setting: str
    seed: int
    scale: str
    config: dict
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    bytes_sent: int = 0
    commit: str = field(default_factory=git_commit)
    threads: int = field(default_factory=torch.get_num_threads)
    device: dict = field(default_factory=dict)    # common.device.prepare: the device, GPU, versions, determinism
    overrides: dict | None = None   # the setting as resolved from experiments.yaml (plus any --set) when it ran
    code_files: dict = field(default_factory=dict)   # common.provenance.loaded_files: what code made it
    trigger: str | None = None   # the code trigger Snakemake started it with (common.workflow.run_code)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def log(self, **metrics) -> None:
        """Append one row of metrics and print it as one progress line (to the run's log and console)."""
        self.history.append(metrics)
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                         if isinstance(v, (int, float)) and not k.startswith("bytes"))
        tqdm.write(f"[{self.paper} {self.setting} seed {self.seed}] {shown}")

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(_jsonable(self.__dict__), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "RunRecord":
        return cls(**json.loads(Path(path).read_text()))


def load_records(paths) -> list[RunRecord]:
    return [RunRecord.load(p) for p in sorted(map(str, paths))]


def history_frame(records: list[RunRecord]) -> pd.DataFrame:
    """Tidy per-step frame: one row per (setting, seed, logged step) with every logged metric."""
    rows = [{"setting": r.setting, "seed": r.seed, **h} for r in records for h in r.history]
    return pd.DataFrame(rows)


def summary_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: setting, seed, wall time, bytes and every summary scalar."""
    rows = [{"setting": r.setting, "seed": r.seed, "wall_time_s": r.wall_time_s, "bytes_sent": r.bytes_sent,
             **r.summary} for r in records]
    return pd.DataFrame(rows)
