"""Runs of peers' JSON that first maps share.

A first map in a full mesh lists every peer: megabytes of JSON at thousands of nodes, built and
compressed again for every node that joins. Here the tailnet's nodes are cut into fixed id ranges
(`CHUNK_IDS` ids each) and each range's peer JSON is kept as one `Fragment`, joined once; the
transport keeps each fragment's compressed form beside it, and a first map is sent as the
concatenation of its fragments' zstd frames (a zstd stream may hold several frames; every client
decodes them all, in order, into one message).

A kept chunk stands while its nodes are the same objects (a node's every change replaces it), are
online or not as they were, none of them has expired since, and the base domain is the same: the
things `Tailnet.peer_text` keys a peer's JSON on. A first map checks that in bulk, per chunk, and
rebuilds only the chunks that changed; the chunk holding the viewer itself is built for it alone.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Set as AbstractSet
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

    __slots__ = ("nodes", "online", "domain", "until", "ids", "mask", "profile_keys", "fragment")

    def __init__(self, nodes: tuple[Node, ...], online: tuple[bool, ...], domain: str, now: datetime,
                 peer_text: Callable[[Node, datetime], bytes]) -> None:
        self.nodes = nodes
        self.online = online
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

    def fits(self, nodes: tuple[Node, ...], online: tuple[bool, ...], domain: str, now: datetime) -> bool:
        # tuple equality asks identity first: unchanged nodes cost a pointer comparison each
        return (self.nodes == nodes and self.online == online and self.domain == domain
                and (self.until is None or now < self.until))


def profile_key(node: Node) -> int:
    """Whose UserProfile a peer's JSON refers to: its user's, or the tagged-devices one."""
    return tailcfg.TAGGED_DEVICES_USER_ID if node.tags else node.user_id


def id_runs(ids: list[int]) -> Iterator[tuple[int, list[int]]]:
    """(chunk number, its ids) for sorted `ids`, a chunk at a time."""
    i, n = 0, len(ids)
    while i < n:
        k = ids[i] // CHUNK_IDS
        j = bisect_left(ids, (k + 1) * CHUNK_IDS, i)
        yield k, ids[i:j]
        i = j


def chunked_peers(tailnet: Any, viewer_id: int, now: datetime, visible: AbstractSet[int] | None,
                  pictured: AbstractSet[int], own_json: Callable[[Node], bytes]
                  ) -> tuple[list[bytes | Fragment], int, set[int]]:
    """A first map's peers for `viewer_id`: its pieces (kept fragments, or bytes built for this
    viewer alone) in id order, the peers' ids as bits (peerset.id_mask), and their profile keys.

    `visible` holds the ids the viewer may see (None: every node); the peers in `pictured` get
    the viewer's own picture of them (`own_json`) and so never come from a kept chunk."""
    nodes = tailnet.nodes
    is_online = tailnet.online.__contains__
    get = nodes.__getitem__
    domain = tailnet.settings.base_domain
    cache: dict[int, PeerChunk] = tailnet.peer_chunks
    peer_text = tailnet.peer_text
    own_chunk = viewer_id // CHUNK_IDS
    pieces: list[bytes | Fragment] = []
    ids = 0
    keys: set[int] = set()
    for k, run in id_runs(sorted(nodes)):
        members = tuple(map(get, run))
        if k != own_chunk:
            flags = tuple(map(is_online, run))
            chunk = cache.get(k)
            if chunk is None or not chunk.fits(members, flags, domain, now):
                chunk = cache[k] = PeerChunk(members, flags, domain, now, peer_text)
            if visible is None or (visible.issuperset(chunk.ids) and pictured.isdisjoint(chunk.ids)):
                if chunk.fragment is not None:
                    pieces.append(chunk.fragment)
                    ids |= chunk.mask
                    keys |= chunk.profile_keys
                continue
        # the range holds the viewer, or peers it may not see or has its own picture of
        texts = []
        for node in members:
            nid = node.id
            if node.disco_key is None or nid == viewer_id or (visible is not None and nid not in visible):
                continue
            texts.append(own_json(node) if nid in pictured else peer_text(node, now))
            ids |= 1 << nid
            keys.add(profile_key(node))
        if texts:
            pieces.append(b",".join(texts))
    if len(cache) > len(nodes) // CHUNK_IDS + 64:
        live = {i // CHUNK_IDS for i in nodes}
        for gone in [k for k in cache if k not in live]:
            del cache[gone]  # ranges whose nodes are all gone, dropped in bulk
    return pieces, ids, keys
