"""DERP (shared/proto/derp.py): frames and ClientInfo, on the server's side as the relay drives it,
and the client's side as our client drives it.

The first byte picks the mode:
0. raw bytes from a client before the handshake (what an unauthenticated peer can send);
1. a ClientInfo whose JSON is the fuzz input, sealed with a real client key (the fuzzer cannot forge
   a NaCl box, so the harness seals for it), then fuzz frames through the relay's steady-state path
   (``receive_frames`` + the reader's SendPacket/ForwardPacket checks + ``decode_frame``);
2. raw bytes from a server to ``DerpClientConnection``, and a sealed ServerInfo;
3. one frame (type, payload) through ``decode_frame`` with a decode → encode → decode round trip.
Invariants: only ``derp.RemoteProtocolError`` escapes; the decoder never holds more than one frame;
every event decoded re-encodes to a frame that decodes to the same event.
"""

from __future__ import annotations

from _fuzzutil import chunks, pieces, size_byte

from trioscale.shared.proto import derp as d

INSTRUMENT = ("trioscale.shared.proto",)
MAX_LEN = 16384

_SERVER = bytes(range(1, 33))
_CLIENT = bytes(range(33, 65))
_SERVER_PUB = d.public_key_of(_SERVER)
_CLIENT_PUB = d.public_key_of(_CLIENT)
_NONCE = bytes(range(24))
_MAXP = d.KEY_LEN + d.MAX_PACKET_SIZE
_MAXF = 2 * d.KEY_LEN + d.MAX_PACKET_SIZE


def _check_round_trip(t: int, payload: bytes, ev: object) -> None:
    if isinstance(ev, (d.UnknownFrame, d.ClientInfo, d.ServerInfo)):
        return
    wire = d.encode(ev)
    frames = d.FrameDecoder(d.MAX_FRAME_LEN).feed(wire)
    assert len(frames) == 1, frames
    again = d.decode_frame(*frames[0])
    assert again == ev, (t, payload, ev, again)


def _steady(conn: d.DerpServerConnection, data: bytes) -> None:
    """The relay's reader loop (services/derp/router.py Client.reader), mesh peer, minus I/O."""
    for piece in chunks(data):
        for t, payload in conn.receive_frames(piece):
            assert conn._decoder.buffered <= 5 + _MAXF  # noqa: SLF001
            if t == d.FrameType.SEND_PACKET:
                n = len(payload)
                if n < d.KEY_LEN or n > _MAXP:
                    raise d.RemoteProtocolError("bad SendPacket")
            elif t == d.FrameType.FORWARD_PACKET and type(payload) is not int:
                n = len(payload)
                if n < 2 * d.KEY_LEN or n > _MAXF:
                    raise d.RemoteProtocolError("bad ForwardPacket")
            else:
                ev = conn.decode_frame(t, payload)
                if ev is not None and type(payload) is not int:
                    _check_round_trip(t, payload, ev)


def _handshake(data: bytes, conn: d.DerpServerConnection) -> list:
    events: list = []
    for piece in chunks(data):
        events = conn.receive_data(piece)
        assert conn._decoder.buffered <= 5 + d.MAX_CLIENT_INFO_LEN  # noqa: SLF001
        if events:
            break
    return events


def _raw_client(data: bytes) -> None:
    conn = d.DerpServerConnection(_SERVER)
    _handshake(data, conn)


def _sealed_client_info(data: bytes) -> None:
    info_json, rest = (pieces(data[1:], 2) + [b""])[:2]
    sealed = d.handshake._seal(_CLIENT, _SERVER_PUB, info_json, _NONCE)  # noqa: SLF001
    wire = d.encode_frame(d.FrameType.CLIENT_INFO, _CLIENT_PUB + sealed) + rest
    conn = d.DerpServerConnection(_SERVER)
    events = _handshake(size_byte(data) + wire, conn)
    assert events, "a whole ClientInfo frame gave no event"
    info = events[0]
    assert type(info) is d.ClientInfo and info.key == _CLIENT_PUB
    assert isinstance(info.version, int) and (info.mesh_key is None or len(info.mesh_key) == d.KEY_LEN)
    conn.accept()
    _steady(conn, size_byte(data) + rest)


def _client_side(data: bytes) -> None:
    server_info, rest = (pieces(data[1:], 2) + [b""])[:2]
    client = d.DerpClientConnection(_CLIENT)
    wire = d.encode_frame(d.FrameType.SERVER_KEY, d.MAGIC + _SERVER_PUB)
    for ev in client.receive_data(wire):
        assert type(ev) is d.ServerKey
    client.client_info(nonce=_NONCE)
    sealed = d.handshake._seal(_SERVER, _CLIENT_PUB, server_info, _NONCE)  # noqa: SLF001
    for piece in chunks(size_byte(data) + d.encode_frame(d.FrameType.SERVER_INFO, sealed) + rest):
        client.receive_data(piece)
    # and a client that meets garbage first
    fresh = d.DerpClientConnection(_CLIENT)
    for piece in chunks(data):
        fresh.receive_data(piece)


def _one_frame(data: bytes) -> None:
    if not data:
        return
    t, payload = data[0], data[1:]
    ev = d.decode_frame(t, payload)
    if ev is not None:
        _check_round_trip(t, payload, ev)


_MODES = (_raw_client, _sealed_client_info, _client_side, _one_frame)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        _MODES[data[0] % len(_MODES)](data[1:])
    except d.RemoteProtocolError:
        pass


def seeds() -> list[bytes]:
    ping = d.encode(d.Ping(b"12345678"))
    send = d.encode(d.SendPacket(bytes(32), b"hello"))
    fwd = d.encode(d.ForwardPacket(bytes(range(32)), bytes(32), b"x"))
    present = d.encode(d.PeerPresent(bytes(32), "192.0.2.1", 41641, 1))
    client = d.DerpClientConnection(_CLIENT, server_public_key=_SERVER_PUB)
    return [
        b"\x00\x0f" + client.client_info(nonce=_NONCE) + send,
        b"\x01\x40" + b'{"version":2,"CanAckPings":true}' + b"\xff\x00" + send + ping + fwd + d.encode(d.NotePreferred(True)),
        b"\x01\x40" + b'{"version":2,"meshKey":"' + b"ab" * 32 + b'"}' + b"\xff\x00" + d.encode(d.WatchConns()),
        b"\x02\x40" + b'{"version":2,"TokenBucketBytesPerSecond":1}' + b"\xff\x00" + present + d.encode(d.Health("x")),
        b"\x03" + ping[:1] + ping[5:],
        b"\x03" + present[:1] + present[5:],
        b"\x03\x15" + b"\x00\x00\x01\x00\x00\x00\x02\x00",
    ]
