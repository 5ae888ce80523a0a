"""`python -m common.publish BUILT PUBLISHED`: put a built report in place without ever losing the published one.

The new report is copied beside the published one (`.<name>.publishing`, same folder, so same file system), then
the two are swapped by one atomic rename (Linux renameat2 RENAME_EXCHANGE); only then is the old copy removed.
Where the exchange is not supported (another kernel or file system), two renames are used: the published folder
moves aside to `.<name>.previous`, the new one takes its name; a publish killed between the two leaves the old
report at `.<name>.previous`, and the next publish (or `recover`) puts it back first. A publish that fails or is
killed at any other point leaves the published report as it was; rerunning the same command publishes.

Snakemake's part (workflow/rules/papers.smk): the publish output is flagged `update()`, so Snakemake does not
delete it before the job; it keeps a backup under .snakemake/backups/ while the job runs, which a killed run
leaves behind and which would block the next publish: `clear_stale_backup` removes it (or restores it, if the
published report is somehow missing) before any job starts.

Every file is 0644 and every folder 0755 whatever the umask (readable by a group sharing a cluster disk).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
from pathlib import Path

from common.files import DIR_MODE, FILE_MODE, make_dirs

RENAME_EXCHANGE = 2       # linux/fs.h
AT_FDCWD = -100           # fcntl.h


class PublishError(OSError):
    """The report could not be put in place; the published one is unchanged. The message names the fix."""


def staging_path(published: Path) -> Path:
    return published.with_name(f".{published.name}.publishing")


def previous_path(published: Path) -> Path:
    return published.with_name(f".{published.name}.previous")


def set_modes(root: Path) -> None:
    """0755 for `root` and every folder under it, 0644 for every file (links are left as they are)."""
    os.chmod(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, FILE_MODE)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap a and b atomically; False where the kernel, libc or file system does not support it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):   # EINVAL, ENOSYS, EOPNOTSUPP: no exchange here
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(staging: Path, published: Path, exchange=_renameat2_exchange) -> None:
    """Make `staging` the published folder; the old one ends at previous_path(published) (removed by the
    caller once the new one is in place)."""
    previous = previous_path(published)
    if not published.exists():
        os.rename(staging, published)
    elif exchange(staging, published):
        os.rename(staging, previous)
    else:
        os.rename(published, previous)   # killed right here: `recover` renames it back
        os.rename(staging, published)


def recover(published: Path) -> None:
    """Undo what a killed publish left: the old report back in place if the two-rename fallback stopped
    between its renames, and the leftover copies removed."""
    previous, staging = previous_path(published), staging_path(published)
    if previous.exists() and not published.exists():
        os.rename(previous, published)
    for leftover in (previous, staging):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        elif leftover.exists() or leftover.is_symlink():
            leftover.unlink()


def publish(built: Path, published: Path) -> None:
    """Copy `built` to `published` (see the module docstring); raises PublishError with the fix."""
    built, published = Path(built), Path(published)
    if not (built / "claims.json").is_file():
        raise PublishError(f"{built} holds no built report (no claims.json): build it first (snakemake "
                           f"{published})")
    if published.exists() and (published.is_symlink() or not published.is_dir()):
        raise PublishError(f"{published} exists and is not a folder: move it away, then publish again")
    try:
        make_dirs(published.parent)
        recover(published)
        staging = staging_path(published)
        shutil.copytree(built, staging)
        set_modes(staging)
        os.utime(staging)   # newer than the build (copytree keeps the build's time)
        swap_in(staging, published)
    except (OSError, shutil.Error) as exc:
        if isinstance(exc, shutil.Error):   # copytree's list of (source, copy, why)
            detail = "; ".join(str(e[-1]) for e in exc.args[0][:3]) if isinstance(exc.args[0], list) else str(exc)
        else:
            detail = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
        shutil.rmtree(staging_path(published), ignore_errors=True)
        raise PublishError(f"could not publish {built} to {published} ({detail}); the published report is "
                           "unchanged: free space or fix the permissions there, then run the same command again") \
            from None
    try:
        shutil.rmtree(previous_path(published))
    except FileNotFoundError:
        pass
    except OSError as exc:   # the new report is in place; the next publish removes the old copy
        print(f"warning: could not remove the old copy {previous_path(published)} ({exc.strerror})",
              file=sys.stderr)


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def clear_stale_backup(published: Path, workdir: Path = Path(".")) -> str:
    """Snakemake's backup of `published` (.snakemake/backups/<published>) left by a killed run: the last report
    Snakemake saw complete. Removed where the published report holds the same files; else (Snakemake killed while
    restoring it after a failed publish, or after a publish it never saw finish: the job reruns anyway) swapped
    back into place. Call only when no other Snakemake runs in `workdir`. Returns what was done ("" if nothing)."""
    backup = Path(workdir) / ".snakemake" / "backups" / published
    target = Path(workdir) / published
    if not backup.is_dir():
        return ""
    recover(target)
    if target.is_dir() and _listing(target) == _listing(backup):
        shutil.rmtree(backup)
        return f"removed Snakemake's stale backup of {published} (left by a killed publish)"
    make_dirs(target.parent)
    staging = staging_path(target)
    try:
        os.rename(backup, staging)
    except OSError:   # another file system
        shutil.copytree(backup, staging)
        shutil.rmtree(backup)
    swap_in(staging, target)
    recover(target)
    return f"restored {published} from Snakemake's backup (a publish was killed before Snakemake saw it end)"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m common.publish BUILT PUBLISHED", file=sys.stderr)
        return 2
    try:
        publish(Path(argv[0]), Path(argv[1]))
    except PublishError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    print(f"published {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
