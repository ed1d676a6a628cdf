"""Start-up warnings about files other local users can read or change.

Each check runs once, at start, and logs one line naming the file, its mode
and what to do; none stops the daemon (a warning, not an error: the operator
may have reasons, e.g. a read-only Secret volume mounted with mode 0644).
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger("gpucarbon.fileperms")


def _mode(path: str | os.PathLike[str]) -> int | None:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return None


def warn_if_writable_by_others(directory: str | os.PathLike[str], what: str) -> bool:
    """The state directory: group/world write lets another user replace the
    checkpoint (hostile team names, a FIFO) or read workload names."""
    mode = _mode(directory)
    if mode is None or not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    log.warning(
        "%s %s is writable by %s (mode %04o): another user can replace the checkpoint; chmod 0700 it",
        what,
        directory,
        "everyone" if mode & stat.S_IWOTH else "its group",
        stat.S_IMODE(mode),
    )
    return True


def warn_if_world_readable(path: str | os.PathLike[str], what: str, holds: str) -> bool:
    """A file holding secrets (password hashes, API tokens) that every local
    user can read."""
    mode = _mode(path)
    if mode is None or not mode & stat.S_IROTH:
        return False
    log.warning(
        "%s %s is readable by every user (mode %04o) and holds %s; chmod 0600 or 0640 it",
        what,
        path,
        stat.S_IMODE(mode),
        holds,
    )
    return True
