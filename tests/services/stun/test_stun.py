"""STUN: binding request parsing, response vectors, and the UDP service on loopback."""

from __future__ import annotations

import socket
import struct
import zlib

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trioscale.services.stun.options import StunOptions
from trioscale.shared.net.addr import split_host_port
from trioscale.shared.proto import stun

TXID = bytes.fromhex("0102030405060708090a0b0c")


def tailscale_request(txid: bytes = TXID) -> bytes:
    """The 40 bytes a Tailscale client sends, built by hand from the spec."""
    head = struct.pack(">HHI", 0x0001, 20, 0x2112A442) + txid + struct.pack(">HH", 0x8022, 8) + b"tailnode"
    crc = (zlib.crc32(head) & 0xFFFFFFFF) ^ 0x5354554E
    return head + struct.pack(">HHI", 0x8028, 4, crc)


def test_tailscale_request_format():
    req = tailscale_request()
    assert len(req) == 40
    assert stun.binding_request(TXID) == req
    assert stun.parse_binding_request(req) == stun.BindingRequest(TXID)


def test_ipv4_response_vector():
    resp = stun.binding_response(TXID, "192.0.2.1", 32853)
    assert resp == bytes.fromhex(
        "0101000c2112a442" + TXID.hex() + "00200008" + "0001a147e112a643"
    )  # port 0x8055 ^ 0x2112 = 0xa147; c0.00.02.01 ^ 21.12.a4.42 = e1.12.a6.43
    assert len(resp) == 32
    assert resp[20:24] == bytes.fromhex("00200008")
    assert resp[24:26] == b"\x00\x01"
    assert int.from_bytes(resp[26:28], "big") == 32853 ^ 0x2112
    assert bytes(a ^ b for a, b in zip(resp[28:32], bytes.fromhex("2112a442"))) == bytes([192, 0, 2, 1])


def test_ipv6_response_vector():
    resp = stun.binding_response(TXID, "2001:db8::1", 41641)
    assert len(resp) == 44
    assert resp[:4] == bytes.fromhex("01010018")
    assert resp[20:26] == bytes.fromhex("002000140002")
    mask = bytes.fromhex("2112a442") + TXID
    import ipaddress

    assert bytes(a ^ b for a, b in zip(resp[28:44], mask)) == ipaddress.IPv6Address("2001:db8::1").packed
    assert stun.parse_binding_response(resp) == stun.BindingResponse(TXID, "2001:db8::1", 41641)


def test_ipv4_mapped_source_reported_as_ipv4():
    resp = stun.binding_response(TXID, "::ffff:192.0.2.1", 32853)
    assert resp == stun.binding_response(TXID, "192.0.2.1", 32853)
    assert stun.parse_binding_response(resp) == stun.BindingResponse(TXID, "192.0.2.1", 32853)


def _fixed(data: bytes) -> bytes:
    """Recompute the fingerprint of a modified request."""
    return data[:-4] + stun.fingerprint(data[:-8]).to_bytes(4, "big")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 19,
        tailscale_request()[:-1],  # truncated
        tailscale_request()[:-4] + b"\x00\x00\x00\x00",  # bad fingerprint
        _fixed(b"\x01\x01" + tailscale_request()[2:]),  # a response, not a request
        _fixed(b"\x00\x11" + tailscale_request()[2:]),  # other method
        _fixed(b"\xc0\x01" + tailscale_request()[2:]),  # top bits set
        _fixed(tailscale_request()[:4] + b"\x21\x12\xa4\x43" + tailscale_request()[8:]),  # cookie
        _fixed(tailscale_request().replace(b"tailnode", b"tailnodf")),  # other software
        tailscale_request() + b"\x00\x00\x00\x00",  # FINGERPRINT not last
        _fixed(tailscale_request()[:20] + struct.pack(">HH", 0x8022, 200) + tailscale_request()[24:]),  # bad TLV
    ],
)
def test_not_a_tailscale_request_is_ignored(data):
    assert stun.parse_binding_request(data) is None


def test_generic_stun_request_without_software_ignored():
    head = struct.pack(">HHI", 1, 8, 0x2112A442) + TXID
    req = head + struct.pack(">HHI", 0x8028, 4, stun.fingerprint(head))
    assert stun.parse_binding_request(req) is None


@given(st.binary(max_size=200))
def test_garbage_never_raises(data):
    assert stun.parse_binding_request(data) is None or data[:2] == b"\x00\x01"
    stun.parse_binding_response(data)


@given(st.binary(min_size=12, max_size=12), st.ip_addresses().map(str), st.integers(0, 65535))
def test_response_round_trip(txid, ip, port):
    assert stun.parse_binding_request(stun.binding_request(txid)) == stun.BindingRequest(txid)
    resp = stun.parse_binding_response(stun.binding_response(txid, ip, port))
    import ipaddress

    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    assert resp == stun.BindingResponse(txid, str(addr), port)


# --- the service ------------------------------------------------------------------------------------


def _options(addr: str) -> StunOptions:
    host, port = split_host_port(addr)
    return StunOptions(listen_host=host, listen_port=port)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "listen, client_host",
    [
        ("127.0.0.1:0", "127.0.0.1"),
        pytest.param("[::1]:0", "::1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")),
        pytest.param("[::]:0", "127.0.0.1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6")),
    ],
)
async def test_service_answers_on_loopback(nursery, listen, client_host):
    from trioscale.services.stun.service import serve

    svc = await nursery.start(serve, _options(listen))
    assert svc.addresses == {"stun": svc.address} and svc.port
    family = socket.AF_INET6 if ":" in client_host else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.bind((client_host, 0))
        await sock.connect((client_host, svc.port))
        await sock.send(b"garbage")
        await sock.send(tailscale_request(b"A" * 12))
        with trio.fail_after(2):
            data = await sock.recv(1500)
        got = stun.parse_binding_response(data)
        assert got == stun.BindingResponse(b"A" * 12, client_host, sock.getsockname()[1])
        assert len(data) == (32 if family == socket.AF_INET else 44)
    await trio.testing.wait_all_tasks_blocked()  # the responder counts after its send returns
    assert svc.stats.requests == 1 and svc.stats.ignored == 1 and svc.stats.responses == 1
