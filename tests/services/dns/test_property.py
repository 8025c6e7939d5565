"""Property tests: the core never raises, whatever arrives."""

from __future__ import annotations

import struct

import dns.message
from hypothesis import given, settings
from hypothesis import strategies as st

from trioscale.services.dns.ratelimit import RateLimiter
from trioscale.services.dns.resolver import Forward, Resolver
from trioscale.services.dns.sources import SourceNetworks
from trioscale.services.dns.zone import Zone


def _resolver(upstreams=()) -> Resolver:
    z = Zone("tailnet.internal")
    z.set_node(1, "alpha", "100.64.0.1", "fd7a:115c:a1e0::1")
    z.set_extra_records([{"name": "x.tailnet.internal", "type": "A", "value": "100.64.0.9"}])
    z.txt.set("_acme-challenge.alpha.tailnet.internal", ["t"], now=0)
    return Resolver(z, upstreams=upstreams, rate_limiter=RateLimiter(1e9, 1e9),
                    forward_from=SourceNetworks(["0.0.0.0/0", "::/0"]))


RES = _resolver()
FWD = _resolver(upstreams=[("192.0.2.53", 53)])


def _check(out, data: bytes, transport: str) -> None:
    assert out is None or isinstance(out, (bytes, Forward))
    if isinstance(out, bytes):
        assert len(out) >= 12
        assert out[:2] == data[:2]  # the id is always echoed
        assert out[2] & 0x80  # QR set
        if transport == "udp":
            assert len(out) <= 4096


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["udp", "tcp"]))
def test_arbitrary_bytes_never_raise(data, transport):
    for res in (RES, FWD):
        _check(res.handle(data, source=("192.0.2.1", 1), now=1.0, transport=transport), data, transport)


names = st.lists(
    st.sampled_from([b"alpha", b"ALPHA", b"tailnet", b"internal", b"x", b"in-addr", b"arpa", b"100", b"64",
                     b"_acme-challenge", b"", b"\x00", b"a.b", b"\xff" * 3]),
    max_size=6,
)


@settings(max_examples=2000, deadline=None)
@given(
    names,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=40),
    st.sampled_from(["udp", "tcp"]),
)
def test_mutated_queries_never_raise(labels, flags, qtype, qclass, tail, transport):
    qname = b"".join(bytes([len(l)]) + l for l in labels if l) + b"\x00"
    data = struct.pack("!HHHHHH", 99, flags & 0x7FFF, 1, 0, 0, 1 if tail else 0) + qname + struct.pack("!HH", qtype, qclass) + tail
    for res in (RES, FWD):
        out = res.handle(data, source=("192.0.2.1", 1), now=1.0, transport=transport)
        _check(out, data, transport)
        if isinstance(out, bytes):
            # every reply we make is well-formed (dnspython: dnslib refuses binary labels)
            dns.message.from_wire(out)
