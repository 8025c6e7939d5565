"""Waking change-log subscribers, shared by both stores.

A wake-up carries no data: subscribers read the log from their last seq. Besides the store's own
wake-up source (a commit in this process, or NOTIFY), a rate-limited poll of the newest seq wakes
them when the log grew behind the store's back: another process writing the same SQLite file, or
a PostgreSQL LISTEN connection that died without a word.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import trio

from trioscale.shared.model import utcnow
from trioscale.shared.store.base import ChangesTrimmed, StoreError, StoreUnavailable


class WakeUps:
    """Mixin for a Store with `latest_seq()` and a `closed` property."""

    def _init_wakeups(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._wake = trio.Event()
        self._last_poll = -1e9
        self._polled_seq: int | None = None

    def _notify(self) -> None:
        old, self._wake = self._wake, trio.Event()
        old.set()

    async def _poll_external(self) -> None:
        """Wake subscribers if the log grew; at most one query per poll_interval, store-wide."""
        now = trio.current_time()
        if now - self._last_poll < self.poll_interval or self.closed:
            return
        self._last_poll = now
        seq = await self.latest_seq()
        if seq != self._polled_seq:
            self._polled_seq = seq
            self._notify()


class Position:
    """A subscriber's recorded place in the change log, renewed while it reads, so trimming keeps
    the entries it has not read yet (store.trim_changes)."""

    def __init__(self, store) -> None:
        self._store = store
        self.id = "sub-" + uuid.uuid4().hex[:20]
        self._recorded_at = -1e18

    def _lease(self) -> float:
        return float(getattr(self._store, "subscriber_lease", 300.0))

    async def renew(self, seq: int, *, force: bool = False) -> None:
        """Record `seq` if a quarter of the lease has passed since the last record (or `force`).
        An unavailable store is not an error here: the next call tries again."""
        now = trio.current_time()
        lease = self._lease()
        if not force and now - self._recorded_at < lease / 4:
            return
        try:
            await self._store.record_position(self.id, seq, utcnow() + timedelta(seconds=lease))
        except StoreUnavailable:
            return
        self._recorded_at = now

    async def wait(self, wake: trio.Event, seq: int) -> None:
        """Until `wake` is set or the store closes, polling the log now and then (a wake-up can be
        missed: another process's commit, a LISTEN connection lost without a word) and renewing
        this position at `seq` meanwhile."""
        store = self._store
        while not wake.is_set() and not store.closed:
            with trio.move_on_after(store.poll_interval):
                await wake.wait()
            if not wake.is_set():
                await store._poll_external()
                await self.renew(seq)

    async def drop(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._store.drop_position(self.id)
            except (StoreUnavailable, StoreError):
                pass


def check_gap(last_seq: int, batch) -> None:
    """The log has no holes, so a first change after `last_seq` that is not `last_seq + 1` means
    the entries in between were trimmed away."""
    if batch and batch[0].seq != last_seq + 1:
        raise ChangesTrimmed(
            f"the change log was trimmed past seq {last_seq} (next kept is {batch[0].seq}); reload"
        )
