"""The relay's registration: its `DerpRelay` row in the store, which coordinators turn into the
DERP map (and mesh peers into their list of relays to mesh with).

`RelayRegistration` writes the row when the relay starts, refreshes its ``heartbeat_at`` every
``derp.server.heartbeat_interval`` (coordinators drop rows older than ``derp.relay_timeout``) and
deletes it on shutdown. A failed write is logged and retried at the next heartbeat: a store that
is down for a moment must not stop the relay.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import trio

from trioscale.shared.model import DerpRelay, utcnow

__all__ = ["RelayRegistration"]


class RelayRegistration:
    def __init__(self, store: Any, relay: DerpRelay, log: logging.Logger):
        self.store = store
        #: the row as last written (its heartbeat_at moves)
        self.relay = relay
        self.log = log
        #: the last write of the row succeeded (readiness: coordinators see this relay)
        self.registered = False

    async def upsert(self) -> None:
        try:
            await self.store.upsert_relay(self.relay)
        except Exception:
            self.registered = False
            self.log.warning("derp: relay heartbeat to the store failed", exc_info=True)
        else:
            self.registered = True

    async def heartbeat(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self.relay = replace(self.relay, heartbeat_at=utcnow())
            await self.upsert()

    async def delete(self, timeout: float) -> None:
        """Remove the row (clients leave the relay at their next map); give up after `timeout`."""
        relay = self.relay
        with trio.move_on_after(timeout):
            try:
                await self.store.delete_relay(relay.region_id, relay.name)
            except Exception:
                self.log.warning("derp: could not delete relay row", exc_info=True)
