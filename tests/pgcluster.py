"""A throwaway PostgreSQL cluster for tests.

    with pg_cluster() as pg:        # (from pgcluster import pg_cluster) or: pg = PgCluster(); pg.start(); ...; pg.stop()
        pg.dsn                      # postgresql://postgres@127.0.0.1:PORT/trioscale
        pg.host, pg.port, pg.user, pg.database, pg.socket_dir
        pg.dsn_for("other_db")
        pg.create_database("t1"); pg.drop_database("t1")
        pg.sql("SELECT 1")          # psql over the unix socket, returns the output
        pg.restart()                # stop + start on the same port and data directory

The newest server found under /usr/lib/postgresql/*/bin is used (PG_BINDIR overrides). PostgreSQL
refuses to run as root, so when we are root initdb and the server run as the `postgres` user inside
a temporary directory owned by it. The server listens on 127.0.0.1 on a port the OS picked, keeps
its unix socket in the temporary directory and trusts every local connection. Nothing here knows
about Trio or pytest; `find_bindir()` returns None when no server is installed, so callers can skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PgCluster", "PgUnavailable", "find_bindir", "pg_cluster"]


class PgUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path | None:
    """The bin directory of the newest installed PostgreSQL server, or None."""
    env = os.environ.get("PG_BINDIR")
    if env:
        p = Path(env)
        return p if (p / "postgres").exists() and (p / "initdb").exists() else None
    found: list[tuple[tuple[int, ...], Path]] = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        p = Path(d)
        if not ((p / "postgres").exists() and (p / "initdb").exists()):
            continue
        version = tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)
        found.append((version, p))
    if not found:
        return None
    found.sort()
    return found[-1][1]


def _free_port() -> int:
    from util import free_port  # below the ephemeral range (see there)

    return free_port()


class PgCluster:
    def __init__(self, database: str = "trioscale", bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise PgUnavailable(
                "no PostgreSQL server found under /usr/lib/postgresql/*/bin "
                "(install postgresql, e.g. `apt-get install postgresql`, or set PG_BINDIR)"
            )
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "postgres"
        self.database = database
        self.tmpdir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._as_user: str | None = None
        if os.geteuid() == 0:
            self._as_user = "postgres"
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name

    # -- paths and connection parameters ---------------------------------------------------------
    @property
    def datadir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "sock"

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def params(self) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "database": self.database,
            "dsn": self.dsn,
        }

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- processes -------------------------------------------------------------------------------
    def _run_as(self, argv: list[str], **kw) -> subprocess.Popen:
        if self._as_user:
            kw.update(user=self._as_user, group=self._as_user, extra_groups=[])
        return subprocess.Popen(argv, cwd=self.tmpdir, **kw)

    def _check(self, argv: list[str]) -> None:
        proc = self._run_as(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{out.decode(errors='replace')}")

    def start(self) -> "PgCluster":
        """Create the cluster on first call, then start the server and wait until it accepts."""
        if self.tmpdir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="trioscale-pg-"))
            self.socket_dir.mkdir()
            if self._as_user:
                pw = pwd.getpwnam(self._as_user)
                for p in (self.tmpdir, self.socket_dir):
                    os.chown(p, pw.pw_uid, pw.pw_gid)
            self._check(
                [
                    str(self.bindir / "initdb"),
                    "-D", str(self.datadir),
                    "-U", self.user,
                    "-A", "trust",
                    "-E", "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]
            )
            self.port = _free_port()
            self._start_server()
            self._check(
                [
                    str(self.bindir / "psql"),
                    "-h", str(self.socket_dir),
                    "-p", str(self.port),
                    "-U", self.user,
                    "-d", "postgres",
                    "-v", "ON_ERROR_STOP=1",
                    "-q",
                    "-c", f'CREATE DATABASE "{self.database}"',
                ]
            )
        else:
            self._start_server()
        return self

    def _start_server(self) -> None:
        if self.running:
            return
        log = open(self.tmpdir / "server.log", "ab")
        try:
            self._proc = self._run_as(
                [
                    str(self.bindir / "postgres"),
                    "-D", str(self.datadir),
                    "-p", str(self.port),
                    "-k", str(self.socket_dir),
                    "-c", f"listen_addresses={self.host}",
                    "-c", "fsync=off",
                    "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off",
                    "-c", "max_connections=200",
                    "-c", "shared_buffers=32MB",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pidfile = self.datadir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}:\n{self.server_log()}")
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            # line 1 is the postmaster's pid, line 8 its status ("ready" once it accepts)
            if len(lines) >= 8 and lines[0].strip() == str(self._proc.pid) and lines[7].strip() == "ready":
                with contextlib.suppress(OSError):
                    with socket.create_connection((self.host, self.port), timeout=1):
                        return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"postgres did not become ready in {timeout}s:\n{self.server_log()}")

    def sql(self, query: str, database: str | None = None) -> str:
        """Run `query` with psql over the unix socket (as the superuser); returns its output
        (unaligned, tuples only). Handy for admin statements in tests without a driver."""
        proc = self._run_as(
            [
                str(self.bindir / "psql"),
                "-h", str(self.socket_dir),
                "-p", str(self.port),
                "-U", self.user,
                "-d", database or self.database,
                "-v", "ON_ERROR_STOP=1",
                "-X", "-q", "-A", "-t",
                "-c", query,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {err.decode(errors='replace').strip()}")
        return out.decode().strip()

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its DSN."""
        self.sql(f'CREATE DATABASE "{name}"', database="postgres")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")

    def server_log(self) -> str:
        try:
            return (self.tmpdir / "server.log").read_text(errors="replace")[-4000:]
        except (OSError, TypeError):
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT) of the server by its pid; SIGKILL if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port and data directory (clients lose their connections)."""
        self.stop()
        self._start_server()

    def cleanup(self) -> None:
        """Stop the server and remove the temporary directory."""
        self.stop()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "PgCluster":
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()


@contextlib.contextmanager
def pg_cluster(database: str = "trioscale") -> Iterator[PgCluster]:
    """Start a throwaway cluster with one database; stop it and remove everything on exit.
    Raises PgUnavailable when no server binaries are installed."""
    with PgCluster(database) as cluster:
        yield cluster
