"""Tailnet address allocation: pure functions over the set of addresses already taken.

Addresses that Tailscale clients treat specially are never handed out: the network and last
address of the prefix, 100.100.100.100/24 (quad-100, the client's own resolver and its /24),
100.115.92.0/23 (reserved by ChromeOS), and fd7a:115c:a1e0::53 (quad-100's IPv6 twin).
"""

from __future__ import annotations

import functools
import ipaddress
import random as _random
from collections.abc import Collection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_RESERVED_NETS = (
    ipaddress.ip_network("100.100.100.0/24"),
    ipaddress.ip_network("100.115.92.0/23"),
)
_RESERVED_ADDRS = frozenset({ipaddress.ip_address("fd7a:115c:a1e0::53")})


@functools.lru_cache(maxsize=1 << 17)
def _as_int(text: str, version: int) -> int | None:
    """An address string as an int, if it is of `version` (cached: allocation sees the same
    addresses over and over)."""
    addr = ipaddress.ip_address(text)
    return int(addr) if addr.version == version else None


class PrefixExhausted(Exception):
    def __init__(self, prefix: str) -> None:
        super().__init__(f"no free address left in {prefix}")


def is_reserved(addr: IPAddress, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if addr == network.network_address or addr == network.broadcast_address:
        return True
    if addr in _RESERVED_ADDRS:
        return True
    return any(addr.version == n.version and addr in n for n in _RESERVED_NETS)


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
    network = ipaddress.ip_network(prefix)
    start = int(network.network_address) + 1
    end = int(network.broadcast_address)
    used = {v for v in (_as_int(a, network.version) for a in taken) if v is not None}
    if strategy == "random":
        rng = rng or _random.SystemRandom()
        for _ in range(max_random_tries):
            value = rng.randint(start, end - 1)
            candidate = ipaddress.ip_address(value)
            if value not in used and not is_reserved(candidate, network):
                return str(candidate)
    # Walk past the used block quickly: sorted used addresses inside the prefix tell where gaps are.
    inside = sorted(v for v in used if start <= v < end)
    value = start
    i = 0
    while value < end:
        while i < len(inside) and inside[i] < value:
            i += 1
        if i < len(inside) and inside[i] == value:
            value += 1
            continue
        candidate = ipaddress.ip_address(value)
        if is_reserved(candidate, network):
            value += 1
            continue
        return str(candidate)
    raise PrefixExhausted(prefix)
