"""The two ends of a DERP connection, sans-IO: `DerpServerConnection` and `DerpClientConnection`
(bytes in, events out; steady-state events to bytes)."""

from __future__ import annotations

from typing import Any

from .frames import (
    BOX_OVERHEAD,
    ClientInfo,
    ClosePeer,
    Event,
    FrameDecoder,
    FrameType,
    Health,
    KEY_LEN,
    KeepAlive,
    LocalProtocolError,
    MAGIC,
    MAX_CLIENT_INFO_LEN,
    MAX_FRAME_LEN,
    MAX_PACKET_SIZE,
    MAX_PING_LEN,
    NONCE_LEN,
    NotePreferred,
    PING_LEN,
    PROTOCOL_VERSION,
    PeerGone,
    PeerPresent,
    RecvPacket,
    RemoteProtocolError,
    Restarting,
    SendPacket,
    ServerInfo,
    ServerKey,
    UnknownFrame,
    WatchConns,
    _decode_server_key,
    _key,
    decode_frame,
    encode,
    encode_frame,
    split_send_packet,
)
from .handshake import (
    _client_info_json,
    _open,
    _parse_client_info_json,
    _parse_server_info_json,
    _seal,
    _server_info_json,
    public_key_of,
)

__all__ = [
    "DerpServerConnection",
    "DerpClientConnection",
]


# --- connections ----------------------------------------------------------------------------------

_SERVER_RECEIVES = frozenset(
    {
        FrameType.CLIENT_INFO,
        FrameType.SEND_PACKET,
        FrameType.FORWARD_PACKET,
        FrameType.NOTE_PREFERRED,
        FrameType.WATCH_CONNS,
        FrameType.CLOSE_PEER,
        FrameType.PING,
        FrameType.PONG,
    }
)


class DerpServerConnection:
    """Server side of one DERP connection.

    States: ``AWAIT_CLIENT_INFO`` → (ClientInfo received) ``AWAIT_ACCEPT`` → (``accept()``)
    ``ESTABLISHED``. Frames that follow ClientInfo in the same data (fast start, or a client that
    does not wait for ServerInfo) are decoded too; the caller handles events in order and decides
    on admission before acting on later ones.
    """

    AWAIT_CLIENT_INFO = "AWAIT_CLIENT_INFO"
    AWAIT_ACCEPT = "AWAIT_ACCEPT"
    ESTABLISHED = "ESTABLISHED"

    def __init__(self, private_key: bytes):
        self._private_key = _key(private_key, "private key")
        self.public_key = public_key_of(self._private_key)
        self.state = self.AWAIT_CLIENT_INFO
        self.client_key: bytes | None = None
        self.client_info: ClientInfo | None = None
        # Frames from clients other than the ones the server acts on may be of any length;
        # they are skipped without buffering.
        self._decoder = FrameDecoder(MAX_CLIENT_INFO_LEN, known=_SERVER_RECEIVES)

    def server_key_frame(self) -> bytes:
        return encode_frame(FrameType.SERVER_KEY, MAGIC + self.public_key)

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held until the rest arrives."""
        return self._decoder.buffered

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; returns the events they complete, in order."""
        frames = self._decoder.feed(data)
        events: list[Event] = []
        if not frames:
            return events
        append = events.append
        i = 0
        if self.state is self.AWAIT_CLIENT_INFO:
            t, payload = frames[0]
            append(self._client_info(t, payload))
            i = 1
        SEND = FrameType.SEND_PACKET
        decode = self.decode_frame
        for t, payload in frames[i:] if i else frames:
            if t == SEND:
                append(SendPacket(*split_send_packet(payload)))
                continue
            ev = decode(t, payload)
            if ev is not None:
                append(ev)
        return events

    def receive_frames(self, data: bytes) -> list[tuple[int, Any]]:
        """The relay's fast path once the handshake is done: raw ``(type, payload)`` frames.

        The caller handles SendPacket (and a mesh peer's ForwardPacket) itself, splitting the
        payload with `split_send_packet` (`split_forward_packet`), which checks its size, and
        passes every other frame to `decode_frame`, which validates it like `receive_data` does."""
        if self.state is self.AWAIT_CLIENT_INFO:
            raise LocalProtocolError("receive_frames() before ClientInfo")
        return self._decoder.feed(data)

    def decode_frame(self, t: int, payload: Any) -> Event | None:
        """One post-handshake client frame (not SendPacket's fast path) → event or None."""
        if type(payload) is int:  # an oversized unknown frame, skipped
            return UnknownFrame(t, payload)
        if t == FrameType.SEND_PACKET:
            return SendPacket(*split_send_packet(payload))
        if t == FrameType.PING:
            n = len(payload)
            if not PING_LEN <= n <= MAX_PING_LEN:
                raise RemoteProtocolError(f"Ping of {n} bytes (must be {PING_LEN}..{MAX_PING_LEN})")
        elif t == FrameType.PONG:
            if len(payload) < PING_LEN:
                return None
        elif t not in _SERVER_RECEIVES or t == FrameType.CLIENT_INFO:
            return UnknownFrame(t, len(payload), payload)
        return decode_frame(t, payload)

    def _client_info(self, t: int, payload: bytes) -> ClientInfo:
        if t != FrameType.CLIENT_INFO:
            raise RemoteProtocolError(f"first frame is type {t:#04x}, expected ClientInfo (0x02)")
        n = len(payload)
        if not KEY_LEN + NONCE_LEN <= n <= MAX_CLIENT_INFO_LEN:
            raise RemoteProtocolError(f"ClientInfo of {n} bytes (must be 56..{MAX_CLIENT_INFO_LEN})")
        client_key = bytes(payload[:KEY_LEN])
        plaintext = _open(self._private_key, client_key, payload[KEY_LEN:], "ClientInfo")
        info = _parse_client_info_json(client_key, plaintext)
        self.client_key = client_key
        self.client_info = info
        self.state = self.AWAIT_ACCEPT
        # After the handshake the largest legitimate client frame is a full ForwardPacket.
        self._decoder.max_frame_len = 2 * KEY_LEN + MAX_PACKET_SIZE
        self._decoder.skip_unknown = True
        return info

    def accept(self, info: ServerInfo | None = None, *, nonce: bytes | None = None) -> bytes:
        """The ServerInfo frame admitting the client."""
        if self.state is not self.AWAIT_ACCEPT:
            raise LocalProtocolError(f"accept() in state {self.state}")
        plaintext = _server_info_json(info or ServerInfo())
        self.state = self.ESTABLISHED
        sealed = _seal(self._private_key, self.client_key, plaintext, nonce)
        return encode_frame(FrameType.SERVER_INFO, sealed)

    def send(self, event: Event) -> bytes:
        if type(event) in (SendPacket, ClosePeer, WatchConns, NotePreferred, ClientInfo, ServerInfo):
            raise LocalProtocolError(f"a server does not send {type(event).__name__}")
        return encode(event)


