"""DERP v2 framing and handshake, sans-IO.

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

The per-packet path is kept short: :func:`encode_recv_packet_parts` gives the pieces of a
RecvPacket frame so a writer can join many frames into one buffer.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Union

import h11
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

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
]

PROTOCOL_VERSION = 2
MAGIC = "DERP🔑".encode()  # 44 45 52 50 f0 9f 94 91
KEY_LEN = 32
NONCE_LEN = 24
BOX_OVERHEAD = 16
FRAME_HEADER_LEN = 5
MAX_PACKET_SIZE = 64 << 10
#: Largest frame either side accepts (Go clients treat anything longer as fatal).
MAX_FRAME_LEN = 1 << 20
MAX_CLIENT_INFO_LEN = 256 << 10
MAX_SERVER_KEY_LEN = 1024
MAX_PING_LEN = 1000
PING_LEN = 8
KEEPALIVE_INTERVAL = 60.0
DISCO_MAGIC = "TS💬".encode()  # 54 53 f0 9f 92 ac
#: smallest disco packet: magic + sender disco key + nonce
DISCO_MIN_LEN = len(DISCO_MAGIC) + KEY_LEN + NONCE_LEN

_HDR = struct.Struct(">BI")
#: ``frame_header(type, payload_length)``: the 5 bytes before a payload; a batching writer joins
#: them with the payload's parts itself (one bound method: this runs once per relayed packet)
frame_header = _HDR.pack
_unpack_hdr = _HDR.unpack_from
_U16 = struct.Struct(">H")
_RESTARTING = struct.Struct(">II")


class FrameType(enum.IntEnum):
    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


class PeerGoneReason(enum.IntEnum):
    DISCONNECTED = 0x00
    NOT_HERE = 0x01


class PeerPresentFlags(enum.IntFlag):
    IS_REGULAR = 0x01
    IS_MESH_PEER = 0x02
    IS_PROBER = 0x04
    NOT_IDEAL = 0x08


class DerpError(Exception):
    """Base of this module's errors."""


class LocalProtocolError(DerpError):
    """Our side tried something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(DerpError):
    """The peer sent something the protocol forbids; the connection should be closed."""


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerKey:
    key: bytes
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The client's identity (its public key) and the decoded JSON it sent."""

    key: bytes
    version: int = 0
    mesh_key: bytes | None = None
    can_ack_pings: bool = False
    is_prober: bool = False
    #: every JSON field as received (unknown ones included)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: int = PROTOCOL_VERSION
    token_bucket_bytes_per_second: int = 0
    token_bucket_bytes_burst: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class SendPacket:
    dst: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class ForwardPacket:
    src: bytes
    dst: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class RecvPacket:
    src: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class NotePreferred:
    preferred: bool


@dataclass(frozen=True, slots=True)
class PeerGone:
    key: bytes
    reason: int = PeerGoneReason.DISCONNECTED


@dataclass(frozen=True, slots=True)
class PeerPresent:
    key: bytes
    ip: str | None = None  # IPv4 given as dotted quad (unmapped), IPv6 as usual
    port: int | None = None
    flags: int | None = None


@dataclass(frozen=True, slots=True)
class WatchConns:
    pass


@dataclass(frozen=True, slots=True)
class ClosePeer:
    key: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class Health:
    problem: str = ""  # empty = healthy


