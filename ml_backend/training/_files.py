"""Crash-safe file primitives shared by the version store and the job machinery.

Readers must see either the old or the new state, never a torn one, and a process
that dies (even by SIGKILL) must not leave a lock behind. ``os.replace``/``os.rename``
within one filesystem give the first; ``fcntl.flock`` on an open file gives the
second, because the kernel drops the lock when the last descriptor closes.
(POSIX only; the project targets Linux hosts.)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from ..fileio import TEMP_PREFIX, fsync_dir  # noqa: F401  (re-exported for the store)
from ..fileio import atomic_write_json as _atomic_write_json


def atomic_write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` with JSON text (sorted keys): temp file, fsync, os.replace, fsync folder."""
    _atomic_write_json(path, obj, sort_keys=True)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` so a rename of ``root`` publishes durable content."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def try_lock(path: Path, *, create: bool = True) -> int | None:
    """Open ``path`` (creating it) and take an exclusive flock without waiting.

    Returns the descriptor holding the lock, or None when another open file holds it.
    The lock lives until the descriptor (and every inherited copy of it) is closed,
    which the kernel does when the holding process dies.
    """
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            return None
        raise
    return fd


def lock_blocking(path: Path) -> int:
    """Open ``path`` and wait for its exclusive flock (for short critical sections)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def is_locked(path: Path) -> bool:
    """Whether some live open file holds the flock of ``path`` (False when the file does not exist)."""
    try:
        fd = try_lock(path, create=False)
    except FileNotFoundError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False
