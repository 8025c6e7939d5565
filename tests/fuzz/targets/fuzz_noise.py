"""Noise (shared/proto/noise.py): initiation, handshake reply, transport records, early payload.

The first byte picks the part under test; the rest is what a peer would send.
Invariant everywhere: only `noise.RemoteProtocolError` escapes for bad peer input; a connection
that failed keeps failing; records made by the real encryptor and cut anywhere decrypt to exactly
what was sent (round trip); nothing buffers more than one record.
"""

from __future__ import annotations

from _fuzzutil import chunks, pieces, size_byte

from trioscale.shared.proto import keys, noise

INSTRUMENT = ("trioscale.shared.proto",)
MAX_LEN = 8192

_SERVER = bytes(range(1, 33))
_MACHINE = bytes(range(33, 65))
_EPH_C = bytes(range(65, 97))
_EPH_S = bytes(range(97, 129))
_VERSION = 130

# One fixed, completed handshake: its split keys seed fresh connections per input (cheap).
_init = noise.Initiator(keys.public_key(_SERVER), _MACHINE, _VERSION, ephemeral_private_key=_EPH_C)
_INITIATION = _init.initiation
_hs = noise.respond(_INITIATION, _SERVER, ephemeral_private_key=_EPH_S)
_RESPONSE = _hs.response
_K1 = bytes(range(129, 161))
_K2 = bytes(range(161, 193))


def _pair() -> tuple[noise.NoiseConnection, noise.NoiseConnection]:
    """A fresh (client, server) transport pair, nonces at zero. The transport does not care where
    its keys came from, so fixed keys spare four X25519 operations per input."""
    return noise.NoiseConnection(send_key=_K1, receive_key=_K2), noise.NoiseConnection(send_key=_K2, receive_key=_K1)


def _receive_all(conn: noise.NoiseConnection, data: bytes) -> list[bytes] | None:
    """Feed `data` in socket-sized pieces; the plaintexts, or None if the peer was refused."""
    out: list[bytes] = []
    try:
        for piece in chunks(data):
            out += conn.receive_data(piece)
            assert conn.buffered < noise.MAX_RECORD_LEN, conn.buffered
    except noise.RemoteProtocolError:
        try:
            conn.receive_data(b"x")
        except noise.RemoteProtocolError:
            return None
        raise AssertionError("a failed connection accepted more data")
    return out


def _initiation(data: bytes) -> None:
    try:
        version = noise.parse_initiation_version(data)
    except noise.RemoteProtocolError:
        return
    assert 0 <= version <= 0xFFFF
    try:
        hs = noise.respond(data, _SERVER, ephemeral_private_key=_EPH_S)
    except noise.RemoteProtocolError:
        return
    assert len(hs.response) == noise.RESPONSE_LEN and len(hs.machine_key) == keys.KEY_LEN


def _reply(data: bytes) -> None:
    ini = noise.Initiator(keys.public_key(_SERVER), _MACHINE, _VERSION, ephemeral_private_key=_EPH_C)
    if len(data) >= 3:
        try:
            ini.reply_length(data[:3])
        except noise.RemoteProtocolError:
            pass
    try:
        ini.receive_response(data)
    except noise.RemoteProtocolError:
        pass


def _records(data: bytes) -> None:
    _client, server = _pair()
    _receive_all(server, data)


def _round_trip(data: bytes) -> None:
    """Plaintexts (fuzz-chosen) → real records → cut anywhere → the same plaintexts."""
    client, server = _pair()
    parts = pieces(data[1:], 8)
    wire = b"".join(client.encrypt(p) for p in parts)
    cut = size_byte(data) + wire
    got = _receive_all(server, cut)
    assert got is not None, "valid records were refused"
    assert b"".join(got) == b"".join(parts)
    assert server.buffered == 0


def _early(data: bytes) -> None:
    parser = noise.EarlyPayloadParser(max_length=4096)
    try:
        for piece in chunks(data):
            if parser.receive_data(piece):
                break
    except noise.RemoteProtocolError:
        return
    if parser.done and parser.challenge_public_key is not None:
        assert len(parser.challenge_public_key) == keys.KEY_LEN


def _early_round_trip(data: bytes) -> None:
    key = (data[1:33] + bytes(32))[:32]
    wire = noise.encode_early_payload(key) + data[33:]
    parser = noise.EarlyPayloadParser()
    for piece in chunks(size_byte(data) + wire):
        if parser.receive_data(piece):
            break
    else:
        raise AssertionError("a whole early payload was not recognised")
    want = None if key == bytes(32) else key
    assert parser.challenge_public_key == want
    assert data[33:].startswith(parser.rest)


_MODES = (_initiation, _reply, _records, _round_trip, _early, _early_round_trip)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    _MODES[data[0] % len(_MODES)](data[1:])


def seeds() -> list[bytes]:
    client, _server = _pair()
    rec = client.encrypt(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + client.encrypt(b"hello")
    return [
        b"\x00" + _INITIATION,
        b"\x01" + _RESPONSE,
        b"\x01" + noise.error_frame("unsupported client version"),
        b"\x02\x00" + rec,
        b"\x02\x07" + rec,
        b"\x03\x05hello\xff\x00world",
        b"\x04\x03" + noise.encode_early_payload(bytes(range(32))) + b"PRI",
        b"\x05\x01" + bytes(range(32)) + b"PRI * HTTP/2.0",
    ]
