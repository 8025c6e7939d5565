"""The two ClientHello fields a TLS listener must see before it picks a certificate: the server
name (SNI) and the offered ALPN protocols. TLS-ALPN-01 (RFC 8737) validators offer only
``acme-tls/1`` and must get the challenge certificate; Python's ``ssl`` chooses the certificate
before it learns ALPN, so the listener peeks at the first record and decides itself.

Sans-IO: ``parse_client_hello(data)`` takes the bytes received so far and returns a
:class:`ClientHello`, ``None`` while more bytes are needed, or raises :class:`NotClientHello`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientHello", "NotClientHello", "parse_client_hello", "MAX_HELLO"]

#: a ClientHello bigger than this (many extensions, post-quantum key shares) is not worth waiting for
MAX_HELLO = 16384

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class NotClientHello(ValueError):
    """The bytes are not the start of a TLS ClientHello this parser can read."""


@dataclass(frozen=True)
class ClientHello:
    server_name: str  #: "" when the client sent none
    alpn: tuple[str, ...]


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise NotClientHello("truncated field")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> "_Reader":
        n = self.uint(length_bytes)
        sub = _Reader(self.data, self.pos, self.pos + n)
        if sub.end > self.end:
            raise NotClientHello("vector past its container")
        self.pos += n
        return sub

    def done(self) -> bool:
        return self.pos >= self.end


def _handshake_bytes(data: bytes) -> bytes | None:
    """The handshake message bytes carried by the leading records (a hello may span records)."""
    out = bytearray()
    pos = 0
    need: int | None = None
    while need is None or len(out) < need:
        if len(data) < pos + 5:
            return None
        if data[pos] != _HANDSHAKE or data[pos + 1] != 3:
            raise NotClientHello("not a TLS handshake record")
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if length == 0 or length > 16384 + 256:
            raise NotClientHello("bad record length")
        if len(data) < pos + 5 + length:
            return None
        out += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if need is None and len(out) >= 4:
            if out[0] != _CLIENT_HELLO:
                raise NotClientHello("first handshake message is not a ClientHello")
            need = 4 + int.from_bytes(out[1:4], "big")
            if need > MAX_HELLO:
                raise NotClientHello("ClientHello too large")
    return bytes(out[:need])


def parse_client_hello(data: bytes) -> ClientHello | None:
    if len(data) > MAX_HELLO + 5 * 4 + 1024:
        data = data[: MAX_HELLO + 5 * 4 + 1024]
    msg = _handshake_bytes(data)
    if msg is None:
        return None
    r = _Reader(msg, 4, len(msg))
    r.take(2 + 32)  # legacy_version, random
    r.vector(1)  # session id
    r.vector(2)  # cipher suites
    r.vector(1)  # compression methods
    server_name, alpn = "", ()
    if r.done():
        return ClientHello(server_name, alpn)
    extensions = r.vector(2)
    while not extensions.done():
        kind = extensions.uint(2)
        body = extensions.vector(2)
        if kind == _EXT_SERVER_NAME:
            names = body.vector(2)
            while not names.done():
                name_type = names.uint(1)
                name = names.vector(2)
                if name_type == 0:
                    server_name = name.take(name.end - name.pos).decode("ascii", "replace").lower().rstrip(".")
        elif kind == _EXT_ALPN:
            protocols = body.vector(2)
            offered = []
            while not protocols.done():
                p = protocols.vector(1)
                offered.append(p.take(p.end - p.pos).decode("ascii", "replace"))
            alpn = tuple(offered)
    return ClientHello(server_name, alpn)
