"""Map-stream framing for ``/machine/map`` response bodies (spec §3.2.2). Sans-IO.

Each message is ``u32 little-endian length N`` + ``N`` bytes.  With ``compress == "zstd"`` (what the
MapRequest asked for; Tailscale's clients always do) the ``N`` bytes are a zstd frame of the JSON
``MapResponse``; otherwise they are the plain JSON. The ``N`` bytes may be several zstd frames one
after another (:func:`frame_compressed`): their contents, concatenated, are the message. Tailscale's
clients decode every frame of a message (``zstd.Decoder.DecodeAll``), and so does ours.

* :func:`encode_frame` / :func:`encode_message` — server side; :func:`compress_part` and
  :func:`frame_compressed` build one message from separately compressed pieces.
* :func:`keepalive` — the (cached, byte-stable) keepalive message.
* :class:`MapStreamDecoder` — incremental decoder for our client: ``receive_data(bytes)`` returns the
  JSON bytes of every completed message.  Frames larger than ``max_frame_size`` (16 MiB by default,
  checked on the length prefix and on the decompressed size) raise :class:`FrameTooLarge`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import zstandard

from .noise import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ZSTD",
    "MAX_FRAME_SIZE",
    "KEEPALIVE_JSON",
    "FrameTooLarge",
    "encode_frame",
    "compress_part",
    "frame_compressed",
    "decompress",
    "encode_message",
    "keepalive",
    "MapStreamDecoder",
    "LocalProtocolError",
    "RemoteProtocolError",
]

ZSTD = "zstd"
MAX_FRAME_SIZE = 16 << 20
KEEPALIVE_JSON = b'{"KeepAlive":true}'
_ZSTD_LEVEL = 1  # "fastest", like the Go servers
_LEN = struct.Struct("<I")


class FrameTooLarge(RemoteProtocolError):
    """A map message exceeds the decoder's size bound."""


def _check_compress(compress: str | None) -> bool:
    if compress in (None, ""):
        return False
    if compress == ZSTD:
        return True
    raise LocalProtocolError(f"unsupported map compression {compress!r}")


def _compressor() -> zstandard.ZstdCompressor:
    # ZstdCompressor objects must not be shared between threads; one per call is cheap enough at
    # level 1 and keeps this module free of hidden shared state.
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True)


def encode_frame(payload: bytes, compress: str | None) -> bytes:
    """Frame already-serialised JSON bytes (zstd-compressed when ``compress == "zstd"``)."""
    body = _compressor().compress(payload) if _check_compress(compress) else bytes(payload)
    if len(body) > 0xFFFFFFFF:
        raise LocalProtocolError("map message too large for a u32 length")
    return _LEN.pack(len(body)) + body


def compress_part(payload: bytes) -> bytes:
    """One zstd frame of part of a message (see :func:`frame_compressed`)."""
    return _compressor().compress(payload)


def frame_compressed(parts: list[bytes]) -> bytes:
    """Frame one message made of zstd frames (:func:`compress_part`), in order."""
    size = sum(map(len, parts))
    if size > 0xFFFFFFFF:
        raise LocalProtocolError("map message too large for a u32 length")
    return b"".join([_LEN.pack(size), *parts])  # one copy of a first map's megabyte, not two


def encode_message(message: Any, compress: str | None) -> bytes:
    """Serialise ``message`` (a JSON-able object) compactly and frame it."""
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return encode_frame(payload, compress)


_KEEPALIVES: dict[bool, bytes] = {}


def keepalive(compress: str | None) -> bytes:
    """The framed ``{"KeepAlive":true}`` message; identical bytes every time (clients may cache them)."""
    z = _check_compress(compress)
    cached = _KEEPALIVES.get(z)
    if cached is None:
        cached = _KEEPALIVES[z] = encode_frame(KEEPALIVE_JSON, ZSTD if z else None)
    return cached


class MapStreamDecoder:
    """Incremental decoder of a map response body."""

    def __init__(self, compress: str | None, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._zstd = _check_compress(compress)
        self._max = max_frame_size
        self._buf = bytearray()
        self._dctx = zstandard.ZstdDecompressor() if self._zstd else None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message waiting for more data (non-zero at EOF = truncated stream)."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed body bytes; return the JSON bytes of every message they complete."""
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > self._max:
                raise FrameTooLarge(f"map message of {n} bytes exceeds the {self._max}-byte limit")
            if len(buf) - pos - 4 < n:
                break
            frame = bytes(buf[pos + 4 : pos + 4 + n])
            pos += 4 + n
            out.append(self._decompress(frame) if self._zstd else frame)
        del buf[:pos]
        return out

    def receive_messages(self, data: bytes) -> list[Any]:
        """Like :meth:`receive_data` but returns parsed JSON values."""
        out = []
        for raw in self.receive_data(data):
            try:
                out.append(json.loads(raw))
            except (ValueError, UnicodeDecodeError) as exc:
                raise RemoteProtocolError(f"map message is not valid JSON: {exc}") from None
        return out

    def _decompress(self, frame: bytes) -> bytes:
        assert self._dctx is not None
        return _decompress(self._dctx, frame, self._max)


def decompress(body: bytes, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """One zstd map message's JSON (every frame of it), at most `max_size` bytes."""
    return _decompress(zstandard.ZstdDecompressor(), body, max_size)


#: input fed at a time to a frame that does not state its size: at most a few maximal blocks of
#: output each, so the size bound is checked before the output runs far past it
_UNSIZED_FEED = 256


def _decompress(dctx: zstandard.ZstdDecompressor, body: bytes, limit: int) -> bytes:
    try:
        size = zstandard.get_frame_parameters(body).content_size
        if size != zstandard.CONTENTSIZE_UNKNOWN:
            if size > limit:
                raise FrameTooLarge(f"decompressed map message ({size} bytes) exceeds the {limit}-byte limit")
            try:
                return dctx.decompress(body, allow_extra_data=False)  # one frame: every delta
            except zstandard.ZstdError:
                pass  # several frames (a first map in pieces), or a bad one: the loop tells which
        out: list[bytes] = []
        total = 0
        rest = body
        while rest:
            size = zstandard.get_frame_parameters(rest).content_size
            sized = size != zstandard.CONTENTSIZE_UNKNOWN
            if sized and total + size > limit:
                raise FrameTooLarge(f"decompressed map message ({total + size}+ bytes) exceeds the {limit}-byte limit")
            dobj = dctx.decompressobj()
            feed = len(rest) if sized else _UNSIZED_FEED  # a stated size is checked by zstd itself
            pos = 0
            while not dobj.eof and pos < len(rest):
                chunk = dobj.decompress(rest[pos:pos + feed])
                pos += feed
                total += len(chunk)
                if total > limit:
                    raise FrameTooLarge(f"decompressed map message exceeds the {limit}-byte limit")
                out.append(chunk)
            if not dobj.eof:
                raise RemoteProtocolError("bad zstd map message: truncated frame")
            rest = dobj.unused_data + rest[pos:]
        return b"".join(out)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"bad zstd map message: {exc}") from None
