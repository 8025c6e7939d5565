"""Store upkeep every replica does on timers: expired pending logins, decided SSH checks and the
trimmed change log; relays that missed their heartbeat; ephemeral nodes left offline.

Each job's store write is idempotent (every replica does it; the first one wins), and its effect
reaches the map sessions the usual way, through the change log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import trio

from trioscale.shared.model import utcnow
from trioscale.shared.store.base import NotFound, Store, StoreError, StoreUnavailable

from .register import PENDING_LIFETIME

log = logging.getLogger("trioscale.coord")

#: how often a coordinator drops expired pending logins and trims the change log below the
#: positions of its live subscribers
HOUSEKEEPING_INTERVAL = 60.0


class Housekeeping:
    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow,
                 interval: float = HOUSEKEEPING_INTERVAL) -> None:
        self.store = store
        self.now = clock
        self.interval = interval

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            await self.once()

    async def once(self) -> None:
        now = self.now()
        try:
            await self.store.delete_pending_registrations_before(now - PENDING_LIFETIME)
            await self.store.purge_ssh_checks(now)
            # positions are leased on the wall clock (shared by all processes), not self.now()
            trimmed = await self.store.trim_changes(utcnow())
            if trimmed:
                log.debug("trimmed %d change-log entries", trimmed)
        except (StoreUnavailable, StoreError, OSError) as exc:
            log.warning("housekeeping: %s", exc)


async def expire_relays(store: Store, timeout: timedelta, clock: Callable[[], datetime] = utcnow) -> None:
    """Drop relays whose heartbeat is older than `timeout` from the store. The "relay.deleted"
    change takes them out of every DERP map; a relay that is alive after all re-registers with its
    next heartbeat."""
    interval = min(max(timeout.total_seconds() / 4, 0.2), 5.0)
    while True:
        try:
            cutoff = clock() - timeout
            for relay in await store.list_relays():
                if relay.heartbeat_at < cutoff:
                    log.info("relay %s (region %s) missed its heartbeat since %s; removing it",
                             relay.name, relay.region_id, relay.heartbeat_at.isoformat())
                    try:
                        await store.delete_relay(relay.region_id, relay.name)
                    except NotFound:
                        pass
        except (StoreUnavailable, OSError) as exc:
            log.warning("relay expiry: store unavailable (%s)", exc)
        await trio.sleep(interval)


class EphemeralReaper:
    """Deletes an ephemeral node once it has been offline for `timeout` (on every replica: a node
    online anywhere, or connected here, is left alone). `connected(node_id)` says whether it is."""

    def __init__(self, store: Store, timeout: timedelta, connected: Callable[[int], bool]) -> None:
        self.store = store
        self.timeout = timeout
        self.connected = connected
        self._nursery: trio.Nursery | None = None
        self._scopes: dict[int, trio.CancelScope] = {}

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def schedule(self, node_id: int) -> None:
        if self._nursery is None or self.connected(node_id) or node_id in self._scopes:
            return
        scope = trio.CancelScope()
        self._scopes[node_id] = scope
        self._nursery.start_soon(self._reap, node_id, scope)

    def cancel(self, node_id: int) -> None:
        scope = self._scopes.pop(node_id, None)
        if scope is not None:
            scope.cancel()

    async def _reap(self, node_id: int, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self.timeout.total_seconds())
            if not self.connected(node_id) and self._scopes.get(node_id) is scope:
                log.info("removing ephemeral node %s after %s offline", node_id, self.timeout)
                try:
                    await self.store.delete_node(node_id)
                except Exception as exc:
                    log.debug("ephemeral node %s: %s", node_id, exc)
        if self._scopes.get(node_id) is scope:
            del self._scopes[node_id]
