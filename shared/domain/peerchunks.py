"""Runs of peers' JSON that first maps share.

A first map in a full mesh lists every peer: megabytes of JSON at thousands of nodes, built and
compressed again for every node that joins. Here the tailnet's nodes are cut into fixed id ranges
(`CHUNK_IDS` ids each) and each range's peer JSON is kept as one `Fragment`, joined once; the
transport keeps each fragment's compressed form beside it, and a first map is sent as the
concatenation of its fragments' zstd frames (a zstd stream may hold several frames; every client
decodes them all, in order, into one message).

A kept chunk stands while none of its nodes has changed (a node's every change replaces it), come
or gone, gone online or offline, or expired since, and the base domain is the same: the things
`Tailnet.peer_text` keys a peer's JSON on. The tailnet's node table and online set are `ChunkedNodes`
and `ChunkedIds`, which drop a range's kept chunk whenever one of its ids changes, so a first map
asks each kept chunk two questions (expiry, domain), not each node; the chunk holding the viewer
itself is built for it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Set as AbstractSet
from datetime import datetime
from typing import Any

from trioscale.shared.model import Node

from . import tailcfg
from .peerset import id_mask

#: node ids per chunk: small enough that rebuilding a changed chunk is cheap, large enough that
#: each compresses well and a map of 10,000 peers is a few hundred pieces
CHUNK_IDS = 64


class Fragment:
    """A piece of a message's JSON that many messages share; `frames` is the transport's cache
    of its compressed forms (by compression name)."""

    __slots__ = ("text", "frames")

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.frames: dict[str | None, bytes] = {}


class PeerChunk:
    """The announceable nodes of one id range, as JSON, and what that JSON was built from."""

    __slots__ = ("domain", "until", "ids", "mask", "profile_keys", "fragment")

    def __init__(self, nodes: Iterable[Node], domain: str, now: datetime,
                 peer_text: Callable[[Node, datetime], bytes]) -> None:
        self.domain = domain
        #: the earliest key expiry still ahead among its nodes: the JSON says "expired" after it
        self.until: datetime | None = None
        self.ids: list[int] = []
        keys: set[int] = set()
        texts = []
        for node in nodes:
            if node.disco_key is None:
                continue  # not announceable yet (Tailnet.announceable)
            texts.append(peer_text(node, now))
            self.ids.append(node.id)
            keys.add(profile_key(node))
            expiry = node.expiry
            if expiry is not None and expiry > now and (self.until is None or expiry < self.until):
                self.until = expiry
        #: the ids as bits, for the PeerSet of a first map (peerset.id_mask)
        self.mask = id_mask(self.ids) if self.ids else 0
        self.profile_keys = frozenset(keys)
        self.fragment = Fragment(b",".join(texts)) if texts else None

    def fits(self, domain: str, now: datetime) -> bool:
        """Whether it still says what it would say if built now (its nodes unchanged: the chunk
        would have been dropped otherwise)."""
        return self.domain == domain and (self.until is None or now < self.until)


class ChunkedNodes(dict[int, Node]):
    """A tailnet's nodes by id, counting the nodes in each id range and dropping a range's kept
    chunk from `chunks` when one of its nodes is set or removed. Reads are plain dict reads."""

    def __init__(self, chunks: dict[int, PeerChunk], nodes: Mapping[int, Node] | None = None) -> None:
        super().__init__()
        self.chunks = chunks
        #: range -> how many nodes it holds (ranges without nodes are absent)
        self.ranges: dict[int, int] = {}
        if nodes:
            self.update(nodes)

    def __setitem__(self, node_id: int, node: Node) -> None:
        k = node_id // CHUNK_IDS
        if node_id not in self:
            self.ranges[k] = self.ranges.get(k, 0) + 1
        self.chunks.pop(k, None)
        dict.__setitem__(self, node_id, node)

    def __delitem__(self, node_id: int) -> None:
        dict.__delitem__(self, node_id)
        self._gone(node_id)

    def _gone(self, node_id: int) -> None:
        k = node_id // CHUNK_IDS
        self.chunks.pop(k, None)
        left = self.ranges[k] - 1
        if left:
            self.ranges[k] = left
        else:
            del self.ranges[k]

    def pop(self, node_id: int, *default: Any) -> Any:
        if node_id not in self:
            return dict.pop(self, node_id, *default)
        node = dict.pop(self, node_id)
        self._gone(node_id)
        return node

    def popitem(self) -> tuple[int, Node]:
        node_id, node = dict.popitem(self)
        self._gone(node_id)
        return node_id, node

    def setdefault(self, node_id: int, node: Node) -> Node:  # type: ignore[override]
        if node_id not in self:
            self[node_id] = node
        return dict.__getitem__(self, node_id)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for node_id, node in dict(*args, **kwargs).items():
            self[node_id] = node

    def __ior__(self, other: Any) -> ChunkedNodes:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        dict.clear(self)
        self.ranges.clear()
        self.chunks.clear()


class ChunkedIds(set[int]):
    """A tailnet's online node ids, dropping a range's kept chunk from `chunks` when one of its
    ids comes or goes. Membership tests are plain set lookups; set algebra gives plain sets."""

    def __init__(self, chunks: dict[int, PeerChunk], ids: Iterable[int] = ()) -> None:
        super().__init__(ids)
        self.chunks = chunks

    def add(self, node_id: int) -> None:
        if node_id not in self:
            set.add(self, node_id)
            self.chunks.pop(node_id // CHUNK_IDS, None)

    def discard(self, node_id: int) -> None:
        if node_id in self:
            set.discard(self, node_id)
            self.chunks.pop(node_id // CHUNK_IDS, None)

    def remove(self, node_id: int) -> None:
        set.remove(self, node_id)
        self.chunks.pop(node_id // CHUNK_IDS, None)

    def pop(self) -> int:
        node_id = set.pop(self)
        self.chunks.pop(node_id // CHUNK_IDS, None)
        return node_id

    def _bulk(self, op: Callable[..., Any], *others: Any) -> ChunkedIds:
        # rare (tests, reloads): every kept chunk goes rather than each changed range
        done = op(self, *others)
        self.chunks.clear()
        # an in-place operator refused (`|=` with a non-set): Python then tries the plain form
        return NotImplemented if done is NotImplemented else self

    def update(self, *others: Iterable[int]) -> None:  # type: ignore[override]
        self._bulk(set.update, *others)

    def difference_update(self, *others: Iterable[Any]) -> None:  # type: ignore[override]
        self._bulk(set.difference_update, *others)

    def intersection_update(self, *others: Iterable[Any]) -> None:  # type: ignore[override]
        self._bulk(set.intersection_update, *others)

    def symmetric_difference_update(self, other: Iterable[int]) -> None:  # type: ignore[override]
        self._bulk(set.symmetric_difference_update, other)

    def clear(self) -> None:
        self._bulk(set.clear)

    def __ior__(self, other: AbstractSet[int]) -> ChunkedIds:  # type: ignore[override,misc]
        return self._bulk(set.__ior__, other)

    def __iand__(self, other: AbstractSet[Any]) -> ChunkedIds:  # type: ignore[override,misc]
        return self._bulk(set.__iand__, other)

    def __isub__(self, other: AbstractSet[Any]) -> ChunkedIds:  # type: ignore[override,misc]
        return self._bulk(set.__isub__, other)

    def __ixor__(self, other: AbstractSet[int]) -> ChunkedIds:  # type: ignore[override,misc]
        return self._bulk(set.__ixor__, other)


def profile_key(node: Node) -> int:
    """Whose UserProfile a peer's JSON refers to: its user's, or the tagged-devices one."""
    return tailcfg.TAGGED_DEVICES_USER_ID if node.tags else node.user_id


def chunked_peers(tailnet: Any, viewer_id: int, now: datetime, visible: AbstractSet[int] | None,
                  pictured: AbstractSet[int], own_json: Callable[[Node], bytes]
                  ) -> tuple[list[bytes | Fragment], int, set[int]]:
    """A first map's peers for `viewer_id`: its pieces (kept fragments, or bytes built for this
    viewer alone) in id order, the peers' ids as bits (peerset.id_mask), and their profile keys.

    `visible` holds the ids the viewer may see (None: every node); the peers in `pictured` get
    the viewer's own picture of them (`own_json`) and so never come from a kept chunk."""
    nodes: ChunkedNodes = tailnet.nodes
    get = nodes.get
    domain = tailnet.settings.base_domain
    cache: dict[int, PeerChunk] = tailnet.peer_chunks
    peer_text = tailnet.peer_text
    own_chunk = viewer_id // CHUNK_IDS
    # every node (the policy's wildcard view) holds its ids as bits: a chunk is one `&` against
    # them, where `issuperset` looked up each of its ids
    visible_bits: int | None = getattr(visible, "id_mask", None)
    pieces: list[bytes | Fragment] = []
    ids = 0
    keys: set[int] = set()
    for k in sorted(nodes.ranges):
        if k != own_chunk:
            chunk = cache.get(k)
            if chunk is None or not chunk.fits(domain, now):
                chunk = cache[k] = PeerChunk(range_nodes(get, k), domain, now, peer_text)
            if visible is None:
                sees_all = True
            elif visible_bits is not None:
                sees_all = chunk.mask & visible_bits == chunk.mask
            else:
                sees_all = visible.issuperset(chunk.ids)
            if sees_all and (not pictured or pictured.isdisjoint(chunk.ids)):
                if chunk.fragment is not None:
                    pieces.append(chunk.fragment)
                    ids |= chunk.mask
                    keys |= chunk.profile_keys
                continue
        # the range holds the viewer, or peers it may not see or has its own picture of
        texts = []
        for node in range_nodes(get, k):
            nid = node.id
            if node.disco_key is None or nid == viewer_id or (visible is not None and nid not in visible):
                continue
            texts.append(own_json(node) if nid in pictured else peer_text(node, now))
            ids |= 1 << nid
            keys.add(profile_key(node))
        if texts:
            pieces.append(b",".join(texts))
    return pieces, ids, keys


def range_nodes(get: Callable[[int], Node | None], k: int) -> list[Node]:
    """The nodes of id range `k`, in id order."""
    return [node for node in map(get, range(k * CHUNK_IDS, (k + 1) * CHUNK_IDS)) if node is not None]
