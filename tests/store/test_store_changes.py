"""Subscriptions and the change log under concurrency and connection loss (both implementations)."""

from __future__ import annotations

import trio

from storehelpers import registration, relay


async def collect(changes, n, into):
    async for c in changes:
        into.append(c)
        if len(into) == n:
            return


def assert_gap_free(seqs, first):
    assert seqs == list(range(first, first + len(seqs))), seqs


async def test_subscribe_delivers_in_order(store):
    await store.create_user("before")
    got = []
    async with store.subscribe() as changes:  # default: from the newest seq, not replaying
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, changes, 30, got)
            for i in range(30):
                await store.set_policy(f"v{i}")
                if i % 7 == 0:
                    await trio.sleep(0.01)  # let the subscriber catch up and wait in between
    assert_gap_free([c.seq for c in got], 2)
    assert [c.data["version"] for c in got] == list(range(1, 31))
    assert all(c.kind == "policy.set" for c in got)


async def test_subscribe_since_replays(store):
    for i in range(5):
        await store.create_user(f"u{i}")
    got = []
    with trio.fail_after(10):
        async with store.subscribe(since=2) as changes:
            await collect(changes, 3, got)
    assert [c.seq for c in got] == [3, 4, 5]
    got = []
    with trio.fail_after(10):
        async with store.subscribe(since=0) as changes:
            await collect(changes, 5, got)
    assert [c.data["name"] for c in got] == [f"u{i}" for i in range(5)]


async def test_many_subscribers(store):
    n_subs, n_changes = 25, 40
    results = [[] for _ in range(n_subs)]

    async def subscriber(i, task_status=trio.TASK_STATUS_IGNORED):
        async with store.subscribe() as changes:
            task_status.started()
            await collect(changes, n_changes, results[i])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(n_subs):
                await nursery.start(subscriber, i)
            for i in range(n_changes):
                await store.upsert_relay(relay(name=f"r{i}"))
    for r in results:
        assert_gap_free([c.seq for c in r], 1)
        assert len(r) == n_changes


async def test_subscriber_reconnect_gets_everything(store):
    """A subscriber that goes away (its subscription closed) while changes are written gets every
    one of them, in order, once it subscribes again from its last seq."""
    got = []
    with trio.fail_after(20):
        async with store.subscribe() as changes:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, changes, 10, got)
                for i in range(10):
                    await store.create_user(f"a{i}")
        last = got[-1].seq
        for i in range(25):  # written while nobody listens
            await store.create_user(f"b{i}")
        async with store.subscribe(since=last) as changes:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, changes, 45, got)
                for i in range(10):
                    await store.create_user(f"c{i}")
    assert_gap_free([c.seq for c in got], 1)
    assert [c.data["name"] for c in got] == (
        [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(25)] + [f"c{i}" for i in range(10)]
    )


async def test_concurrent_writers_gap_free(store):
    writers, each = 8, 25
    got = []

    async def writer(w):
        for i in range(each):
            if i % 3 == 0:
                await store.create_user(f"w{w}-{i}")
            elif i % 3 == 1:
                await store.set_policy(f"w{w}-{i}")
            else:
                await store.put_pending_registration(registration(f"w{w}-{i}"))

    with trio.fail_after(30):
        async with store.subscribe() as changes:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, changes, writers * each, got)
                async with trio.open_nursery() as wn:
                    for w in range(writers):
                        wn.start_soon(writer, w)
    seqs = [c.seq for c in got]
    assert_gap_free(seqs, 1)
    assert seqs == [c.seq for c in await store.changes_since(0)]
    # versions were allocated in commit order too
    versions = [c.data["version"] for c in got if c.kind == "policy.set"]
    assert versions == sorted(versions) == list(range(1, len(versions) + 1))


async def test_subscription_ends_when_store_closes(backend):
    async with backend.open() as store:
        async with store.subscribe() as changes:
            async with trio.open_nursery() as nursery:
                done = trio.Event()

                async def consume():
                    async for _ in changes:
                        pass
                    done.set()

                nursery.start_soon(consume)
                await trio.sleep(0.05)
                await store.aclose()
                with trio.fail_after(5):
                    await done.wait()


async def test_writes_by_another_store_on_the_same_database(backend):
    """Another process (say the CLI) writes to the same database: subscribers see its changes
    (PostgreSQL: NOTIFY; SQLite: the store-wide poll of the log)."""
    async with backend.open(poll_interval=0.05) as store, backend.open() as other:
        got = []
        waiting = trio.Event()
        read_log = store.changes_since

        async def changes_since(*args, **kw):
            batch = await read_log(*args, **kw)
            if not batch:
                waiting.set()  # the subscriber found nothing and waits: the writes must wake it
            return batch

        store.changes_since = changes_since
        with trio.fail_after(10):
            async with store.subscribe() as changes:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(collect, changes, 3, got)
                    await waiting.wait()
                    for name in ("a", "b", "c"):
                        await other.create_user(name)
        assert [(c.seq, c.data["name"]) for c in got] == [(1, "a"), (2, "b"), (3, "c")]
