"""Per-source token buckets with a bounded table, pure (``now`` is an argument).

Each source IP (IPv6 sources by their /64, since one host usually owns a whole /64) has a bucket
of `burst` tokens refilled at `rate` per second; a query takes one token. The table holds at most
`max_sources` buckets: when it is full, buckets that have refilled completely are dropped first
(they hold no information), then the oldest tenth. A source pushed out simply starts again with a full
bucket, so under a flood of spoofed sources the limiter fails open for real clients rather than
locking them out.
"""

from __future__ import annotations

import ipaddress
import itertools

__all__ = ["RateLimiter", "source_key"]


def source_key(ip: str) -> str:
    """The bucket key of a source address: the IPv4 address, or the IPv6 /64."""
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))


class RateLimiter:
    __slots__ = ("rate", "burst", "max_sources", "_buckets")

    def __init__(self, rate: float = 100.0, burst: float = 200.0, max_sources: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1, max_sources >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]

    def allow(self, source: str, now: float) -> bool:
        """Take one token for `source` (an IP text); False when its bucket is empty."""
        key = source_key(source)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._evict(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens, last = bucket
        elapsed = now - last
        if elapsed > 0:  # a clock that steps back refills nothing
            tokens = min(self.burst, tokens + elapsed * self.rate)
            bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _evict(self, now: float) -> None:
        full_after = self.burst / self.rate
        idle = [k for k, (_, last) in self._buckets.items() if now - last >= full_after]
        for k in idle:
            del self._buckets[k]
        # free a tenth at once, so a flood of new sources costs O(1) per query on average
        target = self.max_sources - max(1, self.max_sources // 10)
        excess = len(self._buckets) - target
        if excess > 0:
            for k in list(itertools.islice(self._buckets, excess)):
                del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)
