"""A compact set of node ids: what one map session has announced to its client.

Every session keeps one, and a tailnet of N nodes has up to N sessions, so a plain `set` would cost
O(N²) memory (about 2.6 GB at 10,000 nodes). Node ids are small dense integers from the store, so a
bitmap costs N/8 bytes per session instead.

A join in a full mesh is announced to every session at once. Setting its bit in thousands of
bitmaps, one scattered write each, was the largest per-session cost of a join storm; instead the id
goes on the tailnet's `Announced` list, and every PeerSet that follows the list takes the ids it has
not taken whenever it is next read or changed (and all of them do when the list is let go), so a
session's bitmap is written once per burst of joins, in one loop.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable, Iterator, MutableSet

#: announced ids the list keeps before every follower takes them and the list lets them go
ANNOUNCED_KEEP = 1024


class Announced:
    """Node ids announced to every session that follows this list, in order (see the module
    docstring). Positions count from the list's start and are never reused."""

    __slots__ = ("ids", "base", "end", "followers", "_numbers", "_masks")

    def __init__(self) -> None:
        self.ids: list[int] = []
        #: the position of ids[0], and the position after the last id
        self.base = 0
        self.end = 0
        #: the sets that follow the list, gone from here when they are (PeerSets are not hashable)
        self.followers: weakref.WeakValueDictionary[int, PeerSet] = weakref.WeakValueDictionary()
        self._numbers = itertools.count()
        #: position -> the ids from there to the end as a mask, while the end stays where it is
        self._masks: dict[int, int] = {}

    def follow(self, peers: "PeerSet") -> None:
        self.followers[next(self._numbers)] = peers

    def append(self, node_id: int) -> None:
        if node_id < 0:
            raise ValueError("node ids are not negative")
        self.ids.append(node_id)
        self.end += 1
        self._masks.clear()
        if len(self.ids) >= ANNOUNCED_KEEP:
            self.let_go()

    def since(self, position: int) -> list[int]:
        return self.ids[position - self.base:]

    def mask_since(self, position: int) -> int:
        """`since(position)` as an integer mask, built once for every follower that lacks the
        same ids (after a burst of joins, thousands of them, read one after another)."""
        mask = self._masks.get(position)
        if mask is None:
            mask = self._masks[position] = id_mask(self.since(position))
        return mask

    def let_go(self) -> None:
        """Every follower takes what it has not; the list then forgets it. Followers that took the
        same ids so far (most: nothing since the last time) share one mask of what they lack
        (`mask_since`)."""
        for follower in list(self.followers.values()):
            if follower._taken != self.end:
                follower._merge(self.mask_since(follower._taken))
                follower._taken = self.end
        self.ids = []
        self.base = self.end
        self._masks.clear()


def id_mask(ids: list[int]) -> int:
    """`ids` as an integer with those bits set (the bitmap's order: id i is bit i)."""
    bits = bytearray((max(ids) >> 3) + 1)
    for node_id in ids:
        bits[node_id >> 3] |= 1 << (node_id & 7)
    return int.from_bytes(bits, "little")


#: the list a PeerSet follows until it is given one: nothing is ever announced on it
_NOTHING = Announced()


