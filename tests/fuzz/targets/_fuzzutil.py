"""Helpers shared by the fuzz harnesses (no trioscale imports here)."""

from __future__ import annotations

from collections.abc import Iterator


def chunks(data: bytes) -> Iterator[bytes]:
    """Split `data` the way a socket might deliver it: the first byte picks the read size (1..256),
    so the fuzzer explores record/frame boundaries falling anywhere."""
    if not data:
        return
    size = data[0] + 1
    rest = data[1:]
    for i in range(0, len(rest), size):
        yield rest[i : i + size]


def pieces(data: bytes, count: int) -> list[bytes]:
    """Cut `data` into up to `count` fields at 0xFF 0x00 separators (for structured inputs)."""
    return data.split(b"\xff\x00", count - 1)


def u16(data: bytes, pos: int = 0) -> int:
    return int.from_bytes(data[pos : pos + 2].ljust(2, b"\x00"), "big")


def size_byte(data: bytes) -> bytes:
    """The read-size byte of `data` for `chunks`, when the harness builds the rest of the stream."""
    return data[:1] or b"\x00"
