"""Fixtures for the Store contract tests: every test runs against SQLite and PostgreSQL, each on a
fresh, empty database."""

from __future__ import annotations

import itertools
import os
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

# tests/ (pgcluster, pgfixtures; tests/conftest.py adds it too) and tests/store (storehelpers)
for _dir in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parent):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

from pgfixtures import pg_cluster  # noqa: E402,F401  (the session cluster fixture)

_db_numbers = itertools.count(1)


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    @asynccontextmanager
    async def open(self, **kw):
        from trioscale.shared.store.sqlite import SqliteStore

        store = await SqliteStore.open(self.path, **kw)
        try:
            yield store
        finally:
            await store.aclose()

    def set_schema_version(self, version: int) -> None:
        import sqlite3

        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute("UPDATE schema_version SET version = ?", (version,))
        conn.close()


class PostgresBackend:
    name = "postgres"

    def __init__(self, cluster, database: str) -> None:
        self.cluster = cluster
        self.database = database
        self.dsn = cluster.dsn_for(database)

    @asynccontextmanager
    async def open(self, **kw):
        from trioscale.shared.store.postgres import PostgresStore, asyncio_loop

        kw.setdefault("poll_interval", 30.0)  # the tests must pass on NOTIFY alone
        async with asyncio_loop():
            store = await PostgresStore.open(self.dsn, **kw)
            try:
                yield store
            finally:
                await store.aclose()

    def sql(self, query: str) -> str:
        return self.cluster.sql(query, database=self.database)

    def set_schema_version(self, version: int) -> None:
        self.sql(f"UPDATE schema_version SET version = {int(version)}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, tmp_path):
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "store.sqlite")
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    cluster.create_database(name)
    try:
        yield PostgresBackend(cluster, name)
    finally:
        cluster.drop_database(name)


@pytest.fixture
async def store(backend):
    """A freshly opened store on an empty database (SQLite file or a new PostgreSQL database)."""
    async with AsyncExitStack() as stack:
        if backend.name == "postgres":
            from trioscale.shared.store.postgres import asyncio_loop

            # the loop lives for the whole test (pytest-trio shares contextvars with the test), so
            # the test can open more stores on the same database
            await stack.enter_async_context(asyncio_loop())
        yield await stack.enter_async_context(backend.open())
