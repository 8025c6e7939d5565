"""Presence across coordinator replicas: which map sessions this replica holds, kept in the store.

Every replica records the nodes it serves a map session for as presence rows with a lease
(`Store.update_presence` / `renew_presence`). A node is online while any replica holds a row for
it. The store records a change only on transitions (a node's first row: "presence.online"; its
last row gone: "presence.offline"), and every coordinator takes its online state from those
changes, so a client streaming from replica B sees a node on replica A come and go.

A replica that dies stops renewing; any live replica reaps rows whose lease ran out
(`reap_presence`), which records "presence.offline" for the nodes nobody else serves: a dead
replica's nodes go offline within `lease` + `reap_interval`, without waiting for a restart.

The tracker never blocks a map session on the store: `opened` / `closed` only change local
counts; one background task reconciles the store with them (batched, retried while the store is
unavailable), one renews the leases, one reaps.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import trio

from trioscale.shared.model import utcnow
from trioscale.shared.store.base import Store, StoreUnavailable

log = logging.getLogger("trioscale.coord.presence")


def new_replica_id() -> str:
    """host-pid-random: unique per process start, readable in the presence table."""
    host = socket.gethostname().split(".")[0][:24] or "coord"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class PresenceTracker:
    def __init__(
        self,
        store: Store,
        *,
        replica_id: str | None = None,
        lease: timedelta = timedelta(seconds=30),
        heartbeat: timedelta = timedelta(seconds=10),
        reap_interval: timedelta | None = None,
        batch_delay: float = 0.02,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if lease <= heartbeat:
            raise ValueError("the presence lease must be longer than the heartbeat")
        self.store = store
        self.replica_id = replica_id or new_replica_id()
        self.lease = lease
        self.heartbeat = heartbeat
        self.reap_interval = reap_interval if reap_interval is not None else min(heartbeat, lease / 3)
        self.batch_delay = batch_delay
        self.now = clock
        #: node id -> number of map sessions this replica holds for it
        self.held: dict[int, int] = {}
        #: the nodes the store has rows for (of this replica), as far as we know
        self.written: set[int] = set()
        #: nodes whose row may have to be added or removed: the writer looks at these, not at
        #: every held node (a join into N sessions was three O(N) set copies per write)
        self._pending: set[int] = set()
        self._dirty = trio.Event()
        self._synced = trio.Event()
        self._write_lock = trio.Lock()  # the writer and the renewer never overlap
        self.running = False
        #: counters for tests and metrics
        self.writes = 0
        self.renewals = 0
        self.reaped = 0
        self.failures = 0

    # -- called by the coordinator (synchronous, never blocks) ---------------------------------
    def opened(self, node_id: int) -> None:
        count = self.held.get(node_id, 0)
        self.held[node_id] = count + 1
        if count == 0:  # even if written: a write removing it may be on its way
            self._pending.add(node_id)
            self._dirty.set()

    def closed(self, node_id: int) -> None:
        count = self.held.get(node_id, 0) - 1
        if count > 0:
            self.held[node_id] = count
            return
        self.held.pop(node_id, None)
        self._pending.add(node_id)  # even if not written: a write adding it may be on its way
        self._dirty.set()

    def lost(self, node_id: int) -> None:
        """The store says our row for `node_id` is gone (reaped while we could not renew); write
        it again if we still hold the node."""
        self.written.discard(node_id)
        if node_id in self.held:
            self._pending.add(node_id)
            self._dirty.set()

    def holds(self, node_id: int) -> bool:
        return node_id in self.held

    # -- background ------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._renewer)
                nursery.start_soon(self._reaper)
                self.running = True
                task_status.started()
        finally:
            self.running = False
            with trio.CancelScope(shield=True):
                with trio.move_on_after(3):
                    try:  # a clean shutdown: our nodes go offline now, not after the lease
                        await self.store.renew_presence(
                            self.replica_id, [], lease_expires=self.now(), now=self.now()
                        )
                    except Exception as exc:
                        log.warning("presence: could not remove this replica's rows: %s", exc)

    def _lease_end(self) -> datetime:
        return self.now() + self.lease

    async def _writer(self) -> None:
        backoff = 0.05
        pending: set[int] = set()
        while True:
            await self._dirty.wait()
            await trio.sleep(self.batch_delay)  # gather a burst of opens/closes into one write
            self._dirty = trio.Event()
            try:
                async with self._write_lock:
                    pending, self._pending = self._pending, set()
                    held, written = self.held, self.written
                    add = sorted(n for n in pending if n in held and n not in written)
                    remove = sorted(n for n in pending if n not in held and n in written)
                    if add or remove:
                        await self.store.update_presence(
                            self.replica_id, add, remove, lease_expires=self._lease_end(), now=self.now()
                        )
                        self.written.update(add)
                        self.written.difference_update(remove)
                        self.writes += 1
            except (StoreUnavailable, OSError) as exc:
                self.failures += 1
                log.warning("presence: store unavailable (%s); retrying in %.2fs", exc, backoff)
                self._pending |= pending
                self._dirty.set()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception:
                self.failures += 1
                log.exception("presence: writing sessions up/down failed")
                self._pending |= pending
                self._dirty.set()
                await trio.sleep(1.0)
                continue
            backoff = 0.05
            self._synced.set()
            self._synced = trio.Event()

    async def _renewer(self) -> None:
        interval = self.heartbeat.total_seconds()
        while True:
            await trio.sleep(interval)
            try:
                async with self._write_lock:
                    held = sorted(self.held)
                    await self.store.renew_presence(
                        self.replica_id, held, lease_expires=self._lease_end(), now=self.now()
                    )
                    self.written = set(held)
                    self.renewals += 1
            except Exception as exc:
                self.failures += 1
                log.warning("presence: renewing leases failed: %s", exc)
                interval = min(1.0, self.heartbeat.total_seconds())  # try again soon
                continue
            interval = self.heartbeat.total_seconds()
            astray = self.written.symmetric_difference(self.held)
            if astray:
                self._pending |= astray
                self._dirty.set()

    async def _reaper(self) -> None:
        while True:
            await trio.sleep(self.reap_interval.total_seconds())
            try:
                gone = await self.store.reap_presence(self.now())
            except Exception as exc:
                log.warning("presence: reaping expired leases failed: %s", exc)
                continue
            if gone:
                self.reaped += len(gone)
                log.info("presence: %d node(s) went offline with an expired lease: %s", len(gone), gone[:20])

    async def wait_synced(self) -> None:
        """Until the store reflects the current local sessions (for tests)."""
        while set(self.held) != self.written:
            self._pending |= self.written.symmetric_difference(self.held)
            self._dirty.set()
            await self._synced.wait()
