"""The SQLite store: stdlib sqlite3 in WAL mode, one connection doing the work in a worker thread.

Every operation is one `trio.to_thread.run_sync` call holding `self._lock`, so that connection is
only ever used by one thread at a time and a write plus its change rows commit in one transaction
(BEGIN IMMEDIATE ... COMMIT). The exception is a lookup (a few rows by key, see
`OpsStore._lookup`) in a database file: it runs right here in Trio's thread on a second, read-only
connection (WAL lets it read beside the writer), and never waits on a busy database. Subscribers
wait on an in-process trio.Event that is replaced and set after every commit that recorded a
change, then read the log.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from trioscale.shared.model import Change, utcnow
from trioscale.shared.store import filemodes
from trioscale.shared.store.base import Conflict, StoreUnavailable
from trioscale.shared.store.migrations import SQLITE_MIGRATIONS, UNIQUE_MESSAGES, check_version
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.opsstore import OpsStore
from trioscale.shared.store.rows import change_from_fields, check_kind, json_text, pack_data, time_text
from trioscale.shared.store.wakeup import Position, WakeUps, check_gap

#: changes read from the log per query by subscribers
BATCH = 500
#: change rows this process committed that are kept for its own subscribers
RECENT_CHANGES = 1024
#: how long the worker thread waits for another process's write lock (milliseconds)
BUSY_TIMEOUT_MS = 30_000


def _enc(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, datetime):
        return time_text(v)
    if isinstance(v, (tuple, list, dict)):
        return json_text(list(v) if isinstance(v, tuple) else v)
    return v


def _connect(path: str, migrations: list[list[str]] = SQLITE_MIGRATIONS) -> sqlite3.Connection:
    if path != ":memory:" and not path.startswith("file:"):
        # the tailnet's inventory is for this user only; SQLite gives -wal and -shm the mode of
        # the database file, so creating that 0600 covers all three
        parent = Path(path).parent
        if not parent.exists():
            filemodes.make_private_dir(parent)
        filemodes.create_private_file(Path(path))
        for companion in filemodes.sqlite_files(Path(path))[1:]:
            filemodes.tighten(companion, filemodes.FILE_MODE)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, migrations)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_reader(path: str) -> sqlite3.Connection:
    """The lookups' connection: read-only, and busy at once rather than waiting for a lock."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA query_only = ON")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, migrations: list[list[str]] = SQLITE_MIGRATIONS) -> int:
    """Bring the schema up to date; returns the version. SchemaTooNew if the file is newer."""
    check_version(schema_version(conn), len(migrations))
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(conn)
            check_version(version, len(migrations))
            if version == len(migrations):
                conn.execute("COMMIT")
                return version
            for stmt in migrations[version]:
                conn.execute(stmt)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _is_busy(e: sqlite3.OperationalError) -> bool:
    return any(w in str(e) for w in ("locked", "busy"))


def _translate(e: sqlite3.IntegrityError | sqlite3.OperationalError) -> Exception:
    """The store's error for sqlite3's: Conflict, StoreUnavailable, or `e` itself."""
    if isinstance(e, sqlite3.IntegrityError):
        return _conflict_from(e)
    if _is_busy(e) or any(w in str(e) for w in ("disk", "unable to open", "readonly", "full")):
        return StoreUnavailable(f"sqlite: {e}")
    return e


def _conflict_from(e: sqlite3.IntegrityError) -> Conflict:
    msg = str(e)
    if "UNIQUE constraint failed:" in msg:
        cols = msg.split(":", 1)[1].strip().split(",")
        return Conflict(UNIQUE_MESSAGES.get(cols[0].strip(), "the record conflicts with an existing one"))
    if "FOREIGN KEY" in msg:
        return Conflict("the record is still referenced by others, or refers to one that does not exist")
    return Conflict("the change breaks a rule of the data")


def _drive(conn: sqlite3.Connection, begin: str | None, op, args: tuple) -> tuple[Any, list[tuple]]:
    """Run the operation generator `op(*args)` on `conn`, inside `begin` ... COMMIT if given;
    returns its result and the change rows it recorded (seq, kind, data, at)."""
    gen = op(*args)
    emitted: list[tuple] = []
    if begin:
        conn.execute(begin)
    try:
        try:
            req = next(gen)
            while True:
                if isinstance(req, Emit):
                    row = [check_kind(req.kind), pack_data(req.data), time_text(utcnow())]
                    cur = conn.execute("INSERT INTO changes (kind, data, at) VALUES (?, ?, ?) RETURNING seq", row)
                    res = cur.fetchall()[0][0]
                    emitted.append((res, *row))
                else:
                    rows = conn.execute(req.sql, tuple(_enc(a) for a in req.args)).fetchall()
                    if isinstance(req, One):
                        res = rows[0] if rows else None
                    elif isinstance(req, All):
                        res = rows
                    else:
                        assert isinstance(req, Exec)
                        res = None
                req = gen.send(res)
        except StopIteration as stop:
            result = stop.value
        if begin:
            conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        gen.close()
    return result, emitted


