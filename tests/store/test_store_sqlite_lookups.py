"""The SQLite store's lookups (a few rows by key) run in Trio's thread on their own connection, and
a busy database sends them to the worker thread instead of stalling the loop."""

from __future__ import annotations

import sqlite3

import pytest
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


class _NoReads:
    """A lookups connection that must not be asked."""

    def __init__(self) -> None:
        self.asked = 0

    def execute(self, sql, *args):
        self.asked += 1
        raise AssertionError(f"read the database: {sql}")


async def test_own_changes_are_read_back_without_the_database(tmp_path):
    """Changes this process committed are handed to its own subscribers as they were written; a
    change from another process in between (a hole in the seqs kept) sends the read to the database."""
    path = tmp_path / "db.sqlite"
    mine = await SqliteStore.open(path)
    other = await SqliteStore.open(path)
    try:
        alice = await mine.create_user("alice")  # 1
        await other.create_user("bob")  # 2: not this process's
        made = await mine.create_node(node(alice.id))  # 3, 4 …: the node and whatever it records
        latest = await mine.latest_seq()
        from_db = await mine.changes_since(0, 100)
        assert [c.seq for c in from_db] == list(range(1, latest + 1))

        reader, mine._reader = mine._reader, _NoReads()
        try:
            kept = await mine.changes_since(2, 100)
            assert kept == from_db[2:]  # the same changes, built from the rows as written
            assert any(c.kind.startswith("node") and c.data.get("id") == made.id for c in kept)
            assert await mine.changes_since(2, 1) == from_db[2:3]
            assert mine._reader.asked == 0
            with pytest.raises(AssertionError, match="read the database"):
                await mine.changes_since(1, 100)  # seq 2 is not kept here
        finally:
            mine._reader = reader
        assert [c.seq for c in await mine.changes_since(1, 100)] == list(range(2, latest + 1))
    finally:
        await other.aclose()
        await mine.aclose()
