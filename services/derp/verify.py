"""Client admission: only node keys the store knows may use the relay.

Answers are cached in a small LRU. A known key is cached until a change event says otherwise
(node deleted, or its node key changed); an unknown key is cached briefly (`negative_ttl`) and
every such entry is dropped when any node is created, so a node that just registered is not kept
out by a stale "unknown". The change events come from the store's change log, so a node created
by another process (another coordinator replica) is seen too; and since a negative entry expires
by itself, a missed event delays admission by `negative_ttl` at most.

A known key's entry also keeps its node's expiry, so the relay can refuse an expired node
without asking the store (a change of expiry is a node.updated event, which evicts the entry).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio


class ClientVerifier:
    def __init__(
        self,
        store: Any,
        *,
        max_entries: int = 4096,
        negative_ttl: float = 2.0,
        clock: Callable[[], float] = trio.current_time,
    ):
        self._store = store
        self._max = max_entries
        self._negative_ttl = negative_ttl
        self._clock = clock
        # key → (node id, 0, node expiry as Unix time or None) when known; (None, until, None)
        # for an unknown key, cached until `until` (clock time)
        self._cache: OrderedDict[bytes, tuple[int | None, float, float | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def node_id_for(self, key: bytes) -> int | None:
        """The id of the node owning `key`, or None if the store does not know the key."""
        found = await self.lookup(key)
        return None if found is None else found[0]

    async def lookup(self, key: bytes) -> tuple[int, float | None] | None:
        """``(node id, expiry as Unix time or None)`` of the node owning `key`, or None if the
        store does not know the key. The caller judges the expiry (it may have passed)."""
        entry = self._cache.get(key)
        if entry is not None:
            node_id, until, expires_at = entry
            if node_id is not None or until > self._clock():
                self._cache.move_to_end(key)
                self.hits += 1
                return None if node_id is None else (node_id, expires_at)
            del self._cache[key]
        self.misses += 1
        node = await self._store.get_node_by_node_key(key)
        if node is None:
            self._cache[key] = (None, self._clock() + self._negative_ttl, None)
            found = None
        else:
            expiry = getattr(node, "expiry", None)
            expires_at = expiry.timestamp() if expiry is not None else None
            self._cache[key] = (node.id, 0.0, expires_at)
            found = (node.id, expires_at)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return found

    def evict_node(self, node_id: int) -> None:
        for k in [k for k, (nid, _, _) in self._cache.items() if nid == node_id]:
            del self._cache[k]

    def evict_key(self, key: bytes) -> None:
        self._cache.pop(key, None)

    def clear(self) -> None:
        """Forget everything (after missing change events, e.g. a resubscription)."""
        self._cache.clear()

    def evict_unknown(self) -> None:
        for k in [k for k, (nid, _, _) in self._cache.items() if nid is None]:
            del self._cache[k]

    def __len__(self) -> int:
        return len(self._cache)
