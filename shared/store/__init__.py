"""Opening a store from configuration.

    async with open_store(config) as store:          # config.database.type: "sqlite" | "postgres"
        ...
    async with open_store_url("sqlite:///var/lib/trioscale/db.sqlite") as store: ...
    async with open_store_url("postgresql://user@host:5432/trioscale") as store: ...

For PostgreSQL a trio-asyncio loop is opened around the store when none is running yet, so callers
never deal with asyncio. The store is closed on exit.

The parts, each with one job:
- base.py: the Store contract, its errors and the caps on client-supplied values;
- rows.py: rows to records and back (both dialects' spellings of a value);
- ops/: the operations, one module per kind of record: generators that yield SQL requests and
  changes (ops/query.py) and keep the rules of the data, written once for both databases;
- opsstore.py: the Store methods on top of the operations;
- sqlite.py, postgres.py: the two implementations, each a driver loop that runs an operation in a
  transaction and turns its changes into change-log rows (sqlite3 and asyncpg stay in these two);
- migrations.py: the schema, versioned; wakeup.py: waking change-log subscribers;
- filemodes.py: owner-only modes for what is kept on disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from trioscale.shared.store.base import (
    MAX_PENDING_REGISTRATIONS,
    Conflict,
    NotFound,
    SchemaTooNew,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "MAX_PENDING_REGISTRATIONS",
    "Conflict",
    "NotFound",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
    "open_store_url",
    "open_sqlite",
    "open_postgres",
]

DEFAULT_SQLITE_PATH = "trioscale.sqlite"


@asynccontextmanager
async def open_sqlite(path: str | Path = ":memory:", **kw: Any) -> AsyncIterator[Store]:
    from trioscale.shared.store.sqlite import SqliteStore

    store = await SqliteStore.open(path, **kw)
    try:
        yield store
    finally:
        await store.aclose()


@asynccontextmanager
async def open_postgres(dsn: str | None = None, **kw: Any) -> AsyncIterator[Store]:
    """`kw` as PostgresStore.open takes them (host, port, user, password, database, ssl, ...)."""
    from trioscale.shared.store.postgres import PostgresStore, asyncio_loop

    async with asyncio_loop():
        store = await PostgresStore.open(dsn, **kw)
        try:
            yield store
        finally:
            await store.aclose()


def _ssl_value(v: Any) -> Any:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "yes", "on", "1"):
        return True
    if s in ("false", "no", "off", "0"):
        return False
    return s  # disable / allow / prefer / require / verify-ca / verify-full


def open_store(config: Any, **kw: Any):
    """An async context manager giving the store `config.database` describes. `config` may be the
    whole configuration (with a `database` attribute) or just its database section."""
    db = getattr(config, "database", config)
    kind = str(getattr(db, "type", "sqlite") or "sqlite").lower()
    if kind in ("sqlite", "sqlite3"):
        sq = getattr(db, "sqlite", None)
        path = getattr(sq, "path", None) or DEFAULT_SQLITE_PATH
        return open_sqlite(path, **kw)
    if kind in ("postgres", "postgresql", "pg"):
        pg = getattr(db, "postgres", None)
        params = {
            "host": getattr(pg, "host", None) or None,
            "port": getattr(pg, "port", None) or None,
            "database": getattr(pg, "name", None) or None,
            "user": getattr(pg, "user", None) or None,
            "password": getattr(pg, "password", None) or None,
            "ssl": _ssl_value(getattr(pg, "ssl", None)),
        }
        if params["port"] is not None:
            params["port"] = int(params["port"])
        # the pool's size and idle lifetime, under Headscale's names
        params["max_size"] = getattr(pg, "max_open_conns", None)
        idle = getattr(pg, "conn_max_idle_time_secs", None)
        params["max_inactive_connection_lifetime"] = float(idle) if idle is not None else None
        dsn = getattr(pg, "dsn", None) or None
        return open_postgres(dsn, **{k: v for k, v in params.items() if v is not None}, **kw)
    raise ValueError(f'unknown database type "{kind}" (expected "sqlite" or "postgres")')


def open_store_url(url: str, **kw: Any):
    """`sqlite:///relative/or//absolute/path`, `sqlite://:memory:`, `postgresql://...`."""
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        if rest.startswith("///"):
            path = rest[3:]
        elif rest.startswith("//"):
            path = rest[2:]
        else:
            path = rest
        return open_sqlite(path or ":memory:", **kw)
    if url.startswith(("postgres://", "postgresql://")):
        return open_postgres(url, **kw)
    raise ValueError(f"unsupported store URL {url!r} (expected sqlite:/// or postgresql://)")
