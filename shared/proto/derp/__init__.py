"""DERP v2, sans-IO: frames (`frames`), the handshake and HTTP upgrade (`handshake`), and the two
ends of a connection (`connection`); every public name is here too.

A DERP stream is a sequence of frames: one type byte, a 4-byte big-endian payload length, the
payload. The server speaks first (ServerKey); the client answers with ClientInfo (a NaCl box of a
small JSON object, sealed to the server's key); the server replies with ServerInfo (a box sealed to
the client's key) and both sides then exchange steady-state frames.

Two connection objects drive a stream, one per role:

    server = DerpServerConnection(server_private_key)
    out = server.server_key_frame()          # bytes to write first
    for event in server.receive_data(data):  # ClientInfo first, then SendPacket, Ping, ...
        ...
    out = server.accept()                    # ServerInfo, once the client is admitted
    out = server.send(Pong(data))            # any steady-state event -> bytes

    client = DerpClientConnection(client_private_key)
    for event in client.receive_data(data):  # ServerKey, ServerInfo, RecvPacket, ...
        ...
    out = client.client_info()               # after ServerKey (or at once with a known key)

Nothing here reads a clock or touches a socket. Violations by the peer raise
:class:`RemoteProtocolError`; misuse by the caller raises :class:`LocalProtocolError`. Unknown
frame types are reported as :class:`UnknownFrame` and otherwise ignored, as Go clients and servers
do.

The per-packet path is kept short: `frame_header` and :func:`encode_recv_packet_parts` give the
pieces of a frame so a writer can join many frames into one buffer.
"""

from __future__ import annotations

from . import connection, frames, handshake
from .connection import *  # noqa: F403 (each module's __all__ is its public list; this package is their union)
from .frames import *  # noqa: F403
from .handshake import *  # noqa: F403

__all__ = [*frames.__all__, *handshake.__all__, *connection.__all__]
