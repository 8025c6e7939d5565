"""Connection caps: how many connections a listener holds at once, in total and per source address.

Pure bookkeeping (no sockets, no clock): the accept loop in `listen.py` asks `try_acquire` before it
starts a handler and calls `release` when the handler ends. A connection over a cap is closed at
once by the caller, never queued, so a flood costs one descriptor for a moment, not one per
connection held.

`plan_budget` fits the caps of the listeners one process runs into its descriptor limit, so that a
flood against one listener can use up its own cap but never the descriptors the others need.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConnectionLimiter",
    "ListenerCaps",
    "LogThrottle",
    "default_caps",
    "install_budget",
    "limiter_stats",
    "plan_budget",
    "raise_descriptor_limit",
    "listener_caps",
    "source_key",
    "standalone_limiter",
    "DEFAULT_CAPS",
    "DEFAULT_RESERVED",
    "LISTENERS",
]

#: every TCP (and unix) listener that takes a cap, by the name used in config (`limits.<name>`)
LISTENERS = ("control", "derp", "admin", "dns", "health")


@dataclass(frozen=True)
class ListenerCaps:
    max_connections: int
    max_connections_per_source: int


#: the default caps per listener: the config's ``limits.*`` defaults (trioscale/config.py reads them
#: from here) and what a listener run without a configuration gets (tests, tools)
DEFAULT_CAPS: dict[str, ListenerCaps] = {
    "control": ListenerCaps(16384, 4096),
    "derp": ListenerCaps(16384, 4096),
    "admin": ListenerCaps(256, 64),
    "dns": ListenerCaps(128, 32),
    "health": ListenerCaps(64, 16),
}
DEFAULT_RESERVED = 1024


def source_key(host: Any) -> str:
    """The address a per-source cap counts against.

    IPv4 as is (an IPv4-mapped IPv6 address too). IPv6 by /64: one host routinely holds a whole
    /64, so counting single addresses would make the cap worthless. Anything else (a unix socket's
    empty peer name) is one shared source.
    """
    if not isinstance(host, str) or not host:
        return ""
    return ip_source(host) or host


@functools.lru_cache(maxsize=4096)
def ip_source(host: str) -> str | None:
    """`host` as a source (`source_key`'s rule), or None if it is not an IP address. Cached: every
    accepted connection asks, mostly for the same few sources, and parsing the address was a
    visible part of a registration's CPU; the cache's bound holds for any traffic."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class LogThrottle:
    """At most one log line per `interval` seconds; counts what it held back in between."""

    __slots__ = ("interval", "_next", "suppressed")

    def __init__(self, interval: float):
        self.interval = interval
        self._next = -math.inf
        self.suppressed = 0

    def ready(self, now: float) -> int | None:
        """None: stay quiet. Otherwise log now; the value is how many events were held back."""
        if now < self._next:
            self.suppressed += 1
            return None
        held, self.suppressed = self.suppressed, 0
        self._next = now + self.interval
        return held


class ConnectionLimiter:
    """Counts a listener's live connections, in total and per source; refuses over either cap."""

    __slots__ = (
        "name",
        "max_connections",
        "max_per_source",
        "active",
        "peak",
        "accepted",
        "rejected_global",
        "rejected_per_source",
        "log_rejects",
        "log_shortage",
        "log_recovery",
        "_by_source",
    )

    def __init__(self, name: str, max_connections: int, max_per_source: int):
        if max_connections < 1 or max_per_source < 1:
            raise ValueError(f"{name}: connection caps must be at least 1")
        self.name = name
        self.max_connections = max_connections
        self.max_per_source = min(max_per_source, max_connections)
        self.active = 0
        self.peak = 0
        self.accepted = 0
        self.rejected_global = 0
        self.rejected_per_source = 0
        # one report per listener (not per socket: a dual-stack listener has two) and interval
        self.log_rejects = LogThrottle(10.0)
        self.log_shortage = LogThrottle(60.0)
        self.log_recovery = LogThrottle(60.0)
        # one entry per source with a live connection, so never more than max_connections entries
        self._by_source: dict[str, int] = {}

    def try_acquire(self, source: str) -> bool:
        if self.active >= self.max_connections:
            self.rejected_global += 1
            return False
        held = self._by_source.get(source, 0)
        if held >= self.max_per_source:
            self.rejected_per_source += 1
            return False
        self._by_source[source] = held + 1
        self.active += 1
        self.accepted += 1
        if self.active > self.peak:
            self.peak = self.active
        return True

    def release(self, source: str) -> None:
        held = self._by_source.get(source, 0)
        if held <= 0:
            # a release without its acquire is a bug in the caller; never let counts go negative
            raise RuntimeError(f"{self.name}: release of {source!r} without a connection")
        if held == 1:
            del self._by_source[source]
        else:
            self._by_source[source] = held - 1
        self.active -= 1

    def held_by(self, source: str) -> int:
        return self._by_source.get(source, 0)

    @property
    def sources(self) -> int:
        return len(self._by_source)

    @property
    def rejected(self) -> int:
        return self.rejected_global + self.rejected_per_source

    def stats(self) -> dict[str, int]:
        return {
            "max_connections": self.max_connections,
            "max_connections_per_source": self.max_per_source,
            "active": self.active,
            "peak": self.peak,
            "sources": self.sources,
            "accepted": self.accepted,
            "rejected_global": self.rejected_global,
            "rejected_per_source": self.rejected_per_source,
        }


# --- the process's descriptor budget ----------------------------------------------------------------


def plan_budget(
    caps: Mapping[str, ListenerCaps], nofile: int, reserved: int
) -> tuple[dict[str, ListenerCaps], str | None]:
    """The caps that fit `nofile` descriptors with `reserved` kept back, and a one-line note when
    they had to be scaled down (None when they fit as configured).

    At most a quarter of the limit is kept back, so a small limit still leaves the listeners
    something. Scaling is proportional, at least 1 connection per listener; a per-source cap keeps
    its share of its listener's cap (and is never above it).
    """
    headroom = max(0, min(reserved, nofile // 4))
    available = max(len(caps), nofile - headroom)
    wanted = sum(c.max_connections for c in caps.values())
    if wanted <= available:
        return dict(caps), None
    # every listener keeps one connection; the rest of the budget is shared in proportion
    n = len(caps)
    factor = (available - n) / (wanted - n)
    out: dict[str, ListenerCaps] = {}
    for name, c in caps.items():
        total = 1 + math.floor((c.max_connections - 1) * factor)
        # a per-source cap keeps its share of the listener, so one address still cannot take it all
        share = min(c.max_connections_per_source, c.max_connections) / c.max_connections
        out[name] = ListenerCaps(total, max(1, min(total, math.floor(total * share))))
    shown = ", ".join(f"{n} {out[n].max_connections}/{out[n].max_connections_per_source}" for n in out)
    note = (
        f"descriptor limit {nofile} is too low for the configured connection caps ({wanted} + {headroom} "
        f"kept for files and outgoing sockets); scaled down to (total/per source): {shown}"
    )
    return out, note


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns (soft, hard) as they now are."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 1 << 20, 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:  # the kernel still caps it (fs.nr_open)
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return soft, hard


def _current_descriptor_limit() -> int:
    try:
        import resource
    except ImportError:
        return 1 << 20
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


# --- the limiters of a process ------------------------------------------------------------------


def listener_caps(name: str, max_connections: int, max_per_source: int) -> ListenerCaps:
    """The caps of listener `name`. The admin unix socket ("admin_unix") shares the admin keys, but
    every local peer there is the same (empty) source, so its per-source cap is its total."""
    if name == "admin_unix":
        max_per_source = max_connections
    return ListenerCaps(max_connections, min(max_per_source, max_connections))


def default_caps(names: Any = LISTENERS) -> dict[str, ListenerCaps]:
    """The caps of `names` for listeners run without a configuration (tests, tools)."""
    out: dict[str, ListenerCaps] = {}
    for name in names:
        c = DEFAULT_CAPS[name.split("_", 1)[0]]
        out[name] = listener_caps(name, c.max_connections, c.max_connections_per_source)
    return out


def install_budget(caps: Mapping[str, ListenerCaps]) -> dict[str, ConnectionLimiter]:
    """This process's limiters, by listener name, from planned caps (by `trioscale serve`, which
    hands each service the limiters of its listeners)."""
    return {n: ConnectionLimiter(n, c.max_connections, c.max_connections_per_source) for n, c in caps.items()}


def standalone_limiter(name: str) -> ConnectionLimiter:
    """A limiter for listener `name` run on its own (a test, a benchmark, a tool): the default caps
    fitted to the current descriptor limit."""
    caps, _ = plan_budget(default_caps([name]), _current_descriptor_limit(), DEFAULT_RESERVED)
    c = caps[name]
    return ConnectionLimiter(name, c.max_connections, c.max_connections_per_source)


def limiter_stats(limiters: Mapping[str, ConnectionLimiter]) -> dict[str, dict[str, int]]:
    """Counters of `limiters` by listener name (for debug endpoints and tests)."""
    return {n: lim.stats() for n, lim in limiters.items()}
