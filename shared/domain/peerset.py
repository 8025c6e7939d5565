"""A compact set of node ids: what one map session has announced to its client.

Every session keeps one, and a tailnet of N nodes has up to N sessions, so a plain `set` would cost
O(N²) memory (about 2.6 GB at 10,000 nodes). Node ids are small dense integers from the store, so a
bitmap costs N/8 bytes per session instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSet


class PeerSet(MutableSet[int]):
    __slots__ = ("_bits", "_len")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._bits = bytearray()
        self._len = 0
        self.add_all(ids)

    @classmethod
    def _from_iterable(cls, it: Iterable[int]) -> "PeerSet":
        return cls(it)

    def __contains__(self, node_id: object) -> bool:
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

    @staticmethod
    def insert_into_each(sets: Iterable["PeerSet"], node_id: int) -> None:
        """`insert(node_id)` into every one of `sets` (a join announced to every session of a full
        mesh: thousands of sets, one id), with the bit's place worked out once."""
        if node_id < 0:
            raise ValueError("node ids are not negative")
        byte = node_id >> 3
        mask = 1 << (node_id & 7)
        for peers in sets:
            bits = peers._bits
            if byte < len(bits):
                old = bits[byte]
                if not old & mask:
                    bits[byte] = old | mask
                    peers._len += 1
            else:
                peers.insert(node_id)

    def add_all(self, ids: Iterable[int]) -> None:
        """`add` for many ids at once (a policy change can announce thousands to one session)."""
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

    def __iter__(self) -> Iterator[int]:
        for byte_index, byte in enumerate(self._bits):
            if byte:
                base = byte_index << 3
                for bit in range(8):
                    if byte & (1 << bit):
                        yield base + bit

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"PeerSet({sorted(self)!r})"