@dataclass(frozen=True, slots=True)
class Restarting:
    reconnect_in_ms: int
    try_for_ms: int


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame of a type this side does not act on; `payload` is empty when it was skipped."""

    type: int
    length: int
    payload: bytes = b""


Event = Union[
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
]

_KEEPALIVE = KeepAlive()
_WATCH_CONNS = WatchConns()


# --- encoding -------------------------------------------------------------------------------------


def encode_frame(frame_type: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_LEN:
        raise LocalProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME_LEN}")
    return frame_header(frame_type, len(payload)) + payload


def _key(k: bytes, what: str = "key") -> bytes:
    if len(k) != KEY_LEN:
        raise LocalProtocolError(f"{what} must be {KEY_LEN} bytes, got {len(k)}")
    return bytes(k)


def _packet(p: bytes) -> bytes:
    if len(p) > MAX_PACKET_SIZE:
        raise LocalProtocolError(f"packet of {len(p)} bytes exceeds {MAX_PACKET_SIZE}")
    return p


def encode_recv_packet_parts(src: bytes, packet: bytes) -> tuple[bytes, bytes, bytes]:
    """Header, source key and packet of a RecvPacket frame, for ``b"".join`` by a batching writer."""
    return frame_header(FrameType.RECV_PACKET, KEY_LEN + len(packet)), src, packet


def _ip_bytes(ip: str | None) -> bytes:
    if ip is None:
        return bytes(16)
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + addr.packed).packed
    return addr.packed


def encode(event: Event) -> bytes:
    """The wire bytes of a steady-state event (handshake frames need keys: use a connection)."""
    t = type(event)
    if t is RecvPacket:
        return frame_header(FrameType.RECV_PACKET, KEY_LEN + len(event.packet)) + _key(event.src) + _packet(event.packet)
    if t is SendPacket:
        return frame_header(FrameType.SEND_PACKET, KEY_LEN + len(event.packet)) + _key(event.dst) + _packet(event.packet)
    if t is ForwardPacket:
        payload = _key(event.src) + _key(event.dst) + _packet(event.packet)
        return encode_frame(FrameType.FORWARD_PACKET, payload)
    if t is KeepAlive:
        return encode_frame(FrameType.KEEP_ALIVE)
    if t is NotePreferred:
        return encode_frame(FrameType.NOTE_PREFERRED, b"\x01" if event.preferred else b"\x00")
    if t is PeerGone:
        if not 0 <= event.reason <= 255:
            raise LocalProtocolError(f"PeerGone reason {event.reason} out of range")
        return encode_frame(FrameType.PEER_GONE, _key(event.key) + bytes([event.reason]))
    if t is PeerPresent:
        payload = _key(event.key)
        if event.ip is not None or event.port is not None or event.flags is not None:
            port = event.port or 0
            if not 0 <= port <= 0xFFFF:
                raise LocalProtocolError(f"port {port} out of range")
            payload += _ip_bytes(event.ip) + _U16.pack(port)
            if event.flags is not None:
                if not 0 <= event.flags <= 255:
                    raise LocalProtocolError(f"flags {event.flags} out of range")
                payload += bytes([event.flags])
        return encode_frame(FrameType.PEER_PRESENT, payload)
    if t is WatchConns:
        return encode_frame(FrameType.WATCH_CONNS)
    if t is ClosePeer:
        return encode_frame(FrameType.CLOSE_PEER, _key(event.key))
    if t is Ping or t is Pong:
        if len(event.data) != PING_LEN:
            raise LocalProtocolError(f"ping/pong data must be {PING_LEN} bytes")
        return encode_frame(FrameType.PING if t is Ping else FrameType.PONG, bytes(event.data))
    if t is Health:
        return encode_frame(FrameType.HEALTH, event.problem.encode("utf-8"))
    if t is Restarting:
        try:
            payload = _RESTARTING.pack(event.reconnect_in_ms, event.try_for_ms)
        except struct.error as exc:
            raise LocalProtocolError(f"Restarting values out of range: {exc}") from None
        return encode_frame(FrameType.RESTARTING, payload)
    if t is ServerKey:
        return encode_frame(FrameType.SERVER_KEY, MAGIC + _key(event.key) + event.extra)
    if t is UnknownFrame:
        return encode_frame(event.type, event.payload)
    raise LocalProtocolError(f"{t.__name__} cannot be encoded without a connection's keys")


def looks_like_disco(packet: bytes) -> bool:
    return len(packet) >= DISCO_MIN_LEN and packet.startswith(DISCO_MAGIC)


# --- decoding -------------------------------------------------------------------------------------


_SEND_MAX = KEY_LEN + MAX_PACKET_SIZE
_FORWARD_MIN = 2 * KEY_LEN
_FORWARD_MAX = 2 * KEY_LEN + MAX_PACKET_SIZE


def split_send_packet(payload: Any) -> tuple[Any, Any]:
    """``(dst, packet)`` of a SendPacket payload; RemoteProtocolError when its size is out of
    range. The one size check of a SendPacket: the relay's hot loop calls it per packet."""
    n = len(payload)
    if n < KEY_LEN or n > _SEND_MAX:
        raise RemoteProtocolError(f"SendPacket of {n} bytes (must be {KEY_LEN}..{_SEND_MAX})")
    return payload[:KEY_LEN], payload[KEY_LEN:]


