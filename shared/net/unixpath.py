"""Unix socket paths longer than `sun_path` allows, for the admin API's server and its client alike."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["MAX_UNIX_PATH", "short_unix_path"]

#: longest unix socket path we hand to bind/connect directly (sun_path is 108 bytes on Linux)
MAX_UNIX_PATH = 100


@contextlib.contextmanager
def short_unix_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a path usable with bind()/connect() for `path`, however long: a path longer than
    sun_path is reached through /proc/self/fd/<dir-fd>/<name> (Linux)."""
    path = os.fspath(path)
    if len(path.encode()) <= MAX_UNIX_PATH or not os.path.isdir("/proc/self/fd"):
        yield path
        return
    folder, name = os.path.split(path)
    fd = os.open(folder or ".", os.O_RDONLY | getattr(os, "O_PATH", 0) | getattr(os, "O_DIRECTORY", 0))
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)
