"""The control listener's HTTP/1.1 side (services/coord/control_server.py, with the upgrade's checks
in shared/proto/control.py): requests, `/key`, and the `/ts2021` upgrade with its
X-Tailscale-Handshake header (base64 of the Noise initiation), as a peer sends them: the input is
the raw TCP byte stream, cut into socket-sized reads by its first byte. The real connection code
runs on an in-memory stream under Trio's mock clock (see _controlpeer).

Invariants: the connection ends; nothing is logged at ERROR (the listener's "unexpected error"
path); the listener's accounting is back to zero afterwards.
"""

from __future__ import annotations

from _controlpeer import _Peer, _upgrade_request, _initiator, run_connection
from _fuzzutil import chunks

INSTRUMENT = ("trioscale.services.coord.control_server", "trioscale.shared.proto.control", "h11")
MAX_LEN = 8192  # a real upgrade request is ~300 bytes; the head limit is 16 KiB

#: the header names and values the upgrade path compares against
DICTIONARY = (
    b"POST /ts2021 HTTP/1.1\r\n", b"GET /key?v=", b"Upgrade: tailscale-control-protocol\r\n",
    b"Connection: upgrade\r\n", b"X-Tailscale-Handshake: ", b"Content-Length: ", b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n", b"\r\n\r\n", b"HTTP/1.0", b"AAEAAWAA",
)


def test_one_input(data: bytes) -> None:
    run_connection(_Peer(list(chunks(data))))


def seeds() -> list[bytes]:
    return [
        b"\x10GET /key?v=130 HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\xff" + _upgrade_request(_initiator().initiation),
        b"\x07POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: AAAA\r\n\r\n",
        b"\x40POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"\x03GET /key HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ]
