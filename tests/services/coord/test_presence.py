"""The presence tracker (services/coord/presence.py) against a store whose writes a test can hold:
what the store ends with follows the sessions held, whatever opens or closes while a write is out."""

from __future__ import annotations

from datetime import timedelta

import trio

from trioscale.services.coord.presence import PresenceTracker


class HeldStore:
    """The presence calls a tracker makes, with rows kept per node; `gate` (when set) holds the
    next write until it is opened."""

    def __init__(self) -> None:
        self.rows: set[int] = set()
        self.writes: list[tuple[list[int], list[int]]] = []
        self.gate: trio.Event | None = None
        self.in_write = trio.Event()
        self.changed = trio.Event()

    async def update_presence(self, replica_id, add=(), remove=(), *, lease_expires, now=None):
        self.in_write.set()
        gate = self.gate
        if gate is not None:
            self.gate = None  # holds this write only
            await gate.wait()
        self.rows |= set(add)
        self.rows -= set(remove)
        self.writes.append((list(add), list(remove)))
        self.changed.set()
        self.changed = trio.Event()

    async def renew_presence(self, replica_id, node_ids, *, lease_expires, now=None):
        self.rows = set(node_ids)

    async def reap_presence(self, now):
        return []

    async def until_rows(self, want: set[int], writes: int = 0) -> None:
        """Until the rows are `want` after at least `writes` writes."""
        while self.rows != want or len(self.writes) < writes:
            await self.changed.wait()


async def hold_a_write(store: HeldStore, start, during) -> None:
    """`start()` (which makes the tracker write), `during()` while that write is held, then let it go."""
    gate = store.gate = trio.Event()
    store.in_write = trio.Event()
    start()
    with trio.fail_after(5):
        await store.in_write.wait()
    during()
    gate.set()


def tracker(store: HeldStore) -> PresenceTracker:
    # no heartbeat within the test: only the writer reconciles
    return PresenceTracker(store, replica_id="r1", lease=timedelta(hours=2), heartbeat=timedelta(hours=1),
                           batch_delay=0.001)


async def test_rows_follow_sessions_closed_or_opened_while_a_write_is_out(nursery):
    store = HeldStore()
    presence = tracker(store)
    await nursery.start(presence.run)
    presence.opened(1)
    presence.opened(2)
    presence.opened(2)  # a second session of node 2
    with trio.fail_after(5):
        await store.until_rows({1, 2})
    assert store.writes == [([1, 2], [])]

    # node 3's session opens; it closes while the write adding it is out
    await hold_a_write(store, lambda: presence.opened(3), lambda: presence.closed(3))
    with trio.fail_after(5):
        await store.until_rows({1, 2}, writes=3)
    assert store.writes[1:] == [([3], []), ([], [3])]

    # node 1's session closes; it opens again while the write removing it is out
    await hold_a_write(store, lambda: presence.closed(1), lambda: presence.opened(1))
    with trio.fail_after(5):
        await store.until_rows({1, 2}, writes=5)
    assert store.writes[3:] == [([], [1]), ([1], [])]
    assert presence.written == {1, 2}

    # one of node 2's two sessions closes: still held, nothing written
    writes = len(store.writes)
    presence.closed(2)
    presence.opened(4)
    with trio.fail_after(5):
        await store.until_rows({1, 2, 4})
    assert store.writes[writes:] == [([4], [])]

