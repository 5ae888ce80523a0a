"""Which code made a number: the content hash of every project file a run loaded, checked against the tree.

A run record keeps `code_files` ({path relative to the repository: sha256}) of the repository's modules loaded in
its process (`loaded_files`, taken when the run ends). A record is *stale* when one of those files now differs or
is gone, or when it has no hashes at all (made before they were kept). The report build refuses stale records
unless asked to build a draft from them (`--allow-stale`, said in the report's header), and Snakemake's rerun
trigger (`common.workflow.run_code`) reruns exactly the runs whose files changed, so a module a run never loaded
does not rerun it and a "-dirty" commit no longer hides what ran.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _project_file(module) -> Path | None:
    name = getattr(module, "__file__", None)
    if not name:
        return None
    path = Path(name).resolve()
    try:
        rel = path.relative_to(REPO)
    except ValueError:
        return None
    return None if rel.parts[0].startswith(".") else path   # .venv and other hidden folders are not ours


def loaded_files() -> dict[str, str]:
    """{relative path: sha256} of every repository module this process has loaded."""
    paths = {p for p in map(_project_file, list(sys.modules.values())) if p is not None and p.is_file()}
    return {str(p.relative_to(REPO)): file_hash(p) for p in sorted(paths)}


def stamp(record) -> None:
    """Put the code behind a finished run into its record: the files loaded, and the rerun trigger it was started
    with (Snakemake passes it as REPLICATIONS_TRIGGER; see common.workflow.run_code)."""
    record.code_files = loaded_files()
    record.trigger = os.environ.get("REPLICATIONS_TRIGGER") or None


def changed_files(code_files: dict[str, str] | None) -> list[str]:
    """The files of a record that differ from the tree now (['(no file hashes)'] for a record without them)."""
    if not code_files:
        return ["(no file hashes)"]
    out = []
    for rel, digest in sorted(code_files.items()):
        path = REPO / rel
        if not path.is_file():
            out.append(f"{rel} (gone)")
        elif file_hash(path) != digest:
            out.append(rel)
    return out


def code_hash(code_files: list[dict[str, str]]) -> str:
    """One hash of the code behind a set of records: every file any of them loaded, with its content now."""
    h = hashlib.sha256()
    for rel in sorted({rel for files in code_files for rel in (files or {})}):
        path = REPO / rel
        h.update(rel.encode() + b"\0" + (file_hash(path).encode() if path.is_file() else b"gone") + b"\n")
    return h.hexdigest()[:16]


# What a report reads, set by the report command (common/cli.py): the seeds (None: the scale's own) and whether
# records of other code may enter a draft.
READ = {"seeds": None, "allow_stale": False}
