"""The SQLite store's lookups (a few rows by key) run in Trio's thread on their own connection, and
a busy database sends them to the worker thread instead of stalling the loop."""

from __future__ import annotations

import sqlite3

import trio
import trio.testing

from storehelpers import node
from trioscale.shared.store import sqlite as sqlite_store
from trioscale.shared.store.sqlite import SqliteStore


class _Busy:
    """A connection that answers as a database held by another process would (SQLITE_BUSY)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.busy = True
        self.refused = 0

    def execute(self, sql, *args):
        if self.busy:
            self.refused += 1
            raise sqlite3.OperationalError("database is locked")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


async def test_lookup_runs_without_the_worker_thread(tmp_path, monkeypatch):
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    try:
        user = await store.create_user("alice")
        made = await store.create_node(node(user.id))
        hops = []
        real = sqlite_store.trio.to_thread.run_sync

        async def counted(*args, **kw):
            hops.append(args[0])
            return await real(*args, **kw)

        monkeypatch.setattr(sqlite_store.trio.to_thread, "run_sync", counted)
        assert (await store.get_node_by_node_key(made.node_key)).id == made.id
        assert (await store.get_user(user.id)).name == "alice"
        assert [c.seq for c in await store.changes_since(0, 10)]
        assert hops == []
        assert [n.id for n in await store.list_nodes()] == [made.id]  # a listing still goes to the worker
        assert len(hops) == 1
    finally:
        await store.aclose()


async def test_busy_database_sends_a_lookup_to_the_worker(tmp_path):
    opened = await SqliteStore.open(tmp_path / "db.sqlite")
    user = await opened.create_user("alice")
    made = await opened.create_node(node(user.id))
    busy = _Busy(opened._reader)
    store = SqliteStore(opened._conn, reader=busy)
    try:
        got = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _got(got, store.get_node_by_node_key(made.node_key)))
            await trio.testing.wait_all_tasks_blocked()  # the loop runs while the worker has the read
        assert got[0].id == made.id
        assert busy.refused == 1
        busy.busy = False
        assert (await store.get_user(user.id)).name == "alice"
        assert busy.refused == 1
    finally:
        await store.aclose()


async def _got(out: list, lookup) -> None:
    out.append(await lookup)