def split_forward_packet(payload: Any) -> tuple[Any, Any, Any]:
    """``(src, dst, packet)`` of a ForwardPacket payload; RemoteProtocolError when its size is
    out of range (the one size check of a ForwardPacket)."""
    n = len(payload)
    if n < _FORWARD_MIN or n > _FORWARD_MAX:
        raise RemoteProtocolError(f"ForwardPacket of {n} bytes (must be {_FORWARD_MIN}..{_FORWARD_MAX})")
    return payload[:KEY_LEN], payload[KEY_LEN:_FORWARD_MIN], payload[_FORWARD_MIN:]


def _unmap(ip16: bytes) -> str:
    addr = ipaddress.IPv6Address(ip16)
    v4 = addr.ipv4_mapped
    return str(v4) if v4 is not None else str(addr)


def decode_frame(frame_type: int, payload: bytes) -> Event | None:
    """Decode one steady-state frame; ``None`` for frames the protocol says to drop silently
    (too short RecvPacket/PeerGone/Ping/Pong as a Go client does). Raises RemoteProtocolError for
    frames that must close the connection. ClientInfo/ServerInfo need keys: see the connections."""
    n = len(payload)
    if frame_type == FrameType.SEND_PACKET:
        return SendPacket(*split_send_packet(payload))
    if frame_type == FrameType.RECV_PACKET:
        if n < KEY_LEN:
            return None
        return RecvPacket(payload[:KEY_LEN], payload[KEY_LEN:])
    if frame_type == FrameType.FORWARD_PACKET:
        return ForwardPacket(*split_forward_packet(payload))
    if frame_type == FrameType.KEEP_ALIVE:
        return _KEEPALIVE
    if frame_type == FrameType.NOTE_PREFERRED:
        if n != 1:
            raise RemoteProtocolError(f"NotePreferred must be 1 byte, got {n}")
        return NotePreferred(payload[0] != 0)
    if frame_type == FrameType.PEER_GONE:
        if n < KEY_LEN:
            return None
        return PeerGone(payload[:KEY_LEN], payload[KEY_LEN] if n > KEY_LEN else PeerGoneReason.DISCONNECTED)
    if frame_type == FrameType.PEER_PRESENT:
        if n < KEY_LEN:
            return None
        key = payload[:KEY_LEN]
        if n < KEY_LEN + 18:
            return PeerPresent(key)
        ip = _unmap(bytes(payload[KEY_LEN : KEY_LEN + 16]))
        port = _U16.unpack_from(payload, KEY_LEN + 16)[0]
        flags = payload[KEY_LEN + 18] if n > KEY_LEN + 18 else None
        return PeerPresent(key, ip, port, flags)
    if frame_type == FrameType.WATCH_CONNS:
        if n != 0:
            raise RemoteProtocolError(f"WatchConns must be empty, got {n} bytes")
        return _WATCH_CONNS
    if frame_type == FrameType.CLOSE_PEER:
        if n != KEY_LEN:
            raise RemoteProtocolError(f"ClosePeer must be {KEY_LEN} bytes, got {n}")
        return ClosePeer(payload)
    if frame_type == FrameType.PING or frame_type == FrameType.PONG:
        if n < PING_LEN:
            return None
        data = payload[:PING_LEN]
        return Ping(data) if frame_type == FrameType.PING else Pong(data)
    if frame_type == FrameType.HEALTH:
        return Health(payload.decode("utf-8", "replace"))
    if frame_type == FrameType.RESTARTING:
        if n < _RESTARTING.size:
            raise RemoteProtocolError(f"Restarting must be {_RESTARTING.size} bytes, got {n}")
        return Restarting(*_RESTARTING.unpack_from(payload))
    if frame_type == FrameType.SERVER_KEY:
        return _decode_server_key(payload)
    return UnknownFrame(frame_type, n, payload)


