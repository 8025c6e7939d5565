"""The PostgreSQL store: asyncpg inside trio-asyncio. The only module of trioscale that knows asyncio.

Everything asyncio happens in the `_aio_*` coroutines below; the Trio side calls each through one
`trio_asyncio.aio_as_trio` bridge call per logical operation. A trio-asyncio loop must be running
(`shared.store.open_store` opens one when needed); the store remembers the loop it was opened in.

Writes: one transaction that first takes a transaction-level advisory lock (so all writers are
serialised and a change's seq, allocated as max(seq)+1, is in commit order with no holes), runs the
operation, appends its change rows and calls pg_notify('trioscale_changes', <last seq>) before
COMMIT. Reads run without a transaction.

Subscribers share one LISTEN connection per store. A notification, or the loss of that connection,
sets an in-process trio.Event; subscribers then (re)connect the listener if needed and read the log
from their last seq, so nothing is missed or repeated whatever happens to the connection. A slow
safety poll (`poll_interval`) covers a connection that dies silently.

Connection failures surface as StoreUnavailable (never as asyncpg exceptions). An operation whose
connection broke before COMMIT was sent is retried for up to `retry_for` seconds (nothing was
applied, so retrying is safe); one that broke during COMMIT is not retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import trio
import trio_asyncio

from trioscale.shared.model import Change, utcnow
from trioscale.shared.store.base import Conflict, StoreError, StoreUnavailable
from trioscale.shared.store.migrations import POSTGRES_MIGRATIONS, UNIQUE_MESSAGES, check_version
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.opsstore import OpsStore
from trioscale.shared.store.rows import check_kind, pack_data
from trioscale.shared.store.wakeup import Position, WakeUps, check_gap

log = logging.getLogger("trioscale.store.postgres")

CHANNEL = "trioscale_changes"
#: pg_advisory_xact_lock keys: every write transaction / schema migration
WRITE_LOCK = 0x74726F7363616C01
MIGRATE_LOCK = 0x74726F7363616C02
#: changes read from the log per query by subscribers
BATCH = 500


def _placeholders(sql: str) -> str:
    """`?` -> `$1, $2, ...` (the operations never put a `?` inside a string literal)."""
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], 1):
        out.append(f"${i}")
        out.append(part)
    return "".join(out)


def _enc(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _is_connection_error(e: BaseException) -> bool:
    if isinstance(e, (OSError, asyncio.TimeoutError, ConnectionError)):
        return True
    if isinstance(
        e,
        (
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            asyncpg.TooManyConnectionsError,
        ),
    ):
        return True
    # asyncpg's catch-all for a connection in a state it did not expect ("another operation is in
    # progress"): seen when the server shuts down under a query; a fresh connection clears it
    if isinstance(e, asyncpg.InternalClientError):
        return True
    # "connection is closed", "pool is closing" etc.; DataError and friends are ValueErrors
    return isinstance(e, asyncpg.InterfaceError) and not isinstance(e, ValueError)


def _conflict_from(e: asyncpg.IntegrityConstraintViolationError) -> Conflict:
    if isinstance(e, asyncpg.UniqueViolationError):
        msg = UNIQUE_MESSAGES.get(e.constraint_name or "", "the record conflicts with an existing one")
        return Conflict(msg)
    if isinstance(e, asyncpg.ForeignKeyViolationError):
        return Conflict("the record is still referenced by others, or refers to one that does not exist")
    return Conflict("the change breaks a rule of the data")


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=lambda v: json.dumps(v, separators=(",", ":")), decoder=json.loads, schema="pg_catalog"
        )


# -- asyncio side --------------------------------------------------------------------------------


async def _aio_migrate(conn: asyncpg.Connection, migrations: list[list[str]]) -> int:
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
            check_version(version, len(migrations))
            if version == len(migrations):
                return version
            for stmt in migrations[version]:
                await conn.execute(stmt)
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version + 1)


#: pool connections kept out of the pool between operations (PostgresStore._kept)
KEPT_CONNECTIONS = 4

#: A write opens its transaction and takes the write lock in one round trip, and queues its
#: wake-up and commits in another: several statements in one simple query. Through trio-asyncio a
#: round trip costs this process several loop turns, and a write made four of them besides its own
#: statements.
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"


def _commit_notifying(last: int) -> str:
    if not last:
        return "COMMIT"
    return f"SELECT pg_notify('{CHANNEL}', '{int(last)}'); COMMIT"


def _usable(conn: asyncpg.Connection) -> bool:
    """Open, and still lent to us: the pool takes back a connection it sees lost."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # "connection has been released back to the pool"
        return False


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool connection handed back needs no reset: operations leave no session state (their
    advisory locks are transaction-level, LISTEN has its own connection, nothing is SET), and
    asyncpg still rolls back a transaction left open. Its default reset is one more round trip
    per operation (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`)."""


async def _aio_open_pool(connect: dict, min_size: int, max_size: int, idle_lifetime: float, migrations) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        **connect, min_size=min_size, max_size=max_size, max_inactive_connection_lifetime=idle_lifetime,
        init=_init_connection, reset=_keep_session,
    )
    try:
        async with pool.acquire() as conn:
            await _aio_migrate(conn, migrations)
    except BaseException:
        pool.terminate()
        raise
    return pool


async def _aio_drive(conn: asyncpg.Connection, gen) -> tuple[Any, int]:
    """Run an operation generator on `conn`; returns (result, seq of the last change or 0)."""
    last = 0
    try:
        req = next(gen)
        while True:
            if isinstance(req, Emit):
                last = await conn.fetchval(
                    "INSERT INTO changes (seq, kind, data, at)"
                    " SELECT coalesce(max(seq), 0) + 1, $1, $2, $3 FROM changes RETURNING seq",
                    check_kind(req.kind),
                    pack_data(req.data),
                    utcnow(),
                )
                res = last
            elif isinstance(req, One):
                res = await conn.fetchrow(_placeholders(req.sql), *map(_enc, req.args))
            elif isinstance(req, All):
                res = await conn.fetch(_placeholders(req.sql), *map(_enc, req.args))
            else:
                assert isinstance(req, Exec)
                await conn.execute(_placeholders(req.sql), *map(_enc, req.args))
                res = None
            req = gen.send(res)
    except StopIteration as stop:
        return stop.value, last
    finally:
        gen.close()


def _single_leaf(eg: BaseExceptionGroup) -> BaseException | None:
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(eg)
    return leaves[0] if len(leaves) == 1 else None


def read_tables(
    dsn: str, choose: Callable[[dict[str, set[str]]], Iterable[str]]
) -> dict[str, list[dict[str, Any]]]:
    """Rows of another PostgreSQL database's tables (an import's source), read on an asyncio loop of
    its own before any store is open. `choose` is given every table's columns in the current schema
    and names the tables to read (or raises, for a layout it does not know); they are read in one
    read-only, repeatable-read transaction so they agree with each other, ordered by `id` when they
    have one."""
    return asyncio.run(_aio_read_tables(dsn, choose))


async def _aio_read_tables(dsn: str, choose: Callable[[dict[str, set[str]]], Iterable[str]]) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(dsn)
    try:
        columns: dict[str, set[str]] = {}
        for r in await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        ):
            columns.setdefault(r["table_name"], set()).add(r["column_name"])
        tables = list(choose(columns))
        out: dict[str, list[dict[str, Any]]] = {}
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            for table in tables:
                name = '"' + table.replace('"', '""') + '"'
                order = " ORDER BY id" if "id" in columns.get(table, ()) else ""
                out[table] = [dict(r) for r in await conn.fetch(f"SELECT * FROM {name}{order}")]
        return out
    finally:
        await conn.close()


@asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Run the body inside a trio-asyncio loop, opening one only if none is running. An exception
    from the body comes out as itself, not wrapped in the loop nursery's ExceptionGroup."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    try:
        async with trio_asyncio.open_loop():
            yield
    except BaseExceptionGroup as eg:
        leaf = _single_leaf(eg)
        if leaf is None:
            raise
        raise leaf from None


class PostgresStore(WakeUps, OpsStore):
    explicit_ids_need_sequence_sync = True  # identity columns do not follow an explicit id

    def __init__(
        self,
        pool: asyncpg.Pool,
        connect: dict,
        loop: Any,
        *,
        max_pending_registrations: int | None = None,
        poll_interval: float = 5.0,
        retry_for: float = 10.0,
    ) -> None:
        self._pool = pool
        self._connect = connect
        self._loop = loop
        self.max_pending_registrations = max_pending_registrations
        self.retry_for = retry_for
        self._closed = False
        self._init_wakeups(poll_interval)
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_lock = trio.Lock()
        #: pool connections kept between operations, not handed back: through trio-asyncio a
        #: pool's acquire and release took as many loop turns as the query itself (a lookup took
        #: 10, now 5)
        self._kept: list[asyncpg.Connection] = []
        self.kept_max = KEPT_CONNECTIONS
        self._acquiring = 0  # operations waiting for the pool
        #: kept connections unused for this long (seconds; 0: never) go back to the pool, which
        #: closes them as it closes its own idle ones
        self.kept_idle = 300.0
        self._kept_used = False
        self._kept_timer: Any = None
        #: how many times the LISTEN connection was (re)established (for tests and metrics)
        self.listener_connects = 0

    @classmethod
    async def open(
        cls,
        dsn: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        ssl: Any = None,
        min_size: int = 1,
        max_size: int = 10,
        max_inactive_connection_lifetime: float = 300.0,
        max_pending_registrations: int | None = None,
        poll_interval: float = 5.0,
        retry_for: float = 10.0,
        migrations: list[list[str]] | None = None,
    ) -> "PostgresStore":
        """Connect (a DSN and/or keyword parameters, as asyncpg takes them) and migrate. Needs a
        running trio-asyncio loop: use `shared.store.open_store`, or `async with trio_asyncio.open_loop()`."""
        loop = trio_asyncio.current_loop.get()
        if loop is None:
            raise RuntimeError(
                "PostgresStore needs a trio-asyncio loop: open it with shared.store.open_store(), "
                "or inside `async with trio_asyncio.open_loop():`"
            )
        connect = {"dsn": dsn, "host": host, "port": port, "user": user, "password": password, "database": database}
        connect = {k: v for k, v in connect.items() if v is not None}
        if ssl is not None and ssl != "":
            connect["ssl"] = ssl
        migrations = POSTGRES_MIGRATIONS if migrations is None else migrations
        try:
            pool = await trio_asyncio.aio_as_trio(_aio_open_pool, loop=loop)(
                connect, min_size, max_size, max_inactive_connection_lifetime, migrations
            )
        except StoreError:
            raise
        except Exception as e:
            if _is_connection_error(e):
                raise StoreUnavailable(f"cannot connect to PostgreSQL: {e}") from e
            raise
        store = cls(
            pool,
            connect,
            loop,
            max_pending_registrations=max_pending_registrations,
            poll_interval=poll_interval,
            retry_for=retry_for,
        )
        store.kept_idle = max_inactive_connection_lifetime
        return store

    def _aio(self, fn):
        return trio_asyncio.aio_as_trio(fn, loop=self._loop)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        listen, self._listen_conn = self._listen_conn, None
        with trio.CancelScope(shield=True):
            await self._aio(self._aio_close)(listen)
        self._notify()

    async def _aio_close(self, listen: asyncpg.Connection | None) -> None:
        if listen is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listen.close(), 5)
        if self._kept_timer is not None:
            self._kept_timer.cancel()
            self._kept_timer = None
        kept, self._kept = self._kept, []
        for conn in kept:  # the pool waits for every connection it lent before it closes
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.release(conn), 5)
        try:
            await asyncio.wait_for(self._pool.close(), 5)
        except Exception:
            self._pool.terminate()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- running operations ------------------------------------------------------------------------
    async def _aio_run(self, write: bool, op, args: tuple, state: dict) -> Any:
        gen = op(*args)
        while self._kept and not _usable(self._kept[-1]):  # lost while kept (a server restart)
            await self._release_quietly(self._kept.pop())
        if self._kept:
            conn = self._kept.pop()
            self._kept_used = True
        else:
            self._acquiring += 1
            try:
                conn = await self._pool.acquire()
            finally:
                self._acquiring -= 1
        try:
            if not write:
                result, _ = await _aio_drive(conn, gen)
            else:
                try:
                    await conn.execute(_BEGIN_LOCKED)
                    result, last = await _aio_drive(conn, gen)
                    state["committing"] = True
                    await conn.execute(_commit_notifying(last))
                except BaseException:
                    if not state.get("committing"):
                        with contextlib.suppress(Exception):
                            await conn.execute("ROLLBACK")
                    raise
        except BaseException:
            await self._release_quietly(conn)  # the pool judges a connection after a failure
            raise
        state["done"], state["result"] = True, result
        # an operation waiting for the pool gets this connection: a kept one would never reach it
        if (self._closed or self._acquiring or len(self._kept) >= self.kept_max
                or not _usable(conn) or conn.is_in_transaction()):
            await self._pool.release(conn)
        else:
            self._kept.append(conn)
            if self._kept_timer is None and self.kept_idle > 0:
                self._kept_timer = self._loop.call_later(self.kept_idle, self._expire_kept)
        return result

    def _expire_kept(self) -> None:
        """(asyncio loop timer) Hand the kept connections back if none was used since the last
        check: an idle one is then closed by the pool after `kept_idle` to twice that."""
        self._kept_timer = None
        if not self._kept_used and self._kept and not self._closed:
            kept, self._kept = self._kept, []
            for conn in kept:
                self._loop.create_task(self._release_quietly(conn))
        self._kept_used = False
        if self._kept and not self._closed:
            self._kept_timer = self._loop.call_later(self.kept_idle, self._expire_kept)

    async def _release_quietly(self, conn: asyncpg.Connection) -> None:
        with contextlib.suppress(Exception):  # the operation's own error is the one to report
            await self._pool.release(conn)

    async def _run(self, write: bool, op, args: tuple) -> Any:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        deadline = trio.current_time() + self.retry_for
        delay = 0.05
        while True:
            state: dict = {}
            try:
                return await self._aio(self._aio_run)(write, op, args, state)
            except Exception as e:
                if state.get("done"):
                    # The work is done (read, or committed); handing the connection back to the
                    # pool failed, as asyncpg's reset does when the server goes away just then
                    # (an InternalClientError, for one). The pool drops that connection; the
                    # answer stands, and a committed write must not be reported as lost.
                    log.warning("PostgreSQL connection lost after the operation completed (%s)", e)
                    return state["result"]
                self._raise_unless_retryable(e, state, deadline, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _raise_unless_retryable(self, e: Exception, state: dict, deadline: float, delay: float) -> None:
        """Raise what `e` means for the caller, or return when the operation should be retried
        (the connection was lost before anything was committed, and there is time left)."""
        if isinstance(e, StoreError):
            raise e
        if isinstance(e, asyncpg.IntegrityConstraintViolationError):
            raise _conflict_from(e) from None
        if not _is_connection_error(e):
            raise e
        if state.get("committing"):
            raise StoreUnavailable(
                f"lost the PostgreSQL connection while committing (the write may or may not "
                f"have been applied): {e}"
            ) from e
        if self._closed or trio.current_time() + delay > deadline:
            raise StoreUnavailable(f"PostgreSQL is unavailable: {e}") from e
        log.warning("PostgreSQL connection problem (%s); retrying in %.2fs", e, delay)

    async def _read(self, op, *args: Any) -> Any:
        return await self._run(False, op, args)

    async def _write(self, op, *args: Any) -> Any:
        return await self._run(True, op, args)

    # -- LISTEN connection and wake-ups ------------------------------------------------------------

    def _on_notification(self, conn, pid, channel, payload) -> None:
        # called by asyncpg in the (trio-asyncio) loop, i.e. in the Trio thread
        self._notify()

    def _on_termination(self, conn) -> None:
        if self._listen_conn is conn:
            self._listen_conn = None
        self._notify()

    async def _aio_listen(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(**self._connect)
        try:
            await conn.add_listener(CHANNEL, self._on_notification)
            conn.add_termination_listener(self._on_termination)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _listener_ok(self) -> bool:
        return self._listen_conn is not None and not self._listen_conn.is_closed()

    async def _ensure_listener(self) -> None:
        """Make sure the LISTEN connection is up (one task connects, the others wait for it)."""
        if self._listener_ok():
            return
        async with self._listen_lock:
            if self._listener_ok() or self._closed:
                return
            try:
                conn = await self._aio(self._aio_listen)()
            except Exception as e:
                if _is_connection_error(e):
                    raise StoreUnavailable(f"cannot LISTEN on PostgreSQL: {e}") from e
                raise
            if self._closed:
                await self._aio(conn.close)()
                return
            self._listen_conn = conn
            self.listener_connects += 1

    @property
    def listener_pid(self) -> int | None:
        """The server pid of the LISTEN connection, if connected."""
        conn = self._listen_conn
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    # -- subscriptions -----------------------------------------------------------------------------
    @asynccontextmanager
    async def subscribe(self, since: int | None = None) -> AsyncIterator["PostgresChanges"]:
        if since is None:
            since = await self.latest_seq()
        changes = PostgresChanges(self, since)
        await changes.position.renew(since, force=True)
        try:
            yield changes
        finally:
            await changes.position.drop()


class PostgresChanges:
    """Every change after `last_seq`, in order, forever (ends only when the store is closed).

    Outages do not end it: it waits (with backoff) until PostgreSQL is back and catches up from
    the log."""

    def __init__(self, store: PostgresStore, since: int) -> None:
        self._store = store
        self.last_seq = since
        self._buf: collections.deque[Change] = collections.deque()
        self._backoff = 0.05
        self.position = Position(store)
        self._drained: trio.Event | None = None

    def __aiter__(self) -> "PostgresChanges":
        return self

    async def __anext__(self) -> Change:
        store = self._store
        while not self._buf:
            if store.closed:
                raise StopAsyncIteration
            # A short batch was everything committed when it was read, and any later commit sets
            # the wake-up taken before that read: until then there is nothing to read (a read
            # that finds nothing cost a replica as much as one that finds a change).
            drained, self._drained = self._drained, None
            if drained is not None:
                await self._wait(drained)
            try:
                # LISTEN must be active before we read, and the event taken before the read: then
                # any commit after the read wakes us (or the connection's loss does)
                await store._ensure_listener()
                await self.position.renew(self.last_seq)
                wake = store._wake
                batch = await store.changes_since(self.last_seq, BATCH)
                check_gap(self.last_seq, batch)
                self._buf.extend(batch)
            except StoreUnavailable as e:
                if store.closed:
                    raise StopAsyncIteration from None
                log.warning("change subscription: %s; retrying in %.2fs", e, self._backoff)
                await trio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 5.0)
                continue
            self._backoff = 0.05
            if self._buf:
                if len(batch) < BATCH:
                    self._drained = wake
            else:
                await self._wait(wake)
        change = self._buf.popleft()
        self.last_seq = change.seq
        return change

    async def _wait(self, wake: trio.Event) -> None:
        try:
            await self.position.wait(wake, self.last_seq)
        except StoreUnavailable:
            pass  # the next round reconnects, with backoff
