"""Where the project writes: folders and files 0755/0644 whatever the umask (readable by a group sharing a cluster
disk), and output paths that are new or regular files (an atomic rename onto a device or a link would replace
it). Kept free of heavy imports: the run records, the CLI and the publish step all use it."""
from __future__ import annotations

import errno
import os
from pathlib import Path

FILE_MODE, DIR_MODE = 0o644, 0o755


def make_dirs(folder: Path) -> None:
    """`folder` and its missing parents, each created 0755 whatever the umask."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, DIR_MODE)


def check_regular_or_new(path: Path) -> None:
    """Refuse an output path that exists and is not a regular file (a device, a folder, a link): replacing it by
    rename would replace the device node or the link itself."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and (path.is_symlink() or not path.is_file()):
        raise FileExistsError(errno.EEXIST, "exists and is not a regular file (a device, folder or link): choose a "
                              "new file or a regular one", str(path))