def _decode_server_key(payload: bytes) -> ServerKey:
    n = len(payload)
    if not len(MAGIC) + KEY_LEN <= n <= MAX_SERVER_KEY_LEN:
        raise RemoteProtocolError(f"ServerKey payload of {n} bytes (must be 40..{MAX_SERVER_KEY_LEN})")
    if payload[: len(MAGIC)] != MAGIC:
        raise RemoteProtocolError("ServerKey frame does not start with the DERP magic")
    return ServerKey(payload[len(MAGIC) : len(MAGIC) + KEY_LEN], payload[len(MAGIC) + KEY_LEN :])


_MAX_PARTS = 16


class FrameDecoder:
    """Splits a byte stream into ``(type, payload)`` frames.

    A frame longer than ``max_frame_len`` raises RemoteProtocolError, unless ``skip_unknown`` is
    set and its type is not in ``known``: then its payload is discarded as it streams past,
    without being buffered, and ``(type, length)`` (an int in place of the payload) is returned
    in its place among the frames.
    Partial frames are kept as a list of chunks and joined once complete, so a large frame
    arriving in many small reads costs one copy. Past `_MAX_PARTS` chunks they are gathered in
    one bytearray instead: a peer trickling a frame a byte per read must not make us hold an
    object (~40 bytes) per byte.
    """

    __slots__ = ("_parts", "_have", "_need", "_skip", "max_frame_len", "skip_unknown", "_known")

    def __init__(self, max_frame_len: int = MAX_FRAME_LEN, *, skip_unknown: bool = False, known=frozenset()):
        self._parts: list[bytes] = []
        self._have = 0
        self._need = FRAME_HEADER_LEN  # bytes needed before parsing can make progress
        self._skip = 0
        self.max_frame_len = max_frame_len
        self.skip_unknown = skip_unknown
        self._known = known

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """Add bytes; return every complete frame they finish."""
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        if self._parts:
            self._have += len(data)
            parts = self._parts
            if type(parts[0]) is bytearray:
                parts[0] += data
            elif len(parts) < _MAX_PARTS:
                parts.append(data)
            else:
                gathered = bytearray().join(parts)
                gathered += data
                self._parts = [gathered]
            if self._have < self._need:
                return []
            buf = b"".join(self._parts)
            self._parts = []
            self._have = 0
        else:
            buf = data
        frames = []
        append = frames.append
        off = 0
        end = len(buf)
        maxlen = self.max_frame_len
        need = FRAME_HEADER_LEN
        while end - off >= 5:
            t, n = _unpack_hdr(buf, off)
            if n > maxlen:
                if self.skip_unknown and t not in self._known:
                    append((t, n))
                    avail = end - off - 5
                    if avail >= n:
                        off += 5 + n
                        continue
                    self._skip = n - avail
                    off = end
                    break
                raise RemoteProtocolError(f"frame type {t:#04x} of {n} bytes exceeds the limit of {maxlen}")
            start = off + 5
            stop = start + n
            if stop > end:
                need = 5 + n
                break
            append((t, buf[start:stop]))
            off = stop
        if off < end:
            rest = buf[off:]
            self._parts = [rest]
            self._have = len(rest)
            self._need = need
        return frames

    @property
    def buffered(self) -> int:
        return self._have


