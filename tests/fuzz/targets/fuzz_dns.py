"""DNS (services/dns/resolver.py + zone.py): the server's query parsing and answering core.

The fuzz input is one query (UDP or TCP, from a source inside or outside the tailnet, chosen by the
first byte) to a resolver with a small zone (nodes, an extra record, a TXT value) and an upstream;
for a forwarded query the rest of the input after a 0xFF 0x00 separator is the upstream's reply.
`Resolver.handle` turns any internal exception into SERVFAIL and counts it: a nonzero
`internal_errors` is a crash the service would hide, so it fails the run. Checked too: a reply
echoes the id and has QR set; a UDP reply fits the size the client may receive; only sources in
the tailnet are forwarded for (no open resolver); the upstream reply goes back under the client's id.
"""

from __future__ import annotations

import struct

from _fuzzutil import pieces

from trioscale.services.dns.ratelimit import RateLimiter
from trioscale.services.dns.resolver import MAX_UDP_SIZE, Forward, Resolver, TxtLookup
from trioscale.services.dns.sources import SourceNetworks
from trioscale.services.dns.txt import TxtRecords
from trioscale.services.dns.zone import Zone

INSTRUMENT = ("trioscale.services.dns", "dnslib")
MAX_LEN = 4096
NOW = 1_700_000_000.0

_txt = TxtRecords()
_txt.set("_acme-challenge.host-a.fuzz.ts.net", ["token-value"], NOW + 3600, now=NOW)
_zone = Zone("fuzz.ts.net", ("100.64.0.0/10", "fd7a:115c:a1e0::/48"), txt=_txt, ns_addresses=["100.100.100.100"])
_zone.set_node(1, "host-a", "100.64.0.1", "fd7a:115c:a1e0::1")
_zone.set_node(2, "Host-B", "100.64.0.2", None)
_zone.set_extra_records([{"name": "grafana.fuzz.ts.net", "type": "A", "value": "100.64.0.9"},
                         {"name": "db.example.internal", "type": "AAAA", "value": "fd7a:115c:a1e0::9"}])
_FORWARD_FROM = SourceNetworks(["100.64.0.0/10", "fd7a:115c:a1e0::/48"])
# the clock stands still here, so the per-name read budget is made big enough never to run out:
# every ACME challenge query takes the store-read path (TxtLookup, then resume)
_resolver = Resolver(_zone, upstreams=[("192.0.2.53", 53)], forward_from=_FORWARD_FROM, random_id=lambda: 0xBEEF,
                     txt_reads=RateLimiter(rate=1e9, burst=1e9))
_SOURCES = (("100.64.0.1", 5353), ("203.0.113.7", 5353), ("fd7a:115c:a1e0::1", 53), ("::ffff:100.64.0.2", 53))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    transport = "tcp" if data[0] & 1 else "udp"
    source = _SOURCES[(data[0] >> 1) % len(_SOURCES)]
    query, upstream = (pieces(data[1:], 2) + [b""])[:2]
    before = _resolver.stats.internal_errors
    out = _resolver.handle(query, source=source, now=NOW, transport=transport)
    assert _resolver.stats.internal_errors == before, "the resolver raised internally (answered SERVFAIL)"
    if out is None:
        return
    if isinstance(out, TxtLookup):
        assert _zone.is_acme_challenge(out.name), out.name
        out = _resolver.resume(out, now=NOW)  # the adapter's store read changed nothing here
        assert _resolver.stats.internal_errors == before, "resume raised internally (answered SERVFAIL)"
    if isinstance(out, Forward):
        assert source in _FORWARD_FROM, "forwarded for a source outside the tailnet"
        assert out.upstream_id == 0xBEEF and out.query[:2] == b"\xbe\xef"
        # the adapter passes on only a datagram that matches; no match ends in a timeout (None)
        reply = _resolver.forward_reply(out, upstream if out.matches(upstream) else None)
        if transport == "udp":
            assert len(reply) <= max(out.max_size, 12 + len(out.question) + 11), (len(reply), out.max_size)
    else:
        reply = out
        if transport == "udp":
            assert len(reply) <= MAX_UDP_SIZE
    assert len(reply) >= 12
    qid, flags = struct.unpack_from("!HH", reply)
    assert qid == struct.unpack_from("!H", query)[0]
    assert flags & 0x8000


def _q(name: str, qtype: int, *, edns: bool = False, qid: int = 0x1234) -> bytes:
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\x00"
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0) if edns else b""
    return head + wire + struct.pack("!HH", qtype, 1) + opt


def seeds() -> list[bytes]:
    answer = struct.pack("!HHHHHH", 0xBEEF, 0x8180, 1, 1, 0, 0) + _q("example.com", 1)[12:] + (
        b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1]))
    return [
        b"\x00" + _q("host-a.fuzz.ts.net", 1),
        b"\x01" + _q("host-a.fuzz.ts.net", 28, edns=True),
        b"\x00" + _q("1.0.64.100.in-addr.arpa", 12),
        b"\x02" + _q("_acme-challenge.host-a.fuzz.ts.net", 16),
        b"\x00" + _q("fuzz.ts.net", 255, edns=True),
        b"\x00" + _q("example.com", 1) + b"\xff\x00" + answer,
        b"\x02" + _q("example.com", 1),
        b"\x00" + _q("nope.fuzz.ts.net", 6),
    ]
