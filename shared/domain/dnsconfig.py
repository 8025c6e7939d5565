"""tailcfg.DNSConfig pieces that are pure functions: resolvers, extra records, per-node CertDomains.

The tailnet-wide DNSConfig is built once from the `dns:` configuration (netmap.dns_config, Headscale's
mapping, protocol doc §6.2) and shared by every node. Only `CertDomains` differs per node: each node
may get ACME certificates for its own MagicDNS name and nothing else, so the DNSConfig a node is sent
is the shared dict plus ``CertDomains: ["<given_name>.<base_domain>"]`` (:func:`for_node`). A client
replaces its whole DNSConfig whenever a MapResponse carries one, so every DNSConfig a node is sent
must carry its CertDomains.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("trioscale.coord.dns")

__all__ = ["resolver", "resolvers", "extra_record", "cert_domain", "for_node"]


def resolver(addr: str) -> dict[str, Any] | None:
    """A dnstype.Resolver for a configured nameserver: an IP, ``ip:port``/``[ip]:port``, or a DoH
    ``https://`` (or tailnet ``http://``) URL. None (and a warning) for anything else, as Headscale
    skips what it cannot parse."""
    text = str(addr).strip()
    try:
        ipaddress.ip_address(text)
        return {"Addr": text}
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and 0 < int(port) < 65536:
        try:
            ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
            return {"Addr": text}
        except ValueError:
            pass
    parts = urlsplit(text)
    if parts.scheme in ("https", "http") and parts.hostname:
        return {"Addr": text}
    log.warning("dns: nameserver %r is neither an IP address nor a DoH URL; skipped", text)
    return None


def resolvers(addrs: Iterable[str]) -> list[dict[str, Any]]:
    return [r for r in (resolver(a) for a in addrs) if r is not None]


def extra_record(rec: Mapping[str, Any]) -> dict[str, str] | None:
    """A tailcfg.DNSRecord from ``{name, type, value}``.

    An A record with an IPv4 value or an AAAA record with an IPv6 value is sent with the type left
    out (``Type: ""`` means "A or AAAA, from the value"). The clients' resolver treats "", "A" and
    "AAAA" alike, but tsnet's in-process dialer (net/tsdial dnsmap) only takes records whose Type is
    empty, so a typed record would never be dialable from a tsnet app. Records whose type and value
    disagree are dropped (the configuration check refuses them anyway).
    """
    name = str(rec.get("name") or rec.get("Name") or "").strip()
    value = str(rec.get("value") or rec.get("Value") or "").strip()
    rtype = str(rec.get("type") or rec.get("Type") or "").strip().upper()
    if not name or not value:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if rtype not in ("", "A", "AAAA") or (rtype == "A" and ip.version != 4) or (rtype == "AAAA" and ip.version != 6):
        return None
    return {"Name": name, "Value": str(ip)}


def cert_domain(given_name: str, base_domain: str) -> str | None:
    """The one name a node may get certificates for: ``<given_name>.<base_domain>``, lower case, no
    trailing dot (the form tailcfg.DNSConfig.CertDomains and `tailscale cert` use)."""
    label = given_name.strip().rstrip(".").lower()
    base = base_domain.strip().strip(".").lower()
    if not label or not base:
        return None
    return f"{label}.{base}"


def for_node(shared: dict[str, Any] | None, given_name: str, base_domain: str) -> dict[str, Any] | None:
    """The DNSConfig node `given_name` is sent: the shared one plus its own CertDomains."""
    if shared is None:
        return None
    domain = cert_domain(given_name, base_domain)
    if domain is None:
        return shared
    return {**shared, "CertDomains": [domain]}