_CLIENT_RECEIVES = frozenset(
    {
        FrameType.SERVER_KEY,
        FrameType.SERVER_INFO,
        FrameType.RECV_PACKET,
        FrameType.KEEP_ALIVE,
        FrameType.PEER_GONE,
        FrameType.PEER_PRESENT,
        FrameType.PING,
        FrameType.PONG,
        FrameType.HEALTH,
        FrameType.RESTARTING,
    }
)


class DerpClientConnection:
    """Client side of one DERP connection (the mesh links, tests and load tools).

    States: ``AWAIT_SERVER_KEY`` → (ServerKey) ``SEND_CLIENT_INFO`` → (``client_info()``)
    ``AWAIT_SERVER_INFO`` → (ServerInfo) ``ESTABLISHED``. With ``server_public_key`` given
    (fast start) the client may send ClientInfo at once and a later ServerKey is ignored.
    """

    AWAIT_SERVER_KEY = "AWAIT_SERVER_KEY"
    SEND_CLIENT_INFO = "SEND_CLIENT_INFO"
    AWAIT_SERVER_INFO = "AWAIT_SERVER_INFO"
    ESTABLISHED = "ESTABLISHED"

    def __init__(self, private_key: bytes, *, server_public_key: bytes | None = None):
        self._private_key = _key(private_key, "private key")
        self.public_key = public_key_of(self._private_key)
        self.server_key = server_public_key
        self.server_info: ServerInfo | None = None
        self.state = self.SEND_CLIENT_INFO if server_public_key else self.AWAIT_SERVER_KEY
        self._decoder = FrameDecoder(MAX_FRAME_LEN)

    def client_info(self, info: ClientInfo | None = None, *, nonce: bytes | None = None) -> bytes:
        """The ClientInfo frame; `info.key` is ignored (the connection's own key is used)."""
        if self.state is not self.SEND_CLIENT_INFO:
            raise LocalProtocolError(f"client_info() in state {self.state}")
        info = info or ClientInfo(self.public_key, version=PROTOCOL_VERSION, can_ack_pings=True)
        sealed = _seal(self._private_key, self.server_key, _client_info_json(info), nonce)
        self.state = self.AWAIT_SERVER_INFO
        return encode_frame(FrameType.CLIENT_INFO, self.public_key + sealed)

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        append = events.append
        RECV = FrameType.RECV_PACKET
        for t, payload in self._decoder.feed(data):
            if t == RECV:
                if len(payload) >= KEY_LEN:
                    append(RecvPacket(payload[:KEY_LEN], payload[KEY_LEN:]))
                continue
            if self.state is self.AWAIT_SERVER_KEY:
                if t != FrameType.SERVER_KEY:
                    raise RemoteProtocolError(f"first frame is type {t:#04x}, expected ServerKey (0x01)")
                ev = _decode_server_key(payload)
                self.server_key = bytes(ev.key)
                self.state = self.SEND_CLIENT_INFO
                append(ev)
                continue
            if t == FrameType.SERVER_INFO:
                if self.state is not self.AWAIT_SERVER_INFO:
                    raise RemoteProtocolError(f"unexpected ServerInfo in state {self.state}")
                if len(payload) < NONCE_LEN + BOX_OVERHEAD:
                    raise RemoteProtocolError(f"ServerInfo of {len(payload)} bytes is too short")
                info = _parse_server_info_json(_open(self._private_key, self.server_key, payload, "ServerInfo"))
                self.server_info = info
                self.state = self.ESTABLISHED
                append(info)
                continue
            if t == FrameType.SERVER_KEY:
                # repeated (or fast-start) ServerKey: ignored like a Go client, but still checked
                append(_decode_server_key(payload))
                continue
            if t not in _CLIENT_RECEIVES:
                append(UnknownFrame(t, len(payload), payload))
                continue
            ev = decode_frame(t, payload)
            if ev is not None:
                append(ev)
        return events

    def send(self, event: Event) -> bytes:
        if type(event) in (RecvPacket, KeepAlive, PeerGone, PeerPresent, Health, Restarting, ServerKey, ServerInfo):
            raise LocalProtocolError(f"a client does not send {type(event).__name__}")
        return encode(event)
