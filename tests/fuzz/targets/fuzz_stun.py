"""STUN (shared/proto/stun.py): the server's request parser and the client's response parser.

Both parsers swallow every exception by design (a hostile datagram must never reach the caller as
an error), which would also hide their bugs; so the TLV walker they share is called bare as well
and must not raise either. Round trips: a request we build parses back to its transaction id; a
response for any address/port parses back to that address/port; the service's answer to anything
it accepts is a well-formed response.
"""

from __future__ import annotations

import ipaddress

from trioscale.shared.proto import stun

INSTRUMENT = ("trioscale.shared.proto",)
MAX_LEN = 1500  # one datagram on a usual MTU; the service reads at most this much


def _source(data: bytes) -> tuple[str, int]:
    """A client address the service might see: v4, v6 or v4-mapped v6, from the input's tail."""
    raw = (data[-18:] if len(data) >= 18 else data.rjust(18, b"\x00"))
    port = int.from_bytes(raw[:2], "big")
    kind = raw[2] % 3
    if kind == 0:
        return str(ipaddress.IPv4Address(raw[3:7])), port
    if kind == 1:
        return str(ipaddress.IPv6Address(raw[2:18])), port
    return "::ffff:" + str(ipaddress.IPv4Address(raw[3:7])), port


def test_one_input(data: bytes) -> None:
    stun._attributes(data[stun.HEADER_LEN :])  # must not raise  # noqa: SLF001
    req = stun.parse_binding_request(data)
    ip, port = _source(data)
    if req is not None:
        assert len(req.txid) == stun.TXID_LEN
        resp = stun.binding_response(req.txid, ip, port)
        got = stun.parse_binding_response(resp)
        want = ipaddress.ip_address(ip)
        if want.version == 6 and want.ipv4_mapped is not None:
            want = want.ipv4_mapped
        assert got == stun.BindingResponse(req.txid, str(want), port), (got, ip, port)
    # the client side too (our tools read replies from servers we do not control)
    got = stun.parse_binding_response(data)
    if got is not None:
        assert 0 <= got.port <= 0xFFFF and ipaddress.ip_address(got.ip)
    txid = (data[:12] + bytes(12))[:12]
    assert stun.parse_binding_request(stun.binding_request(txid)) == stun.BindingRequest(txid)


def seeds() -> list[bytes]:
    txid = bytes(range(12))
    return [
        stun.binding_request(txid),
        stun.binding_response(txid, "192.0.2.1", 41641),
        stun.binding_response(txid, "2001:db8::1", 3478),
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + txid,
    ]
