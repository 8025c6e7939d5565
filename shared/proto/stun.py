"""STUN binding requests and responses (RFC 5389 subset Tailscale uses), sans-IO.

The server side accepts exactly what Tailscale clients send and what derper answers: a Binding
Request whose attributes parse over the whole datagram, with a SOFTWARE attribute equal to
``tailnode`` and a FINGERPRINT as the last attribute holding the right CRC. Everything else is
ignored: :func:`parse_binding_request` returns ``None`` and never raises.

The response is a Binding Success Response with one XOR-MAPPED-ADDRESS; an IPv4-mapped IPv6
source (from a dual-stack socket) is reported as IPv4 (family 0x01).

The client-side helpers (:func:`binding_request`, :func:`parse_binding_response`) exist for tests
and tools.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "MAGIC_COOKIE",
    "HEADER_LEN",
    "BINDING_REQUEST",
    "BINDING_SUCCESS",
    "ATTR_MAPPED_ADDRESS",
    "ATTR_XOR_MAPPED_ADDRESS",
    "ATTR_XOR_MAPPED_ADDRESS_ALT",
    "ATTR_SOFTWARE",
    "ATTR_FINGERPRINT",
    "SOFTWARE",
    "BindingRequest",
    "BindingResponse",
    "parse_binding_request",
    "binding_response",
    "binding_request",
    "parse_binding_response",
    "fingerprint",
    "new_txid",
]

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LEN = 20
TXID_LEN = 12
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_XOR_MAPPED_ADDRESS_ALT = 0x8020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
SOFTWARE = b"tailnode"

_HDR = struct.Struct(">HHI12s")
_ATTR = struct.Struct(">HH")


@dataclass(frozen=True, slots=True)
class BindingRequest:
    txid: bytes


@dataclass(frozen=True, slots=True)
class BindingResponse:
    txid: bytes
    ip: str
    port: int


def fingerprint(data: bytes) -> int:
    return (zlib.crc32(data) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def new_txid() -> bytes:
    return os.urandom(TXID_LEN)


def _attributes(body: bytes) -> list[tuple[int, bytes]] | None:
    """TLVs over the whole of `body` (4-byte padded), or None if they do not parse exactly."""
    attrs = []
    off = 0
    end = len(body)
    while off < end:
        if end - off < 4:
            return None
        t, n = _ATTR.unpack_from(body, off)
        off += 4
        if n > end - off:
            return None
        attrs.append((t, body[off : off + n]))
        off += (n + 3) & ~3
        if off > end:
            return None
    return attrs


def parse_binding_request(data: bytes) -> BindingRequest | None:
    """A Tailscale binding request, or None for anything else (never raises)."""
    try:
        if len(data) < HEADER_LEN + 8 or data[0] & 0xC0 or data[4:8] != _COOKIE_BYTES:
            return None
        if data[0] != 0x00 or data[1] != 0x01:
            return None
        attrs = _attributes(data[HEADER_LEN:])
        if not attrs:
            return None
        last_type, last_value = attrs[-1]
        if last_type != ATTR_FINGERPRINT or len(last_value) != 4:
            return None
        if not any(t == ATTR_SOFTWARE and v == SOFTWARE for t, v in attrs):
            return None
        if int.from_bytes(last_value, "big") != fingerprint(data[:-8]):
            return None
        return BindingRequest(bytes(data[8:HEADER_LEN]))
    except Exception:  # defensive: a hostile datagram must never reach the caller as an error
        return None


def _xor_address(ip: str, port: int, txid: bytes) -> bytes:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    packed = addr.packed
    mask = _COOKIE_BYTES + txid
    xored = bytes(a ^ b for a, b in zip(packed, mask))
    family = 0x01 if addr.version == 4 else 0x02
    return bytes([0, family]) + struct.pack(">H", port ^ (MAGIC_COOKIE >> 16)) + xored


def binding_response(txid: bytes, ip: str, port: int) -> bytes:
    """Binding Success Response telling the client it was seen at ``ip``:``port``."""
    if len(txid) != TXID_LEN:
        raise ValueError(f"transaction id must be {TXID_LEN} bytes")
    value = _xor_address(ip, port, txid)
    attr = _ATTR.pack(ATTR_XOR_MAPPED_ADDRESS, len(value)) + value
    return _HDR.pack(BINDING_SUCCESS, len(attr), MAGIC_COOKIE, txid) + attr


def binding_request(txid: bytes | None = None) -> bytes:
    """The 40-byte request a Tailscale client sends (SOFTWARE tailnode + FINGERPRINT)."""
    txid = new_txid() if txid is None else txid
    if len(txid) != TXID_LEN:
        raise ValueError(f"transaction id must be {TXID_LEN} bytes")
    software = _ATTR.pack(ATTR_SOFTWARE, len(SOFTWARE)) + SOFTWARE
    head = _HDR.pack(BINDING_REQUEST, len(software) + 8, MAGIC_COOKIE, txid) + software
    return head + _ATTR.pack(ATTR_FINGERPRINT, 4) + fingerprint(head).to_bytes(4, "big")


def parse_binding_response(data: bytes) -> BindingResponse | None:
    """The mapped address from a Binding Success Response, as a Tailscale client reads it."""
    try:
        if len(data) < HEADER_LEN or data[0:2] != b"\x01\x01" or data[4:8] != _COOKIE_BYTES:
            return None
        length = int.from_bytes(data[2:4], "big")
        if length > len(data) - HEADER_LEN:
            return None
        txid = bytes(data[8:HEADER_LEN])
        attrs = _attributes(data[HEADER_LEN : HEADER_LEN + length])
        if attrs is None:
            return None
        found: dict[int, bytes] = {}
        for t, v in attrs:
            found.setdefault(t, v)
        for t in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_ALT, ATTR_MAPPED_ADDRESS):
            v = found.get(t)
            if v is None or len(v) < 4:
                continue
            family = v[1]
            want = 4 if family == 1 else 16 if family == 2 else 0
            if not want or len(v) < 4 + want:
                return None
            port = int.from_bytes(v[2:4], "big")
            raw = v[4 : 4 + want]
            if t != ATTR_MAPPED_ADDRESS:
                port ^= MAGIC_COOKIE >> 16
                raw = bytes(a ^ b for a, b in zip(raw, _COOKIE_BYTES + txid))
            ip = ipaddress.ip_address(raw)
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            return BindingResponse(txid, str(ip), port)
        return None
    except Exception:
        return None