class SqliteStore(WakeUps, OpsStore):
    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        reader: sqlite3.Connection | None = None,
        max_pending_registrations: int | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        #: the lookups' connection (None for a private in-memory database: its lookups go to the worker)
        self._reader = reader
        self._lock = trio.Lock()
        #: the change rows this process committed last, in order. Its own subscribers (the
        #: coordinator's follower, the relay's admission) take them from here: reading back what
        #: was just written was about 3 % of a registration's CPU.
        self._recent: collections.deque[tuple] = collections.deque(maxlen=RECENT_CHANGES)
        self.max_pending_registrations = max_pending_registrations
        #: poll_interval: how often idle subscribers check for commits by other processes (e.g.
        #: the CLI) on the same file; one query per interval for all subscribers together
        self._init_wakeups(poll_interval)

    @classmethod
    async def open(
        cls,
        path: str | Path = ":memory:",
        *,
        max_pending_registrations: int | None = None,
        migrations: list[list[str]] | None = None,
        poll_interval: float = 2.0,
    ) -> "SqliteStore":
        """Open (creating it if needed) and migrate the database file at `path`; ":memory:" for a
        private in-memory database. SchemaTooNew if the file was migrated by a newer trioscale."""
        migrations = SQLITE_MIGRATIONS if migrations is None else migrations
        conn = await trio.to_thread.run_sync(_connect, str(path), migrations)
        reader = None
        if str(path) != ":memory:" and not str(path).startswith("file:"):
            try:
                reader = await trio.to_thread.run_sync(_connect_reader, str(path))
            except BaseException:
                conn.close()
                raise
        return cls(conn, reader=reader, max_pending_registrations=max_pending_registrations,
                   poll_interval=poll_interval)

    async def aclose(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()
            if conn is not None:
                await trio.to_thread.run_sync(conn.close)
        self._notify()

    @property
    def closed(self) -> bool:
        return self._conn is None


    # -- running operations ------------------------------------------------------------------------
    def _drive(self, write: bool, op, args: tuple) -> tuple[Any, list[tuple]]:
        """In the worker thread: run the operation generator, in one transaction if `write`."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the store is closed")
        return _drive(conn, "BEGIN IMMEDIATE" if write else None, op, args)

    async def _run(self, write: bool, op, args: tuple) -> Any:
        async with self._lock:
            try:
                result, emitted = await trio.to_thread.run_sync(self._drive, write, op, args)
            except (sqlite3.IntegrityError, sqlite3.OperationalError) as e:
                raise _translate(e) from None
            if emitted and write:  # committed; under the lock, so in the log's order
                self._recent.extend(emitted)
        if emitted:
            self._notify()
        return result

    async def _read(self, op, *args: Any) -> Any:
        return await self._run(False, op, args)

    async def _lookup(self, op, *args: Any) -> Any:
        reader = self._reader
        if reader is None:
            return await self._run(False, op, args)
        # A lookup takes 7-10 µs here. The round trip to the worker thread cost this thread about
        # 75 µs of CPU, and with many registrations at once the lookups also queued behind every
        # other operation for the writer's connection. One transaction: a lookup of several
        # statements reads one snapshot. A busy database (another process recovering the WAL)
        # must not stall the event loop: the lookup then goes to the worker, which may wait.
        try:
            result, _ = _drive(reader, "BEGIN", op, args)
        except sqlite3.OperationalError as e:
            if not _is_busy(e):
                raise _translate(e) from None
            return await self._run(False, op, args)
        await trio.lowlevel.checkpoint()  # a task looping over lookups still lets others run
        return result

    async def _write(self, op, *args: Any) -> Any:
        return await self._run(True, op, args)

    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        recent = self._recent
        if recent and limit > 0:
            # seqs only grow, so if the entry `ahead` from the end is seq + 1, the entries after it
            # are every change after seq with none missing (another process's would leave a hole)
            ahead = recent[-1][0] - seq
            if 0 < ahead <= len(recent) and recent[-ahead][0] == seq + 1:
                start = len(recent) - ahead
                rows = [recent[i] for i in range(start, min(len(recent), start + limit))]
                await trio.lowlevel.checkpoint()
                return [change_from_fields(*r) for r in rows]
        return await super().changes_since(seq, limit)

    async def trim_changes(self, now: datetime, max_rows: int = 10000) -> int:
        trimmed = await super().trim_changes(now, max_rows)
        if trimmed:  # what is trimmed is gone for every reader, this process's too
            self._recent.clear()
        return trimmed

    # -- subscriptions -----------------------------------------------------------------------------
    @asynccontextmanager
    async def subscribe(self, since: int | None = None) -> AsyncIterator["SqliteChanges"]:
        if since is None:
            since = await self.latest_seq()
        changes = SqliteChanges(self, since)
        await changes.position.renew(since, force=True)
        try:
            yield changes
        finally:
            await changes.position.drop()


class SqliteChanges:
    """Every change after `last_seq`, in order, forever (ends only when the store is closed)."""

    def __init__(self, store: SqliteStore, since: int) -> None:
        self._store = store
        self.last_seq = since
        self._buf: collections.deque[Change] = collections.deque()
        self.position = Position(store)

    def __aiter__(self) -> "SqliteChanges":
        return self

    async def __anext__(self) -> Change:
        store = self._store
        while not self._buf:
            if store.closed:
                raise StopAsyncIteration
            await self.position.renew(self.last_seq)
            wake = store._wake  # taken before reading, so a commit after the read still wakes us
            batch = await store.changes_since(self.last_seq, BATCH)
            check_gap(self.last_seq, batch)
            self._buf.extend(batch)
            if not self._buf:
                await self.position.wait(wake, self.last_seq)
        change = self._buf.popleft()
        self.last_seq = change.seq
        return change
