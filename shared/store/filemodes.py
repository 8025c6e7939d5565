"""Owner-only modes for what trioscale keeps on disk.

The data directory holds the tailnet's inventory (db.sqlite and its -wal/-shm), private keys and
TLS keys: none of it is for other local users. The directory is 0700 and those files 0600, both
when created and, where an older trioscale (or a copy) left them more open, at every start.
Sockets and symlinks are left alone (the admin socket keeps its configured
`unix_socket_permission`), and so are other users' files and sticky directories such as /tmp.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("trioscale.filemodes")

DIR_MODE = 0o700
FILE_MODE = 0o600
#: SQLite's companions of a database file (created with the database file's mode)
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700; tighten an existing one."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tighten(path, DIR_MODE)


def tighten(path: Path, mode: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return  # not ours to change (a symlink's target, or another user's file)
    if stat.S_ISDIR(st.st_mode) and (st.st_mode & stat.S_ISVTX or Path(path).resolve() == Path("/")):
        return  # a shared directory such as /tmp: never close it to everyone else
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return  # sockets keep their configured mode
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
        log.info("set mode %o on %s", mode, path)


def sqlite_files(db_path: Path) -> list[Path]:
    return [Path(f"{db_path}{suffix}") for suffix in SQLITE_SUFFIXES]


def create_private_file(path: Path) -> None:
    """Create `path` empty as 0600 if it does not exist (so SQLite, which gives -wal and -shm the
    database file's mode, never makes a world-readable one); tighten it if it does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        tighten(Path(path), FILE_MODE)
        return
    os.close(fd)


def secure_data_dir(config: Any, extra_files: Iterable[Path] = ()) -> None:
    """At start: the data directory 0700, and the files trioscale keeps (the SQLite database and
    its companions, the Noise and DERP private keys, the DERP TLS key and self-signed pair) 0600.
    Only those: a data directory pointed at a shared place must not have unrelated files changed."""
    data_dir = Path(config.data_dir)
    make_private_dir(data_dir)
    files: list[Path] = [*extra_files, data_dir / "derp_tls_key.pem", data_dir / "derp_tls_cert.pem"]
    for dotted in ("noise.private_key_path", "derp.server.private_key_path", "derp.server.tls_key_path"):
        value = _get(config, dotted)
        if value:
            files.append(Path(value))
    if str(getattr(getattr(config, "database", None), "type", "sqlite")).lower().startswith("sqlite"):
        db_path = _get(config, "database.sqlite.path")
        if db_path and str(db_path) != ":memory:":
            files += sqlite_files(Path(db_path))
    for path in files:
        tighten(path, FILE_MODE)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
