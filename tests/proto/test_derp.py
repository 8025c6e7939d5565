"""DERP v2 framing and handshake (shared/proto/derp.py): vectors, round trips, limits, garbage."""

from __future__ import annotations

import json
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_box
from nacl.public import Box, PrivateKey, PublicKey

from trioscale.shared.proto import derp as d

SERVER_PRIV = bytes(range(32))
CLIENT_PRIV = bytes(range(32, 64))
SERVER_PUB = bytes.fromhex("8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f")
CLIENT_PUB = bytes.fromhex("358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254")


def frame(t: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BI", t, len(payload)) + payload


def established_pair() -> tuple[d.DerpServerConnection, d.DerpClientConnection]:
    server = d.DerpServerConnection(SERVER_PRIV)
    client = d.DerpClientConnection(CLIENT_PRIV)
    assert [type(e) for e in client.receive_data(server.server_key_frame())] == [d.ServerKey]
    [info] = server.receive_data(client.client_info())
    assert isinstance(info, d.ClientInfo)
    [sinfo] = client.receive_data(server.accept())
    assert isinstance(sinfo, d.ServerInfo)
    return server, client


# --- constants and known answers -----------------------------------------------------------------


def test_constants():
    assert d.MAGIC == bytes.fromhex("44455250f09f9491")
    assert d.DISCO_MAGIC == bytes.fromhex("5453f09f92ac")
    assert d.public_key_of(SERVER_PRIV) == SERVER_PUB
    assert d.public_key_of(CLIENT_PRIV) == CLIENT_PUB


def test_server_key_frame():
    server = d.DerpServerConnection(SERVER_PRIV)
    assert server.server_key_frame() == bytes.fromhex("0100000028") + d.MAGIC + SERVER_PUB


def test_client_info_known_answer_with_fixed_nonce():
    nonce = bytes(range(100, 124))
    client = d.DerpClientConnection(CLIENT_PRIV, server_public_key=SERVER_PUB)
    out = client.client_info(nonce=nonce)
    plaintext = b'{"version":2,"CanAckPings":true}'
    expected_box = crypto_box(plaintext, nonce, SERVER_PUB, CLIENT_PRIV)  # libsodium, independently
    assert out == frame(0x02, CLIENT_PUB + nonce + expected_box)
    assert len(out) - 5 == 104  # the size a tailscaled ClientInfo has
    assert out.hex() == (
        "0200000068358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd1662546465666768696a6b6c6d6e6f"
        "707172737475767778797a7b2416c0d65e88b122be1a261cd2b5a29e9ea11db1c67247c799d26d354f0be0f63f0b67e1a5"
        "d7be3b478a362d13f227a4"
    )
    server = d.DerpServerConnection(SERVER_PRIV)
    [info] = server.receive_data(out)
    assert info == d.ClientInfo(CLIENT_PUB, version=2, can_ack_pings=True)
    assert server.state == server.AWAIT_ACCEPT


def test_server_info_known_answer_with_fixed_nonce():
    server = d.DerpServerConnection(SERVER_PRIV)
    client = d.DerpClientConnection(CLIENT_PRIV, server_public_key=SERVER_PUB)
    server.receive_data(client.client_info())
    out = server.accept(nonce=bytes(24))
    assert out == frame(0x03, bytes(24) + crypto_box(b'{"version":2}', bytes(24), CLIENT_PUB, SERVER_PRIV))
    assert len(out) - 5 == 53  # what derper sends
    [info] = client.receive_data(out)
    assert info == d.ServerInfo(version=2)
    assert client.state == client.ESTABLISHED


def test_server_info_token_bucket_round_trip():
    server = d.DerpServerConnection(SERVER_PRIV)
    client = d.DerpClientConnection(CLIENT_PRIV, server_public_key=SERVER_PUB)
    server.receive_data(client.client_info())
    [info] = client.receive_data(server.accept(d.ServerInfo(2, 1_250_000, 70_000)))
    assert (info.token_bucket_bytes_per_second, info.token_bucket_bytes_burst) == (1_250_000, 70_000)


def _go_client_info(json_bytes: bytes, priv: bytes = CLIENT_PRIV) -> bytes:
    box = Box(PrivateKey(priv), PublicKey(SERVER_PUB))
    return frame(0x02, bytes(PrivateKey(priv).public_key) + bytes(box.encrypt(json_bytes)))


def test_client_info_extra_fields_and_case_insensitive_names():
    server = d.DerpServerConnection(SERVER_PRIV)
    body = json.dumps({"Version": 2, "canackpings": True, "isProber": True, "AppName": "tailcat", "Future": [1]})
    [info] = server.receive_data(_go_client_info(body.encode()))
    assert info.version == 2 and info.can_ack_pings and info.is_prober
    assert info.raw["AppName"] == "tailcat"


def test_client_info_mesh_key():
    server = d.DerpServerConnection(SERVER_PRIV)
    mk = os.urandom(32)
    [info] = server.receive_data(_go_client_info(json.dumps({"meshKey": mk.hex(), "version": 2}).encode()))
    assert info.mesh_key == mk
    # a mesh key of the wrong length rejects the whole ClientInfo, as Go's JSON decoding does
    server = d.DerpServerConnection(SERVER_PRIV)
    with pytest.raises(d.RemoteProtocolError, match="meshKey"):
        server.receive_data(_go_client_info(b'{"meshKey":"abcd","version":2}'))


@pytest.mark.parametrize(
    "data, match",
    [
        (frame(0x04, bytes(40)), "expected ClientInfo"),
        (frame(0x02, bytes(55)), "ClientInfo of 55 bytes"),
        (frame(0x02, CLIENT_PUB + bytes(24) + bytes(40)), "does not open"),
        (frame(0x02, bytes(d.MAX_CLIENT_INFO_LEN + 1)), "exceeds"),
    ],
)
def test_bad_client_info(data, match):
    with pytest.raises(d.RemoteProtocolError, match=match):
        d.DerpServerConnection(SERVER_PRIV).receive_data(data)


def test_client_info_bad_json():
    for body in (b"not json", b"[1,2]", b'{"version":"two"}'):
        with pytest.raises(d.RemoteProtocolError):
            d.DerpServerConnection(SERVER_PRIV).receive_data(_go_client_info(body))


def test_fast_start_bytes_after_client_info_are_frames():
    """Fast start: ClientInfo and more frames arrive in one chunk, before any ServerInfo."""
    server = d.DerpServerConnection(SERVER_PRIV)
    client = d.DerpClientConnection(CLIENT_PRIV, server_public_key=SERVER_PUB)
    dst = os.urandom(32)
    data = client.client_info() + client.send(d.NotePreferred(True)) + client.send(d.SendPacket(dst, b"pkt"))
    events = server.receive_data(data)
    assert [type(e) for e in events] == [d.ClientInfo, d.NotePreferred, d.SendPacket]
    assert events[2] == d.SendPacket(dst, b"pkt")
    # the server still sends ServerKey; a fast-start client ignores it
    events = client.receive_data(server.server_key_frame() + server.accept())
    assert [type(e) for e in events] == [d.ServerKey, d.ServerInfo]


# --- steady-state frames ---------------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32)
packets = st.binary(max_size=2000)
ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str),
)

