"""Migrations, SchemaTooNew and opening a store from configuration."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trioscale.shared.store import open_store, open_store_url
from trioscale.shared.store.base import SchemaTooNew
from trioscale.shared.store.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS


def known(backend):
    return SQLITE_MIGRATIONS if backend.name == "sqlite" else POSTGRES_MIGRATIONS


async def test_reopen_keeps_data_and_version(backend):
    async with backend.open() as store:
        u = await store.create_user("alice")
    async with backend.open() as store:
        assert await store.get_user_by_name("alice") == u
        assert await store.latest_seq() == 1


async def test_schema_too_new(backend):
    async with backend.open():
        pass
    n = len(known(backend))
    backend.set_schema_version(n + 5)
    with pytest.raises(SchemaTooNew) as exc:
        async with backend.open():
            pass
    assert str(exc.value) == (
        f"database schema version {n + 5} is newer than this trioscale (knows up to {n}); upgrade trioscale"
    )


async def test_new_migration_is_applied_once(backend):
    step = (
        ["CREATE TABLE extra (id integer PRIMARY KEY)", "INSERT INTO extra (id) VALUES (1)"],
    )
    async with backend.open() as store:
        await store.create_user("alice")
    migrations = list(known(backend)) + [list(step[0])]
    async with backend.open(migrations=migrations) as store:
        assert [u.name for u in await store.list_users()] == ["alice"]
    async with backend.open(migrations=migrations):  # already at the new version: not re-run
        pass
    # and the old code now refuses the newer database
    with pytest.raises(SchemaTooNew, match="upgrade trioscale"):
        async with backend.open():
            pass


async def test_open_store_from_config(backend, tmp_path):
    if backend.name == "sqlite":
        db = SimpleNamespace(type="sqlite", sqlite=SimpleNamespace(path=tmp_path / "sub" / "ts.db"), postgres=None)
    else:
        c = backend.cluster
        db = SimpleNamespace(
            type="postgres",
            sqlite=None,
            postgres=SimpleNamespace(host=c.host, port=c.port, name=backend.database, user=c.user, password="",
                                     ssl=False),
        )
    config = SimpleNamespace(database=db)
    async with open_store(config) as store:  # opens its own trio-asyncio loop for postgres
        await store.create_user("alice")
    async with open_store(config) as store:
        assert [u.name for u in await store.list_users()] == ["alice"]
        async with store.subscribe(since=0) as changes:
            async for c in changes:
                assert (c.seq, c.kind) == (1, "user.created")
                break


async def test_open_store_url(backend, tmp_path):
    url = f"sqlite:///{tmp_path}/u.db" if backend.name == "sqlite" else backend.dsn
    async with open_store_url(url) as store:
        await store.set_policy("{}")
    async with open_store_url(url) as store:
        assert (await store.get_policy()).version == 1


async def test_sqlite_memory_and_wal(tmp_path):
    async with open_store_url("sqlite://:memory:") as store:
        await store.create_user("alice")
        assert await store.latest_seq() == 1
    async with open_store(SimpleNamespace(database=SimpleNamespace(type="sqlite", sqlite=SimpleNamespace(
            path=str(tmp_path / "w.db"))))) as store:
        mode = await store._read(_journal_mode)
    assert mode == "wal"


def _journal_mode():
    from trioscale.shared.store.ops.query import One

    r = yield One("PRAGMA journal_mode")
    return r[0]


def test_unknown_database_type():
    with pytest.raises(ValueError, match="unknown database type"):
        open_store(SimpleNamespace(database=SimpleNamespace(type="mysql")))
    with pytest.raises(ValueError):
        open_store_url("mysql://x")
