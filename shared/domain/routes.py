"""Subnet routes: approval rules and HA primary election (pure functions).

A route (prefix) may be advertised and approved on several nodes; exactly one of them is its
*primary*, the router peers send that prefix's traffic to. The election is sticky: a primary keeps
its role while it is online, so a router that comes back after a failover does not take the role
back (no flapping). When the primary goes offline the online router with the lowest id takes over.
When no router of a prefix is online the previous primary stays (there is nobody better).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

EXIT_V4 = "0.0.0.0/0"
EXIT_V6 = "::/0"
EXIT_ROUTES = (EXIT_V4, EXIT_V6)


class RouteError(ValueError):
    """A route that cannot be approved (not a prefix)."""


def normalize_routes(routes: Iterable[str]) -> tuple[str, ...]:
    """Canonical prefixes, sorted, without duplicates; either exit route brings the other (an exit
    node's 0.0.0.0/0 and ::/0 are approved together). RouteError names a bad entry."""
    out: set[str] = set()
    for text in routes:
        text = str(text).strip()
        if not text:
            continue
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise RouteError(f"invalid route {text!r}: expected a prefix like 10.0.0.0/24") from None
        if net.prefixlen == 0:
            out.update(EXIT_ROUTES)
        else:
            out.add(str(net))
    return tuple(sorted(out, key=_sort_key))


def _sort_key(text: str) -> tuple:
    net = ipaddress.ip_network(text)
    return (net.version, int(net.network_address), net.prefixlen)


def advertised_routes(hostinfo: Mapping | None) -> tuple[str, ...]:
    """Hostinfo.RoutableIPs as canonical prefixes (bad entries are skipped)."""
    out = []
    for text in (hostinfo or {}).get("RoutableIPs") or ():
        try:
            out.append(str(ipaddress.ip_network(str(text), strict=False)))
        except ValueError:
            continue
    return tuple(sorted(set(out), key=_sort_key))


def elect_primaries(
    owners: Mapping[object, Iterable[int]],
    online: set[int] | frozenset[int],
    previous: Mapping[object, int],
) -> dict[object, int]:
    """The primary router of every route in `owners` (route -> routers serving it).

    Keeps the previous primary while it still serves the route and is online; otherwise the
    lowest-id online router; if none is online, the previous primary if it still serves the route,
    else the lowest id."""
    out: dict[object, int] = {}
    for route, nodes in owners.items():
        routers = sorted(set(nodes))
        if not routers:
            continue
        prev = previous.get(route)
        if prev in routers and prev in online:
            out[route] = prev
            continue
        live = [n for n in routers if n in online]
        if live:
            out[route] = live[0]
        elif prev in routers:
            out[route] = prev  # type: ignore[assignment]
        else:
            out[route] = routers[0]
    return out