class PeerSet(MutableSet[int]):
    __slots__ = ("_bits", "_len", "_announced", "_taken", "__weakref__")

    #: ids taken out of any PeerSet so far (KnownToAll forgets everything when this moves)
    removals = 0

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._bits = bytearray()
        self._len = 0
        self._announced = _NOTHING
        self._taken = 0
        self._add_many(ids)

    @classmethod
    def _from_iterable(cls, it: Iterable[int]) -> "PeerSet":
        return cls(it)

    @classmethod
    def from_mask(cls, mask: int) -> "PeerSet":
        """The ids whose bits `mask` has (id i is bit i; see `id_mask`)."""
        out = cls()
        out._merge(mask)
        return out

    def follow(self, announced: Announced) -> None:
        """From now on also hold whatever is announced on `announced` (the set is up to date now)."""
        self.catch_up()
        self._announced = announced
        self._taken = announced.end
        announced.follow(self)

    def catch_up(self) -> None:
        announced = self._announced
        if self._taken != announced.end:
            if announced.end - self._taken > 64:
                self._merge(announced.mask_since(self._taken))
            else:
                self._add_many(announced.since(self._taken))
            self._taken = announced.end

    def _merge(self, mask: int) -> None:
        """Add the ids whose bits `mask` has, in a few whole-bitmap steps."""
        bits = self._bits
        merged = int.from_bytes(bits, "little") | mask
        size = max(len(bits), (merged.bit_length() + 7) >> 3)
        self._bits = bytearray(merged.to_bytes(size, "little"))
        self._len = merged.bit_count()

    def __contains__(self, node_id: object) -> bool:
        if self._taken != self._announced.end:
            self.catch_up()
        if not isinstance(node_id, int) or node_id < 0:
            return False
        byte = node_id >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (node_id & 7)))

    def add(self, node_id: int) -> None:
        self.insert(node_id)

    def insert(self, node_id: int) -> bool:
        """`add`, and whether the id was new (one call where a fan-out to thousands of sessions
        would make two)."""
        if node_id < 0:
            raise ValueError("node ids are not negative")
        self.catch_up()
        byte = node_id >> 3
        bits = self._bits
        if byte >= len(bits):
            bits.extend(bytes(byte + 1 - len(bits) + len(bits) // 4))
        mask = 1 << (node_id & 7)
        old = bits[byte]
        if old & mask:
            return False
        bits[byte] = old | mask
        self._len += 1
        return True

    def add_all(self, ids: Iterable[int]) -> None:
        """`add` for many ids at once (a policy change can announce thousands to one session)."""
        self.catch_up()
        self._add_many(ids)

    def _add_many(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        if min(ids) < 0:
            raise ValueError("node ids are not negative")
        bits = self._bits
        need = (max(ids) >> 3) + 1
        if need > len(bits):
            bits.extend(bytes(need - len(bits) + len(bits) // 4))
        new = 0
        for node_id in ids:
            byte = node_id >> 3
            mask = 1 << (node_id & 7)
            old = bits[byte]
            if not old & mask:
                bits[byte] = old | mask
                new += 1
        self._len += new

    def discard(self, node_id: int) -> None:
        if node_id in self:
            self._bits[node_id >> 3] &= ~(1 << (node_id & 7)) & 0xFF
            self._len -= 1
            PeerSet.removals += 1

    def mask(self) -> int:
        """The set as an integer, id i as bit i (see `id_mask`)."""
        self.catch_up()
        return int.from_bytes(self._bits, "little")

    def __iter__(self) -> Iterator[int]:
        self.catch_up()
        for byte_index, byte in enumerate(self._bits):
            if byte:
                base = byte_index << 3
                for bit in range(8):
                    if byte & (1 << bit):
                        yield base + bit

    def __len__(self) -> int:
        self.catch_up()
        return self._len

    def __repr__(self) -> str:
        return f"PeerSet({sorted(self)!r})"


class KnownToAll:
    """Node ids that every open session, other than the node's own, holds in its PeerSet: the
    answers `every_other_knows` found true, kept so that a node announced to a full mesh is not
    looked for in thousands of sessions again at each of its online or endpoint changes.

    A kept answer can only be falsified by a session opening without the id (its first map did
    not list it), or by an id leaving a PeerSet. The first is checked as each first map is
    recorded (`session_opened`: one whole-bitmap AND); on the second, which is rare (a node
    removed, a policy narrowing what a viewer sees), everything kept is forgotten. Sessions
    closing cannot falsify an answer."""

    __slots__ = ("_mask", "_removals")

    def __init__(self) -> None:
        self._mask = 0
        self._removals = PeerSet.removals

    def _current(self) -> int:
        if self._removals != PeerSet.removals:
            self._mask = 0
            self._removals = PeerSet.removals
        return self._mask

    def __contains__(self, node_id: int) -> bool:
        return bool(self._current() >> node_id & 1)

    def learn(self, node_id: int) -> None:
        """Every session but the node's own holds `node_id` now."""
        self._mask = self._current() | (1 << node_id)

    def forget(self, node_id: int) -> None:
        mask = self._current()
        if mask >> node_id & 1:
            self._mask = mask & ~(1 << node_id)

    def session_opened(self, node_id: int, sent: PeerSet) -> None:
        """A session of `node_id` told its client of `sent`: what it lacks is no longer known to
        all (its own node's id aside)."""
        mask = self._current()
        if mask:
            self._mask = mask & (sent.mask() | (1 << node_id))