server_to_client = st.one_of(
    st.builds(d.RecvPacket, keys, packets),
    st.just(d.KeepAlive()),
    st.builds(d.PeerGone, keys, st.integers(0, 255)),
    st.builds(d.PeerPresent, keys),
    st.builds(d.PeerPresent, keys, ips, st.integers(0, 65535), st.one_of(st.none(), st.integers(0, 255))),
    st.builds(d.Ping, st.binary(min_size=8, max_size=8)),
    st.builds(d.Pong, st.binary(min_size=8, max_size=8)),
    st.builds(d.Health, st.text(max_size=100)),
    st.builds(d.Restarting, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
client_to_server = st.one_of(
    st.builds(d.SendPacket, keys, packets),
    st.builds(d.ForwardPacket, keys, keys, packets),
    st.builds(d.NotePreferred, st.booleans()),
    st.just(d.WatchConns()),
    st.builds(d.ClosePeer, keys),
    st.builds(d.Ping, st.binary(min_size=8, max_size=8)),
    st.builds(d.Pong, st.binary(min_size=8, max_size=8)),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


@given(st.lists(server_to_client, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
@settings(max_examples=200, deadline=None)
def test_server_frames_round_trip_any_split(events, cuts):
    server, client = established_pair()
    wire = b"".join(server.send(e) for e in events)
    got = []
    for chunk in _split(wire, cuts):
        got += client.receive_data(chunk)
    assert got == events


@given(st.lists(client_to_server, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
@settings(max_examples=200, deadline=None)
def test_client_frames_round_trip_any_split(events, cuts):
    server, client = established_pair()
    wire = b"".join(client.send(e) for e in events)
    got = []
    for chunk in _split(wire, cuts):
        got += server.receive_data(chunk)
    assert got == events


@given(st.one_of(server_to_client, client_to_server))
def test_encode_decode_frame(event):
    wire = d.encode(event)
    t, n = struct.unpack(">BI", wire[:5])
    assert n == len(wire) - 5
    assert d.decode_frame(t, wire[5:]) == event


def test_peer_present_wire_forms():
    key = os.urandom(32)
    wire = d.encode(d.PeerPresent(key, "192.0.2.1", 41641, d.PeerPresentFlags.IS_REGULAR))
    assert len(wire) == 5 + 51
    assert wire[5 + 32 : 5 + 48] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    assert d.decode_frame(0x09, key) == d.PeerPresent(key)
    assert d.decode_frame(0x09, wire[5:55]) == d.PeerPresent(key, "192.0.2.1", 41641, None)
    assert d.decode_frame(0x09, wire[5:] + b"future") == d.PeerPresent(key, "192.0.2.1", 41641, 1)


def test_client_tolerates_short_and_odd_frames():
    server, client = established_pair()
    key = os.urandom(32)
    data = (
        frame(0x05, bytes(10))  # short RecvPacket: dropped
        + frame(0x08, key)  # PeerGone without reason
        + frame(0x08, bytes(5))  # short PeerGone: dropped
        + frame(0x12, bytes(4))  # short Ping: dropped
        + frame(0x06, b"junk")  # KeepAlive with a payload
        + frame(0x01, d.MAGIC + SERVER_PUB)  # repeated ServerKey
        + frame(0x7F, b"??")  # unknown type
    )
    assert client.receive_data(data) == [
        d.PeerGone(key, 0),
        d.KeepAlive(),
        d.ServerKey(SERVER_PUB),
        d.UnknownFrame(0x7F, 2, b"??"),
    ]


def test_client_frame_limits():
    _, client = established_pair()
    assert client.receive_data(frame(0x7E, bytes(d.MAX_FRAME_LEN))) == [d.UnknownFrame(0x7E, d.MAX_FRAME_LEN, bytes(d.MAX_FRAME_LEN))]
    with pytest.raises(d.RemoteProtocolError, match="exceeds"):
        client.receive_data(struct.pack(">BI", 0x05, d.MAX_FRAME_LEN + 1))


def test_client_server_key_bounds():
    ok = d.DerpClientConnection(CLIENT_PRIV)
    [ev] = ok.receive_data(frame(0x01, d.MAGIC + SERVER_PUB + bytes(1024 - 40)))
    assert ev.key == SERVER_PUB
    for payload in (d.MAGIC + SERVER_PUB + bytes(985), d.MAGIC + bytes(31), b"DERPXXXX" + SERVER_PUB):
        with pytest.raises(d.RemoteProtocolError):
            d.DerpClientConnection(CLIENT_PRIV).receive_data(frame(0x01, payload))
    with pytest.raises(d.RemoteProtocolError, match="expected ServerKey"):
        d.DerpClientConnection(CLIENT_PRIV).receive_data(frame(0x06))


@pytest.mark.parametrize(
    "data",
    [
        frame(0x04, bytes(31)),  # SendPacket shorter than a key
        frame(0x04, bytes(32 + d.MAX_PACKET_SIZE + 1)),  # packet too large
        frame(0x0A, bytes(63)),  # ForwardPacket shorter than two keys
        frame(0x07, b""),  # NotePreferred must be 1 byte
        frame(0x07, b"\x01\x01"),
        frame(0x10, b"x"),  # WatchConns must be empty
        frame(0x11, bytes(31)),  # ClosePeer must be a key
        frame(0x12, bytes(7)),  # Ping 8..1000
        frame(0x12, bytes(1001)),
    ],
)
def test_server_rejects_bad_frames(data):
    server, _ = established_pair()
    with pytest.raises(d.RemoteProtocolError):
        server.receive_data(data)


def test_server_ping_extra_bytes_discarded_and_unknown_skipped():
    server, _ = established_pair()
    big = struct.pack(">BI", 0x7D, 5 << 20)  # 5 MiB unknown frame: skipped without buffering
    events = server.receive_data(frame(0x12, b"12345678" + bytes(100)) + big + bytes(1000))
    assert events == [d.Ping(b"12345678"), d.UnknownFrame(0x7D, 5 << 20)]
    assert server.receive_data(bytes((5 << 20) - 1000)) == []
    assert server.receive_data(frame(0x12, b"abcdefgh")) == [d.Ping(b"abcdefgh")]
    # ClientInfo again and other types are reported, not acted on
    assert server.receive_data(frame(0x06)) == [d.UnknownFrame(0x06, 0, b"")]


def test_local_errors():
    server, client = established_pair()
    with pytest.raises(d.LocalProtocolError):
        server.accept()
    with pytest.raises(d.LocalProtocolError):
        server.send(d.SendPacket(bytes(32), b""))
    with pytest.raises(d.LocalProtocolError):
        client.send(d.RecvPacket(bytes(32), b""))
    with pytest.raises(d.LocalProtocolError):
        d.encode(d.SendPacket(bytes(31), b""))
    with pytest.raises(d.LocalProtocolError):
        d.encode(d.SendPacket(bytes(32), bytes(d.MAX_PACKET_SIZE + 1)))
    with pytest.raises(d.LocalProtocolError):
        d.encode(d.Ping(b"short"))


def test_looks_like_disco():
    assert d.looks_like_disco(d.DISCO_MAGIC + bytes(56))
    assert not d.looks_like_disco(d.DISCO_MAGIC + bytes(55))
    assert not d.looks_like_disco(bytes(100))


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10))
@settings(max_examples=300, deadline=None)
def test_garbage_gives_events_or_remote_protocol_error(data, cuts):
    """Whatever arrives, the only exception is RemoteProtocolError."""
    for conn in (d.DerpServerConnection(SERVER_PRIV), established_pair()[0], d.DerpClientConnection(CLIENT_PRIV),
                 established_pair()[1]):
        try:
            for chunk in _split(data, cuts):
                conn.receive_data(chunk)
        except d.RemoteProtocolError:
            pass


def test_frame_trickled_a_byte_at_a_time_is_held_compactly():
    """A peer sending a frame one byte per read must not make the decoder keep an object per
    byte (issue 10: ~40 bytes of Python object for each byte of a 256 KiB ClientInfo)."""
    payload = os.urandom(20_000)
    frame = d.encode_frame(d.FrameType.CLIENT_INFO, payload)
    dec = d.FrameDecoder(d.MAX_CLIENT_INFO_LEN)
    for i in range(len(frame) - 1):
        assert dec.feed(frame[i : i + 1]) == []
        assert len(dec._parts) <= 16
    assert dec.buffered == len(frame) - 1
    assert dec.feed(frame[-1:]) == [(d.FrameType.CLIENT_INFO, payload)]
    assert dec.buffered == 0


# --- the one size check of SendPacket / ForwardPacket ----------------------------------------------


@pytest.mark.parametrize("n", [32, 33, 32 + d.MAX_PACKET_SIZE])
def test_split_send_packet_in_range(n):
    payload = bytes(range(32)) + bytes(n - 32)
    dst, packet = d.split_send_packet(payload)
    assert dst == bytes(range(32)) and len(packet) == n - 32


@pytest.mark.parametrize("n", [0, 31, 33 + d.MAX_PACKET_SIZE])
def test_split_send_packet_out_of_range(n):
    with pytest.raises(d.RemoteProtocolError, match=f"SendPacket of {n} bytes"):
        d.split_send_packet(bytes(n))


@pytest.mark.parametrize("n", [63, 65 + d.MAX_PACKET_SIZE])
def test_split_forward_packet_out_of_range(n):
    with pytest.raises(d.RemoteProtocolError, match=f"ForwardPacket of {n} bytes"):
        d.split_forward_packet(bytes(n))


def test_split_forward_packet():
    src, dst, packet = d.split_forward_packet(b"s" * 32 + b"d" * 32 + b"p")
    assert (src, dst, packet) == (b"s" * 32, b"d" * 32, b"p")


def test_frame_header():
    assert d.frame_header(d.FrameType.RECV_PACKET, 300) == b"\x05\x00\x00\x01\x2c"


# --- the HTTP/1.1 upgrade ------------------------------------------------------------------------------


def test_client_upgrade_request_and_101():
    up = d.ClientUpgrade("relay.example", headers={"X-Extra": "1"})
    request = up.request()
    assert request.startswith(b"GET /derp HTTP/1.1\r\n")
    assert b"Upgrade: DERP\r\n" in request and b"Host: relay.example\r\n" in request and b"X-Extra: 1\r\n" in request
    assert b"Derp-Fast-Start" not in request
    answer = b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(
        k + b": " + v + b"\r\n" for k, v in d.switching_protocols_headers(SERVER_PUB)
    ) + b"\r\n"
    frame0 = frame(0x01, d.MAGIC + SERVER_PUB)
    assert up.receive_data(answer[:20]) is None
    assert up.receive_data(answer[20:] + frame0) == frame0


def test_client_upgrade_fast_start_header():
    assert b"Derp-Fast-Start: 1\r\n" in d.ClientUpgrade("h", fast_start=True).request()


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n", "upgrade refused: HTTP/1.1 426 Upgrade Required"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "bad HTTP answer"),
    ],
)
def test_client_upgrade_refused(answer, message):
    up = d.ClientUpgrade("h")
    up.request()
    with pytest.raises(d.UpgradeRefused, match=message):
        up.receive_data(answer)


def test_switching_protocols_headers_name_the_key():
    headers = dict(d.switching_protocols_headers(SERVER_PUB))
    assert headers[b"Derp-Public-Key"] == SERVER_PUB.hex().encode() and headers[b"Derp-Version"] == b"2"
