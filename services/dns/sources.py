"""Which client addresses may have a query forwarded upstream, pure.

A forwarder that answers anyone is an open resolver: a spoofed source turns a 40-byte query into a
4 KB upstream answer sent to a victim. So forwarding is only for the tailnet's own prefixes and the
networks the operator lists; everyone else gets REFUSED (a reply no larger than the query).

Membership is integer arithmetic on (address >> host bits), cheap enough for every forwarded query.
IPv4-mapped IPv6 sources (a dual-stack socket) are judged as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["SourceNetworks"]


class SourceNetworks:
    __slots__ = ("networks", "_v4", "_v6")

    def __init__(self, networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        """`networks`: prefixes or single addresses ("100.64.0.0/10", "127.0.0.1", "::1/128").
        ValueError for anything else; host bits are allowed ("10.1.2.3/8" means 10.0.0.0/8)."""
        nets = []
        for entry in networks:
            net = entry if not isinstance(entry, str) else ipaddress.ip_network(entry.strip(), strict=False)
            nets.append(net)
        self.networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(dict.fromkeys(nets))
        # per family: {prefix length: set of network numbers shifted down by the host bits}
        self._v4: dict[int, set[int]] = {}
        self._v6: dict[int, set[int]] = {}
        for net in self.networks:
            table = self._v4 if net.version == 4 else self._v6
            host_bits = net.max_prefixlen - net.prefixlen
            table.setdefault(host_bits, set()).add(int(net.network_address) >> host_bits)

    def __contains__(self, source: object) -> bool:
        """`source`: an address text (a scope "%eth0" is ignored) or an (address, port, ...) tuple."""
        if isinstance(source, tuple):
            source = source[0] if source else ""
        if not isinstance(source, str):
            return False
        try:
            addr = ipaddress.ip_address(source.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:  # type: ignore[union-attr]
            addr = addr.ipv4_mapped  # type: ignore[union-attr]
        table = self._v4 if addr.version == 4 else self._v6
        value = int(addr)
        for host_bits, numbers in table.items():
            if value >> host_bits in numbers:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"SourceNetworks({', '.join(map(str, self.networks))})"
