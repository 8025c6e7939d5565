"""PostgreSQL only: the LISTEN connection dies, other processes write, the server restarts."""

from __future__ import annotations

import pytest
import trio

from storehelpers import registration

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("backend", ["postgres"], indirect=True)]


@pytest.fixture
def pg_backend(backend):
    assert backend.name == "postgres"
    return backend


async def kill_backend(pg_backend, pid):
    out = await trio.to_thread.run_sync(pg_backend.sql, f"SELECT pg_terminate_backend({int(pid)})")
    assert out == "t"


async def test_listener_killed_while_writing(pg_backend):
    """KEY TEST: the subscriber's LISTEN connection is terminated (pg_terminate_backend from another
    connection) several times while changes are written, some while nobody listens; the
    subscriber still gets every seq exactly once, in order."""
    total = 300
    got = []
    async with pg_backend.open(poll_interval=60.0) as store:  # no safety poll: NOTIFY + reconnect only
        with trio.fail_after(30):
            async with store.subscribe() as changes:
                async with trio.open_nursery() as nursery:

                    async def consume():
                        async for c in changes:
                            got.append(c)
                            if len(got) == total:
                                return

                    nursery.start_soon(consume)
                    kills = 0
                    for i in range(total):
                        await store.create_user(f"u{i}")
                        if i % 60 == 30:
                            while store.listener_pid is None:
                                await trio.sleep(0.001)
                            pid = store.listener_pid
                            await kill_backend(pg_backend, pid)
                            kills += 1
                            # write a burst right away, likely before the listener is back
                            for j in range(5):
                                await store.set_policy(f"burst {i} {j}")
        assert kills == 5
        assert store.listener_connects >= kills + 1
    seqs = [c.seq for c in got[:total]]
    assert seqs == list(range(1, total + 1))


async def test_listener_killed_while_idle(pg_backend):
    """The subscriber is idle-waiting when its connection dies; a change written by another store
    (another process) meanwhile is still delivered."""
    async with pg_backend.open(poll_interval=60.0) as store, pg_backend.open() as other:
        got = []
        with trio.fail_after(20):
            async with store.subscribe() as changes:
                async with trio.open_nursery() as nursery:

                    async def consume():
                        async for c in changes:
                            got.append(c)

                    nursery.start_soon(consume)
                    while store.listener_pid is None:
                        await trio.sleep(0.005)
                    first = store.listener_pid
                    await other.create_user("a")
                    while len(got) < 1:
                        await trio.sleep(0.005)
                    await kill_backend(pg_backend, first)
                    await other.create_user("b")
                    await other.create_user("c")
                    while len(got) < 3:
                        await trio.sleep(0.005)
                    assert store.listener_pid not in (None, first)
                    nursery.cancel_scope.cancel()
        assert [(c.seq, c.data["name"]) for c in got] == [(1, "a"), (2, "b"), (3, "c")]


async def test_two_stores_concurrent_writers_gap_free(pg_backend):
    """Writers on two pools (as two coordinator replicas would be) interleave; a subscriber on a
    third store sees one gap-free increasing sequence."""
    per_task, tasks = 30, 6
    async with pg_backend.open() as a, pg_backend.open() as b, pg_backend.open() as watcher:
        got = []

        async def writer(store, t):
            for i in range(per_task):
                await store.put_pending_registration(registration(f"{t}-{i}"))

        with trio.fail_after(30):
            async with watcher.subscribe() as changes:
                async with trio.open_nursery() as nursery:

                    async def consume():
                        async for c in changes:
                            got.append(c.seq)
                            if len(got) == per_task * tasks:
                                return

                    nursery.start_soon(consume)
                    async with trio.open_nursery() as wn:
                        for t in range(tasks):
                            wn.start_soon(writer, (a, b)[t % 2], t)
        assert got == list(range(1, per_task * tasks + 1))


async def test_server_restart_under_live_clients(pg_backend):
    """PostgreSQL restarts: store calls wait (retry) until it is back, the subscriber reconnects
    and catches up; nothing is lost or repeated."""
    cluster = pg_backend.cluster
    async with pg_backend.open(poll_interval=60.0, retry_for=30.0) as store:
        got = []
        with trio.fail_after(40):
            async with store.subscribe() as changes:
                async with trio.open_nursery() as nursery:

                    async def consume():
                        async for c in changes:
                            got.append(c.seq)
                            if len(got) == 40:
                                return

                    nursery.start_soon(consume)
                    for i in range(20):
                        await store.create_user(f"before{i}")
                    while len(got) < 20:
                        await trio.sleep(0.01)
                    await trio.to_thread.run_sync(cluster.restart)
                    for i in range(20):
                        await store.create_user(f"after{i}")
        assert got == list(range(1, 41))
        assert [u.name for u in await store.list_users()][-1] == "after19"


class _ReleaseFails:
    """A pool whose hand-back of a connection fails after the work is done, as asyncpg's reset
    does when the server shuts down at that moment."""

    def __init__(self, pool, failures: list) -> None:
        self.pool, self.failures = pool, failures

    async def acquire(self, *a, **k):
        return await self.pool.acquire(*a, **k)

    async def release(self, conn, *a, **k):
        await self.pool.release(conn, *a, **k)
        if self.failures:
            import asyncpg

            raise asyncpg.InternalClientError(self.failures.pop())

    def __getattr__(self, name):
        return getattr(self.pool, name)


async def test_a_failed_connection_release_does_not_lose_the_completed_work(pg_backend):
    """Seen in a PostgreSQL restart: the read had its answer (or the write was committed), then
    releasing the connection raised. The answer stands, the write is not repeated or reported as
    failed, and the change it wrote reaches subscribers once."""
    async with pg_backend.open(poll_interval=60.0) as store:
        failures: list[str] = []
        real_pool = store._pool
        store._pool = _ReleaseFails(real_pool, failures)  # asyncpg's Pool has slots: stand in front
        store.kept_max = 0  # every connection goes back to the pool after its operation
        got = []
        with trio.fail_after(20):
            async with store.subscribe() as changes:
                failures.append("cannot switch to state 15; another operation (2) is in progress")
                user = await store.create_user("committed-once")
                failures.append("cannot switch to state 15; another operation (2) is in progress")
                assert (await store.get_user(user.id)).name == "committed-once"
                async for c in changes:
                    got.append((c.kind, c.data.get("id")))
                    break
        assert not failures
        assert [u.name for u in await store.list_users()].count("committed-once") == 1
        assert got == [("user.created", user.id)]
        store._pool = real_pool


async def test_kept_connections_go_back_to_the_pool_when_idle(pg_backend):
    """A connection kept out of the pool between operations goes back when none was used for
    `max_inactive_connection_lifetime`, so the pool can close it as it closes its own idle ones;
    one in use stays."""
    async with pg_backend.open(max_inactive_connection_lifetime=0.3) as store:
        handed_back = trio.Event()
        release = store._release_quietly

        async def release_and_tell(conn):
            await release(conn)
            handed_back.set()

        store._release_quietly = release_and_tell
        user = await store.create_user("idle")
        assert store._kept  # the write's connection stayed out of the pool
        assert store._pool.get_size() - store._pool.get_idle_size() >= 1
        with trio.fail_after(10):  # the loop's timer hands it back after one to two lifetimes
            await handed_back.wait()
        assert not store._kept
        assert (await store.get_user(user.id)).name == "idle"  # a later call takes one again
        assert store._kept
