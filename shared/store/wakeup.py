"""Waking change-log subscribers, shared by both stores.

A wake-up carries no data: subscribers read the log from their last seq. Besides the store's own
wake-up source (a commit in this process, or NOTIFY), a rate-limited poll of the newest seq wakes
them when the log grew behind the store's back: another process writing the same SQLite file, or
a PostgreSQL LISTEN connection that died without a word.
"""

from __future__ import annotations

import trio


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
