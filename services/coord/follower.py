"""Following the store's change log: every change applied once, in sequence order.

`ChangeFollower.run` subscribes from the last applied position and hands each change to `apply`;
`wait_seq` lets a request handler wait until its own write is applied (read-your-writes). When the
log was trimmed past this replica (ChangesTrimmed), `reload` reads the tailnet afresh and the
subscription resumes from its new position.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable

import trio

from trioscale.shared.model import Change
from trioscale.shared.store.base import ChangesTrimmed, Store, StoreUnavailable

log = logging.getLogger("trioscale.coord")

#: tries of a change whose application fails with an unexpected error before it is skipped
APPLY_ATTEMPTS = 3


class ChangeFollower:
    def __init__(self, store: Store, apply: Callable[[Change], Awaitable[None]],
                 reload: Callable[[], Awaitable[None]]) -> None:
        self.store = store
        self._apply = apply
        self._reload = reload
        #: the last change applied
        self.seq = 0
        #: (seq, tie-breaker, event) of the handlers waiting for a change: each is woken once,
        #: when its change is applied (a join storm has dozens waiting; one event for all woke
        #: every one of them at every change)
        self._waiters: list[tuple[int, int, trio.Event]] = []
        self._tie = itertools.count()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            try:
                async with self.store.subscribe(since=self.seq) as changes:
                    if not started:
                        task_status.started()
                        started = True
                    async for change in changes:
                        await self.apply_retrying(change)
                        self.advance(change.seq)
                return  # the store closed
            except ChangesTrimmed as exc:
                log.warning("coordinator fell behind the change log (%s); reloading the tailnet", exc)
                await self._reload()

    def advance(self, seq: int) -> None:
        self.seq = seq
        waiters = self._waiters
        while waiters and waiters[0][0] <= seq:
            heapq.heappop(waiters)[2].set()

    async def wait_seq(self, seq: int) -> None:
        """Wait until changes up to `seq` are applied."""
        if self.seq >= seq:
            return
        event = trio.Event()
        entry = (seq, next(self._tie), event)
        heapq.heappush(self._waiters, entry)
        try:
            await event.wait()
        finally:
            if not event.is_set():  # cancelled: its entry would linger until `seq`
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)

    async def caught_up(self) -> None:
        await self.wait_seq(await self.store.latest_seq())

    async def apply_retrying(self, change: Change) -> None:
        """Apply one change; while the store is unavailable, retry it (never skip it: the change
        would be lost for this replica's clients). Any other error is tried again a few times (a
        driver can fail oddly while the database restarts), then skips the one bad change."""
        delay = 0.05
        odd_failures = 0
        while True:
            try:
                await self._apply(change)
                return
            except (StoreUnavailable, OSError) as exc:
                log.warning("applying change %s (%s): store unavailable (%s); retrying in %.2fs",
                            change.seq, change.kind, exc, delay)
            except Exception:  # one bad change must not stop the coordinator
                odd_failures += 1
                if odd_failures >= APPLY_ATTEMPTS:
                    log.exception("applying change %s (%s) failed; skipped", change.seq, change.kind)
                    return
                log.warning("applying change %s (%s) failed; trying again in %.2fs", change.seq,
                            change.kind, delay, exc_info=True)
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
