"""HTTP/2 inside Noise on the control listener (services/coord/control_server.py over
shared/proto/control.py), after a real upgrade and Noise handshake: the first byte picks whether the rest is HTTP/2 frames (after the client
preface) that a real Noise client encrypts, or raw bytes standing for Noise records; a second byte
cuts the stream into socket-sized reads. A handler answers every request (the map path streams).

Invariants: the connection ends; nothing is logged at ERROR; the listener's body/stream accounting
is back to zero afterwards. Each input costs a Noise handshake (five X25519 operations in the
service's code) and a trio.run: this target is the slow one (see docs/fuzzing.md).
"""

from __future__ import annotations

from _controlpeer import _after_upgrade, _Peer, h2_frames, run_connection
from _fuzzutil import size_byte

INSTRUMENT = ("trioscale.services.coord.control_server", "trioscale.shared.proto.control", "h2")
MAX_LEN = 8192


def test_one_input(data: bytes) -> None:
    if not data:
        return
    rest = data[1:]
    reads, then = _after_upgrade(rest[1:], size_byte(rest), encrypt=not data[0] & 1)
    run_connection(_Peer(reads, then))


def seeds() -> list[bytes]:
    frames = h2_frames()
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    return [
        b"\x00\xff" + frames,
        b"\x00\x05" + frames,
        b"\x00\xff" + settings + b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + bytes(8),  # SETTINGS, PING
        b"\x01\x00\x04\x00\x20" + bytes(32),
    ]