# --- handshake helpers ----------------------------------------------------------------------------


def _json_ci(obj: dict[str, Any], name: str) -> Any:
    """Case-insensitive field lookup, as Go's JSON decoder matches names (exact match first)."""
    if name in obj:
        return obj[name]
    lname = name.lower()
    for k, v in obj.items():
        if k.lower() == lname:
            return v
    return None


def _parse_client_info_json(client_key: bytes, plaintext: bytes) -> ClientInfo:
    try:
        obj = json.loads(plaintext)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"ClientInfo JSON is invalid: {exc}") from None
    except RecursionError:  # nesting deeper than the interpreter's stack: hostile, not a bug of ours
        raise RemoteProtocolError("ClientInfo JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("ClientInfo JSON is not an object")
    version = _json_ci(obj, "version")
    if version is None:
        version = 0
    if not isinstance(version, int) or isinstance(version, bool):
        raise RemoteProtocolError("ClientInfo version is not an integer")
    mesh_text = _json_ci(obj, "meshKey")
    mesh_key = None
    if mesh_text is not None and mesh_text != "":
        if not isinstance(mesh_text, str):
            raise RemoteProtocolError("ClientInfo meshKey is not a string")
        mesh_text = mesh_text.strip()
        if len(mesh_text) != 2 * KEY_LEN:
            raise RemoteProtocolError("ClientInfo meshKey must be 64 hex characters")
        try:
            mesh_key = bytes.fromhex(mesh_text)
        except ValueError:
            raise RemoteProtocolError("ClientInfo meshKey is not hex") from None
        if mesh_key == bytes(KEY_LEN):
            mesh_key = None
    can_ack = _json_ci(obj, "CanAckPings")
    prober = _json_ci(obj, "IsProber")
    return ClientInfo(
        key=client_key,
        version=version,
        mesh_key=mesh_key,
        can_ack_pings=can_ack is True,
        is_prober=prober is True,
        raw=obj,
    )


def _client_info_json(info: ClientInfo) -> bytes:
    obj: dict[str, Any] = {}
    if info.mesh_key:
        obj["meshKey"] = _key(info.mesh_key, "mesh key").hex()
    if info.version:
        obj["version"] = info.version
    obj["CanAckPings"] = bool(info.can_ack_pings)
    if info.is_prober:
        obj["IsProber"] = True
    for k, v in info.raw.items():
        obj.setdefault(k, v)
    return json.dumps(obj, separators=(",", ":")).encode()


def _server_info_json(info: ServerInfo) -> bytes:
    obj: dict[str, Any] = {"version": info.version}
    if info.token_bucket_bytes_per_second:
        obj["TokenBucketBytesPerSecond"] = info.token_bucket_bytes_per_second
    if info.token_bucket_bytes_burst:
        obj["TokenBucketBytesBurst"] = info.token_bucket_bytes_burst
    return json.dumps(obj, separators=(",", ":")).encode()


def _parse_server_info_json(plaintext: bytes) -> ServerInfo:
    try:
        obj = json.loads(plaintext)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"ServerInfo JSON is invalid: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("ServerInfo JSON is not an object")

    def _int(name: str) -> int:
        v = _json_ci(obj, name)
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    return ServerInfo(
        version=_int("version"),
        token_bucket_bytes_per_second=_int("TokenBucketBytesPerSecond"),
        token_bucket_bytes_burst=_int("TokenBucketBytesBurst"),
        raw=obj,
    )


def _seal(private_key: bytes, peer_public: bytes, plaintext: bytes, nonce: bytes | None) -> bytes:
    box = Box(PrivateKey(private_key), PublicKey(peer_public))
    if nonce is not None and len(nonce) != NONCE_LEN:
        raise LocalProtocolError(f"nonce must be {NONCE_LEN} bytes")
    return bytes(box.encrypt(plaintext, nonce))  # nonce || tag || ciphertext


def _open(private_key: bytes, peer_public: bytes, sealed: bytes, what: str) -> bytes:
    try:
        box = Box(PrivateKey(private_key), PublicKey(peer_public))
        return box.decrypt(bytes(sealed[NONCE_LEN:]), bytes(sealed[:NONCE_LEN]))
    except (CryptoError, ValueError, TypeError):
        raise RemoteProtocolError(f"{what} box does not open") from None


def public_key_of(private_key: bytes) -> bytes:
    return bytes(PrivateKey(_key(private_key, "private key")).public_key)


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


# --- the HTTP/1.1 upgrade -------------------------------------------------------------------------
#
# A DERP connection starts as ``GET /derp`` with ``Upgrade: DERP``; the relay answers ``101`` and
# speaks first (ServerKey). With ``Derp-Fast-Start: 1`` the client already knows the relay's key
# and sends its ClientInfo right after the request; the relay then sends no HTTP answer at all.

UPGRADE_PROTOCOL = "DERP"
_UPGRADE_HEAD_LIMIT = 64 * 1024


class UpgradeRefused(DerpError):
    """The relay answered the upgrade with something other than ``101``, or not HTTP/1.1 at all."""


def switching_protocols_headers(server_public_key: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of the relay's ``101`` (for ``h11.InformationalResponse``)."""
    return [
        (b"Upgrade", UPGRADE_PROTOCOL.encode()),
        (b"Connection", b"Upgrade"),
        (b"Derp-Version", str(PROTOCOL_VERSION).encode()),
        (b"Derp-Public-Key", _key(server_public_key, "server key").hex().encode()),
    ]


class ClientUpgrade:
    """The client's side of the upgrade: the request bytes, then the relay's answer parsed.

        up = ClientUpgrade("derp.example.com", fast_start=False)
        out = up.request()                 # write these first
        rest = up.receive_data(data)       # None until the 101 is complete; then the DERP bytes after it

    ``headers`` are added to (and override) the request's own; with ``fast_start`` no answer
    comes and `receive_data` is not used."""

    def __init__(self, host: str, path: str = "/derp", headers: dict[str, str] | None = None,
                 *, fast_start: bool = False):
        fields = {"Host": host, "Connection": "Upgrade", "Upgrade": UPGRADE_PROTOCOL}
        if fast_start:
            fields["Derp-Fast-Start"] = "1"
        fields.update(headers or {})
        self.fast_start = fast_start
        self._target = path
        self._fields = list(fields.items())
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=_UPGRADE_HEAD_LIMIT)

    def request(self) -> bytes:
        return (self._http.send(h11.Request(method="GET", target=self._target, headers=self._fields)) or b"") + (
            self._http.send(h11.EndOfMessage()) or b""
        )

    def receive_data(self, data: bytes) -> bytes | None:
        """Feed the relay's bytes; the bytes after the ``101`` once it is complete, else None.
        Raises UpgradeRefused for any other answer (its status line in the message)."""
        http = self._http
        http.receive_data(data)
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpgradeRefused(f"bad HTTP answer to the upgrade: {exc}") from None
        if event is h11.NEED_DATA:
            return None
        if type(event) is h11.InformationalResponse and event.status_code == 101:
            return bytes(http.trailing_data[0])
        if isinstance(event, (h11.Response, h11.InformationalResponse)):
            reason = event.reason.decode("latin-1", "replace")
            raise UpgradeRefused(f"upgrade refused: HTTP/1.1 {event.status_code} {reason}".rstrip())
        raise UpgradeRefused("relay closed the connection before answering the upgrade")
