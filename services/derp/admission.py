"""Which clients may stay connected, when the relay verifies clients (``derp.verify_clients``).

The session admits a client with `Admission.verifier` (known node key, node not expired). After
that, `Admission` keeps the decision true while the client stays: `follow_changes` reads the
store's change log to keep the verifier's cache honest and closes the connections of nodes
deleted or re-keyed, and `expire_clients` closes each connection when its node expires
(`watch_expiry` puts a client on that timer). After missed changes (a trimmed change log, a
resubscription) every connected node is looked up again.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

import trio

from trioscale.shared.store.base import ChangesTrimmed

from .router import Client, DerpServer
from .verify import ClientVerifier

__all__ = ["Admission"]


class Admission:
    def __init__(self, store: Any, server: DerpServer, log: logging.Logger):
        self.store = store
        self.server = server
        self.stats = server.stats
        self.log = log
        self.verifier = ClientVerifier(store)
        # connected clients by node expiry (Unix time); entries of clients gone or re-timed are
        # skipped when they come up
        self._expiries: list[tuple[float, int, Client]] = []
        self._expiry_seq = 0
        self._expiry_wake = trio.Event()

    # -- store changes ---------------------------------------------------------------------------------
    async def follow_changes(self) -> None:
        """Keep the admission cache honest and drop deleted nodes' connections."""
        store = self.store
        first = True
        while True:
            try:
                async with store.subscribe() as changes:
                    self.verifier.clear()  # events before this subscription are not replayed
                    if not first:  # a node may have been deleted or expired in the gap
                        await self._recheck_clients()
                    first = False
                    async for change in changes:
                        await self._on_change(change)
            except trio.Cancelled:
                raise
            except ChangesTrimmed as exc:
                # missed changes: resubscribing from the newest seq clears the admission cache
                self.log.info("derp: %s", exc)
                continue
            except Exception:
                self.log.warning("derp: change subscription failed; retrying", exc_info=True)
                await trio.sleep(1.0)

    async def _on_change(self, change: Any) -> None:
        verifier = self.verifier
        kind = change.kind
        data = change.data or {}
        if kind == "node.created":
            verifier.evict_unknown()
            return
        if kind not in ("node.deleted", "node.updated"):
            return
        node_id = data.get("id")
        if node_id is None:
            return
        verifier.evict_node(node_id)
        affected = [c for c in self.server.clients() if c.node_id == node_id]
        if kind == "node.deleted":
            for c in affected:
                self.log.info("derp: closing connection of deleted node %s", node_id)
                c.close()
            return
        fields = data.get("fields")
        if fields is not None and "node_key" not in fields and "expiry" not in fields:
            return
        for c in affected:
            try:
                node = await self.store.get_node_by_node_key(c.key)
            except Exception:
                self.log.warning("derp: store lookup failed", exc_info=True)
                continue
            if node is None or node.id != node_id:
                c.close()
                continue
            expiry = getattr(node, "expiry", None)
            self.watch_expiry(c, expiry.timestamp() if expiry is not None else None)

    async def _recheck_clients(self) -> None:
        """After missed changes: look every connected node up again (deleted, re-keyed, expiry)."""
        for c in [c for c in self.server.clients() if c.node_id is not None]:
            try:
                node = await self.store.get_node_by_node_key(c.key)
            except Exception:
                self.log.warning("derp: store lookup failed", exc_info=True)
                return
            if node is None or node.id != c.node_id:
                self.log.info("derp: closing connection of node %s (gone or re-keyed)", c.node_id)
                c.close()
                continue
            expiry = getattr(node, "expiry", None)
            expires_at = expiry.timestamp() if expiry is not None else None
            if expires_at != c.expires_at:
                self.watch_expiry(c, expires_at)

    # -- node expiry -----------------------------------------------------------------------------------
    def watch_expiry(self, client: Client, expires_at: float | None) -> None:
        """Close `client` when its node expires (now, if it already has)."""
        client.expires_at = expires_at
        if expires_at is None:
            return
        self._expiry_seq += 1
        heapq.heappush(self._expiries, (expires_at, self._expiry_seq, client))
        if len(self._expiries) > 2 * self.stats.clients_current + 1024:
            # entries of closed or re-timed clients wait for their (maybe months away) time:
            # rebuild from the live ones so that reconnecting clients cannot grow the heap
            live = [(c.expires_at, i, c) for i, c in enumerate(self.server.clients()) if c.expires_at is not None]
            heapq.heapify(live)
            self._expiries[:] = live
            self._expiry_seq = len(live)
        if self._expiries[0][2] is client:
            self._expiry_wake.set()

    async def expire_clients(self) -> None:
        """Close connections of nodes whose expiry has come (a timer for the nearest)."""
        heap = self._expiries
        while True:
            now = time.time()
            while heap and heap[0][0] <= now:
                at, _, client = heapq.heappop(heap)
                if client.expires_at != at or client.closed or client.scope is None:
                    continue  # re-timed since, or gone
                if client not in self.server.connections_for(client.key):
                    continue
                self.stats.clients_expired += 1
                self.log.info("derp: closing connection of expired node %s", client.node_id)
                client.close()
            self._expiry_wake = trio.Event()
            # the wall clock may jump: look again at least every minute
            delay = min(60.0, heap[0][0] - now) if heap else 60.0
            with trio.move_on_after(max(0.0, delay)):
                await self._expiry_wake.wait()
