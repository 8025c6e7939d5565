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

from .connection import DerpServerConnection, DerpClientConnection
from .frames import (
    PROTOCOL_VERSION,
    MAGIC,
    KEY_LEN,
    NONCE_LEN,
    FRAME_HEADER_LEN,
    MAX_PACKET_SIZE,
    MAX_FRAME_LEN,
    MAX_CLIENT_INFO_LEN,
    MAX_SERVER_KEY_LEN,
    KEEPALIVE_INTERVAL,
    DISCO_MAGIC,
    FrameType,
    PeerGoneReason,
    PeerPresentFlags,
    DerpError,
    LocalProtocolError,
    RemoteProtocolError,
    ServerKey,
    ClientInfo,
    ServerInfo,
    SendPacket,
    ForwardPacket,
    RecvPacket,
    KeepAlive,
    NotePreferred,
    PeerGone,
    PeerPresent,
    WatchConns,
    ClosePeer,
    Ping,
    Pong,
    Health,
    Restarting,
    UnknownFrame,
    Event,
    FrameDecoder,
    encode_frame,
    encode,
    decode_frame,
    encode_recv_packet_parts,
    frame_header,
    split_send_packet,
    split_forward_packet,
    looks_like_disco,
    BOX_OVERHEAD,
    MAX_PING_LEN,
    PING_LEN,
    DISCO_MIN_LEN,
)
from .handshake import (
    UPGRADE_PROTOCOL,
    UpgradeRefused,
    ClientUpgrade,
    switching_protocols_headers,
    public_key_of,
)

__all__ = [
    "PROTOCOL_VERSION",
    "MAGIC",
    "KEY_LEN",
    "NONCE_LEN",
    "FRAME_HEADER_LEN",
    "MAX_PACKET_SIZE",
    "MAX_FRAME_LEN",
    "MAX_CLIENT_INFO_LEN",
    "MAX_SERVER_KEY_LEN",
    "KEEPALIVE_INTERVAL",
    "DISCO_MAGIC",
    "FrameType",
    "PeerGoneReason",
    "PeerPresentFlags",
    "DerpError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "ServerKey",
    "ClientInfo",
    "ServerInfo",
    "SendPacket",
    "ForwardPacket",
    "RecvPacket",
    "KeepAlive",
    "NotePreferred",
    "PeerGone",
    "PeerPresent",
    "WatchConns",
    "ClosePeer",
    "Ping",
    "Pong",
    "Health",
    "Restarting",
    "UnknownFrame",
    "Event",
    "FrameDecoder",
    "encode_frame",
    "encode",
    "decode_frame",
    "encode_recv_packet_parts",
    "frame_header",
    "split_send_packet",
    "split_forward_packet",
    "UPGRADE_PROTOCOL",
    "UpgradeRefused",
    "ClientUpgrade",
    "switching_protocols_headers",
    "looks_like_disco",
    "DerpServerConnection",
    "DerpClientConnection",
    "BOX_OVERHEAD",
    "MAX_PING_LEN",
    "PING_LEN",
    "DISCO_MIN_LEN",
    "public_key_of",
]
