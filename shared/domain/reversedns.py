"""The reverse-DNS zones of the tailnet's prefixes: what MagicDNS tells clients to send to it
(DNSConfig.Routes) and what the DNS server is authoritative for, so the two always agree."""

from __future__ import annotations

import ipaddress
import math


def reverse_zones(prefix: str) -> list[str]:
    """The reverse zones covering `prefix`, cut at octet (IPv4) or nibble (IPv6) boundaries: a
    prefix between two boundaries needs every zone of the next one down (a /49 is eight /52s), or
    part of it would resolve elsewhere."""
    net = ipaddress.ip_network(prefix, strict=False)
    step = 8 if net.version == 4 else 4
    bits = max(step, math.ceil(net.prefixlen / step) * step)
    # reverse_pointer has one label per octet / nibble, then the 2-label suffix
    keep = bits // step
    total = net.max_prefixlen // step
    return [
        ".".join(sub.network_address.reverse_pointer.split(".")[total - keep:])
        for sub in (net.subnets(new_prefix=bits) if bits > net.prefixlen else [net])
    ]
