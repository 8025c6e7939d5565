"""Tailnet address allocation: pure functions over the set of addresses already taken.

Addresses that Tailscale clients treat specially are never handed out: the network and last
address of the prefix, 100.100.100.100/24 (quad-100, the client's own resolver and its /24),
100.115.92.0/23 (reserved by ChromeOS), and fd7a:115c:a1e0::53 (quad-100's IPv6 twin).
"""

from __future__ import annotations

import functools
import ipaddress
import random as _random
from collections.abc import Callable, Collection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_RESERVED_NETS = (
    ipaddress.ip_network("100.100.100.0/24"),
    ipaddress.ip_network("100.115.92.0/23"),
)
_RESERVED_ADDRS = frozenset({ipaddress.ip_address("fd7a:115c:a1e0::53")})


def _as_int(text: str, version: int) -> int | None:
    """An address string as an int, if it is of `version` (allocation sees the same addresses
    over and over: `_key` caches the parse)."""
    got, value = _key(text)
    return value if got == version else None


class PrefixExhausted(Exception):
    def __init__(self, prefix: str) -> None:
        super().__init__(f"no free address left in {prefix}")


def is_reserved(addr: IPAddress, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if addr == network.network_address or addr == network.broadcast_address:
        return True
    if addr in _RESERVED_ADDRS:
        return True
    return any(addr.version == n.version and addr in n for n in _RESERVED_NETS)


class HeldAddresses:
    """Addresses in use, counted (one address may be held twice for a moment: by a node just
    created here and by the same node once its change is applied), with a floor per prefix below
    which every address is held or reserved. Sequential allocation starts at the floor, so a
    join into a large tailnet costs the same as into a small one instead of a walk over every
    held address; a released address lowers the floors so it comes back first."""

    def __init__(self) -> None:
        self._count: dict[tuple[int, int], int] = {}
        self._floor: dict[str, tuple[int, int]] = {}  # prefix -> (IP version, lowest maybe-free int)

    def add(self, text: str) -> None:
        key = _key(text)
        self._count[key] = self._count.get(key, 0) + 1

    def remove(self, text: str) -> None:
        key = _key(text)
        left = self._count.get(key, 0) - 1
        if left > 0:
            self._count[key] = left
            return
        self._count.pop(key, None)
        version, value = key
        for prefix, (v, floor) in list(self._floor.items()):
            if v == version and value < floor:
                self._floor[prefix] = (v, value)

    def holds(self, version: int, value: int) -> bool:
        return (version, value) in self._count

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and _key(text) in self._count

    def __iter__(self):
        return (str(ipaddress.ip_address(v)) for _, v in self._count)

    def __len__(self) -> int:
        return len(self._count)

    def floor(self, prefix: str, start: int) -> int:
        ent = self._floor.get(prefix)
        return start if ent is None else max(start, ent[1])

    def set_floor(self, prefix: str, version: int, value: int) -> None:
        self._floor[prefix] = (version, value)


@functools.lru_cache(maxsize=1 << 17)
def _key(text: str) -> tuple[int, int]:
    """(IP version, int) of an address string, cached: every node's addresses are held when it
    is created and again when its change is applied, and allocation reads them over and over."""
    addr = ipaddress.ip_address(text)
    return addr.version, int(addr)


@functools.lru_cache(maxsize=64)
def _network(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(prefix)


class Holdings:
    """The addresses and names that nodes hold, kept holder by holder (a node id, or a key of
    the caller's for a node created but not yet applied), for allocation without a rebuild."""

    def __init__(self) -> None:
        self.addresses = HeldAddresses()
        self.names: dict[str, int] = {}  # name -> holders; `in` is all unique_label asks
        self._by: dict[object, tuple[str | None, str | None, str]] = {}

    def hold(self, holder: object, ipv4: str | None, ipv6: str | None, name: str) -> None:
        entry = (ipv4, ipv6, name)
        if self._by.get(holder) == entry:
            return
        self.release(holder)
        self._by[holder] = entry
        for addr in (ipv4, ipv6):
            if addr:
                self.addresses.add(addr)
        self.names[name] = self.names.get(name, 0) + 1

    def release(self, holder: object) -> None:
        entry = self._by.pop(holder, None)
        if entry is None:
            return
        ipv4, ipv6, name = entry
        for addr in (ipv4, ipv6):
            if addr:
                self.addresses.remove(addr)
        left = self.names.get(name, 0) - 1
        if left > 0:
            self.names[name] = left
        else:
            self.names.pop(name, None)

    def holders(self) -> int:
        return len(self._by)


def _used(taken: Collection[str], version: int) -> Callable[[int], bool]:
    """Whether an int address of `version` is in `taken`: a HeldAddresses answers directly, any
    other collection of strings is parsed once into a set."""
    if isinstance(taken, HeldAddresses):
        return lambda value: taken.holds(version, value)
    return {v for v in (_as_int(a, version) for a in taken) if v is not None}.__contains__


def allocate(
    prefix: str,
    taken: Collection[str],
    *,
    strategy: str = "sequential",
    rng: _random.Random | None = None,
    max_random_tries: int = 64,
) -> str:
    """The next free address of `prefix` as a string, given the `taken` addresses.

    Sequential picks the lowest free address (deleted nodes' addresses come back). Random tries a
    bounded number of random picks, then falls back to sequential so a nearly full prefix still
    allocates.
    """
    network = _network(prefix)
    version = network.version
    start = int(network.network_address) + 1
    end = int(network.broadcast_address)
    held = taken if isinstance(taken, HeldAddresses) else None
    used = _used(taken, version)
    value = start if held is None else held.floor(prefix, start)
    if strategy == "random":
        rng = rng or _random.SystemRandom()
        for _ in range(max_random_tries):
            pick = rng.randint(start, end - 1)
            if not used(pick) and not is_reserved(ipaddress.ip_address(pick), network):
                return str(ipaddress.ip_address(pick))
    while value < end:
        if used(value) or is_reserved(ipaddress.ip_address(value), network):
            value += 1
            continue
        if held is not None:
            held.set_floor(prefix, version, value)  # the walk saw everything below held or reserved
        return str(ipaddress.ip_address(value))
    raise PrefixExhausted(prefix)


def allocate_several(
    prefix: str,
    taken: Collection[str],
    count: int,
    *,
    strategy: str = "sequential",
    rng: _random.Random | None = None,
) -> list[str]:
    """Up to `count` distinct free addresses of `prefix`, the first being the one `allocate`
    gives. The others are spares for a store that finds the first held by a node this process
    has not heard of yet: replicas registering at once all pick the same lowest free address.
    PrefixExhausted only if there is not even one."""
    first = allocate(prefix, taken, strategy=strategy, rng=rng)
    network = _network(prefix)
    version = network.version
    end = int(network.broadcast_address)
    used = _used(taken, version)
    picked = [int(ipaddress.ip_address(first))]

    def free(value: int) -> bool:
        return value not in picked and not used(value) and not is_reserved(ipaddress.ip_address(value), network)

    if strategy == "random":
        rng = rng or _random.SystemRandom()
        start = int(network.network_address) + 1
        for _ in range(4 * count):
            if len(picked) >= count:
                break
            pick = rng.randint(start, end - 1)
            if free(pick):
                picked.append(pick)
    value = picked[0] + 1
    while len(picked) < count and value < end and value - picked[0] <= 4 * count:
        if free(value):
            picked.append(value)
        value += 1
    return [str(ipaddress.ip_address(v)) for v in picked]


def address_pairs(
    prefix_v4: str | None,
    prefix_v6: str | None,
    taken: Collection[str],
    count: int,
    *,
    strategy: str = "sequential",
) -> list[tuple[str | None, str | None]]:
    """Up to `count` (ipv4, ipv6) pairs for a new node, best first (None for a family without a
    prefix); at least one. Every pair has an address of each configured family."""
    v4 = allocate_several(prefix_v4, taken, count, strategy=strategy) if prefix_v4 else []
    v6 = allocate_several(prefix_v6, taken, count, strategy=strategy) if prefix_v6 else []
    n = min(len(v4), len(v6)) if v4 and v6 else max(len(v4), len(v6), 1)
    return [(v4[i] if v4 else None, v6[i] if v6 else None) for i in range(n)]
