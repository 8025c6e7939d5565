"""DERP v2 frames, sans-IO: constants, the events, encoding, decoding, and the stream splitter.

A DERP stream is a sequence of frames: one type byte, a 4-byte big-endian payload length, the
payload. The per-packet path is kept short: `frame_header` and `encode_recv_packet_parts` give the
pieces of a frame so a writer can join many frames into one buffer, and `split_send_packet` /
`split_forward_packet` are the one size check of the relay's two packet frames.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, Union

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
    "looks_like_disco",
    "BOX_OVERHEAD",
    "MAX_PING_LEN",
    "PING_LEN",
    "DISCO_MIN_LEN",
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
