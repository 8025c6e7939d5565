"""``/machine/set-dns``: a node publishes the TXT record of its own ACME DNS-01 challenge.

`tailscale cert` (and tsnet's certificate code, which Caddy's ``get_certificate tailscale`` uses)
asks the ACME server for a certificate for one of its DNSConfig.CertDomains, then sends
``SetDNSRequest{Version, NodeKey, Name: "_acme-challenge.<domain>", Type: "TXT", Value: <digest>}``
over Noise and expects 200 with a JSON ``SetDNSResponse`` (``{}``) before it tells the ACME server
to validate. The ACME server then asks our DNS service for that TXT record.

Rules (each refusal is a 4xx with a one-line reason, and nothing is stored):

* the NodeKey must belong to the machine that proved its key in the Noise handshake (the handler
  checks that before calling :func:`apply`), and the node's key must not be expired;
* Type must be ``TXT``;
* Name must be ``_acme-challenge.<the node's own name>.<base_domain>`` (case-insensitive, trailing
  dot optional), so no node can touch another node's records or any other name;
* Value must be a short printable string (ACME digests are 43 characters of base64url).

Values are kept per name, newest last, at most :data:`MAX_VALUES_PER_NAME` (a wildcard order asks
for two values under one name at once), and expire after :data:`TXT_TTL` seconds. The records are
written to the store, whose change log carries them to every DNS server, in this process or
another: that is the only way they reach DNS.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from trioscale.shared.domain.dnsconfig import cert_domain
from trioscale.shared.domain.extrarecords import normalize_name
from trioscale.shared.model import Node

log = logging.getLogger("trioscale.coord.setdns")

ACME_PREFIX = "_acme-challenge."
#: seconds a challenge value is served (ACME servers validate within seconds of the request)
TXT_TTL = 600.0
MAX_VALUES_PER_NAME = 4
MAX_VALUE_LENGTH = 255


class Refused(Exception):
    """A request we will not carry out; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def allowed_name(node: Node, base_domain: str) -> str | None:
    """The only TXT name `node` may set, normalised (lower case, no trailing dot)."""
    domain = cert_domain(node.given_name, base_domain)
    return None if domain is None else ACME_PREFIX + domain


def check(body: dict[str, Any], node: Node, base_domain: str, now: datetime) -> tuple[str, str]:
    """Validate a SetDNSRequest from `node` (already tied to the Noise machine key).

    Returns (normalised name, value); raises :class:`Refused`."""
    if node.is_expired(now):
        raise Refused(403, "node key expired: re-authenticate before requesting certificates")
    rtype = body.get("Type")
    if not isinstance(rtype, str) or rtype.upper() != "TXT":
        raise Refused(400, f"unsupported record type {rtype!r}: only TXT records can be set")
    name = body.get("Name")
    if not isinstance(name, str) or not name.strip():
        raise Refused(400, "request has no Name")
    value = body.get("Value")
    if not isinstance(value, str) or not value:
        raise Refused(400, "request has no Value")
    if len(value.encode()) > MAX_VALUE_LENGTH or not value.isprintable() or not value.isascii():
        raise Refused(400, f"Value must be printable ASCII of at most {MAX_VALUE_LENGTH} bytes")
    allowed = allowed_name(node, base_domain)
    wanted = normalize_name(name)
    if allowed is None or wanted != allowed:
        raise Refused(
            403,
            f"node {node.given_name!r} may only set the TXT record {allowed or '(none: node has no name)'}, "
            f"not {name.strip()!r}",
        )
    return wanted, value


def publish(existing: tuple[str, ...], value: str) -> tuple[str, ...]:
    """The live values of a name once `value` is added to `existing`: newest last, repeated values
    moved to the end, at most :data:`MAX_VALUES_PER_NAME`."""
    values = [v for v in existing if v != value]
    values.append(value)
    return tuple(values[-MAX_VALUES_PER_NAME:])


async def apply(coord: Any, node: Node, body: dict[str, Any]) -> None:
    """Check and carry out a SetDNSRequest from `node`; :class:`Refused` on any problem."""
    now = coord.now()
    name, value = check(body, node, coord.tailnet.settings.base_domain, now)
    store = coord.store
    at = datetime.fromtimestamp(time.time(), tz=timezone.utc)
    await store.purge_dns_txt(at)
    got = await store.get_dns_txt(name, at)
    values = publish(() if got is None else got[0], value)
    await store.set_dns_txt(name, values, at + timedelta(seconds=TXT_TTL))
    log.info("node %s (%s) set TXT %s (%d value(s))", node.id, node.given_name, name, len(values))
