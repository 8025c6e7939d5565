"""32-byte key types, their text forms, and X25519 helpers (sans-IO apart from the key file helper).

Every Tailscale key travels as text: a type prefix followed by the lowercase hex of the 32 raw bytes
(``mkey:``, ``nodekey:``, ``discokey:``, ``chalpub:``, ``privkey:``).  Parsing accepts upper or lower
hex, requires the exact prefix and exactly 64 hex digits; anything else raises :class:`KeyFormatError`
(a ``ValueError``).

The JSON rule: an empty string is *never* a valid key on the wire (the Go client fails to decode the
whole message).  A key that is absent is omitted (or ``None``) by the caller; :meth:`KeyType.to_json`
and :meth:`KeyType.from_json` make that easy.

Raw keys are plain ``bytes`` of length 32 throughout the code base; the :class:`KeyType` objects
(:data:`MACHINE`, :data:`NODE`, :data:`DISCO`, :data:`CHALLENGE`, :data:`PRIVATE`) carry the prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl.bindings import crypto_scalarmult_base

__all__ = [
    "KEY_LEN",
    "ZERO_KEY",
    "KeyFormatError",
    "KeyType",
    "MACHINE",
    "NODE",
    "DISCO",
    "CHALLENGE",
    "PRIVATE",
    "parse_key",
    "format_key",
    "is_zero",
    "clamp",
    "generate_private_key",
    "public_key",
    "x25519",
    "load_or_create_private_key",
    "write_private_key",
]

KEY_LEN = 32
ZERO_KEY = bytes(KEY_LEN)
_HEX = frozenset("0123456789abcdefABCDEF")


class KeyFormatError(ValueError):
    """A key's text (or raw bytes) is not acceptable."""


def _check_raw(raw: Any) -> bytes:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise KeyFormatError(f"key must be bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) != KEY_LEN:
        raise KeyFormatError(f"key must be {KEY_LEN} bytes, got {len(raw)}")
    return raw


def format_key(prefix: str, raw: bytes) -> str:
    """``prefix`` + lowercase hex of the 32 raw bytes."""
    return prefix + _check_raw(raw).hex()


def parse_key(prefix: str, text: Any) -> bytes:
    """Parse ``prefix`` + 64 hex digits (either case) into 32 raw bytes."""
    if not isinstance(text, str):
        raise KeyFormatError(f"{prefix} key must be a string, not {type(text).__name__}")
    if text == "":
        raise KeyFormatError(f"empty string is not a valid {prefix} key")
    if not text.startswith(prefix):
        shown = text[:16] + ("..." if len(text) > 16 else "")
        raise KeyFormatError(f"key {shown!r} does not start with {prefix!r}")
    digits = text[len(prefix) :]
    if len(digits) != 2 * KEY_LEN:
        raise KeyFormatError(f"{prefix} key needs {2 * KEY_LEN} hex digits, got {len(digits)}")
    if not _HEX.issuperset(digits):
        raise KeyFormatError(f"{prefix} key contains non-hex characters")
    return bytes.fromhex(digits)


def is_zero(raw: bytes | None) -> bool:
    """True for ``None``, ``b""`` and the all-zero key."""
    return not raw or bytes(raw) == ZERO_KEY


@dataclass(frozen=True, slots=True)
class KeyType:
    """One kind of key text (a prefix), with parse/format and JSON helpers."""

    prefix: str

    def format(self, raw: bytes) -> str:
        return format_key(self.prefix, raw)

    def parse(self, text: Any) -> bytes:
        return parse_key(self.prefix, text)

    def zero(self) -> str:
        """The zero key's text form (prefix + 64 ``0``), as Go encodes a zero key."""
        return self.prefix + "0" * (2 * KEY_LEN)

    def to_json(self, raw: bytes | None, *, zero_as_none: bool = True) -> str | None:
        """Value to put in outgoing JSON, or ``None`` meaning "omit the field".

        ``None`` and ``b""`` give ``None``.  The all-zero key gives ``None`` too unless
        ``zero_as_none=False`` (then its text form).  Never returns ``""``.
        """
        if raw is None or len(raw) == 0:
            return None
        if zero_as_none and bytes(raw) == ZERO_KEY:
            return None
        return self.format(raw)

    def put(self, obj: dict[str, Any], field: str, raw: bytes | None, *, zero_as_none: bool = True) -> None:
        """Set ``obj[field]`` to the key's text, or leave it out when the key is absent/zero."""
        value = self.to_json(raw, zero_as_none=zero_as_none)
        if value is not None:
            obj[field] = value

    def from_json(self, value: Any, *, zero_as_none: bool = True) -> bytes | None:
        """Read a key field from incoming JSON.

        ``None`` (absent or JSON null) → ``None``; the zero key → ``None`` unless ``zero_as_none=False``;
        ``""`` and malformed text raise :class:`KeyFormatError`, as they do for the Go decoder.
        """
        if value is None:
            return None
        raw = self.parse(value)
        if zero_as_none and raw == ZERO_KEY:
            return None
        return raw


MACHINE = KeyType("mkey:")
NODE = KeyType("nodekey:")
DISCO = KeyType("discokey:")
CHALLENGE = KeyType("chalpub:")
PRIVATE = KeyType("privkey:")


# --- X25519 -------------------------------------------------------------------------------------


def clamp(raw: bytes) -> bytes:
    """X25519 clamping of a private scalar (as Tailscale stores private keys)."""
    b = bytearray(_check_raw(raw))
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key() -> bytes:
    """A fresh, clamped X25519 private key (32 raw bytes)."""
    return clamp(os.urandom(KEY_LEN))


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of ``private_key``. libsodium's base-point multiplication (it clamps
    as RFC 7748 says) takes half the time of loading the key into OpenSSL, and the server derives
    one of these for every connection's early payload."""
    return crypto_scalarmult_base(_check_raw(private_key))


def new_private_key_object() -> X25519PrivateKey:
    """A fresh private key, loaded for exchanges (cheaper than generating bytes and loading them)."""
    return X25519PrivateKey.generate()


def private_key_object(private_key: bytes) -> X25519PrivateKey:
    """``private_key`` loaded for several exchanges: loading derives the public key, a scalar
    multiplication as costly as an exchange, so a handshake loads each of its keys once."""
    return X25519PrivateKey.from_private_bytes(_check_raw(private_key))


def exchange(private_key: X25519PrivateKey, peer_public_key: bytes) -> bytes:
    """X25519 with a loaded key; raises ``ValueError`` for an all-zero result (low-order point)."""
    return private_key.exchange(X25519PublicKey.from_public_bytes(_check_raw(peer_public_key)))


def x25519(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519(private, public); raises ``ValueError`` for an all-zero result (low-order point)."""
    return exchange(private_key_object(private_key), peer_public_key)


# --- key file -----------------------------------------------------------------------------------


def write_private_key(path: str | os.PathLike[str], private_key: bytes) -> None:
    """Create ``path`` (mode 0600, must not exist) holding ``privkey:<hex>\\n``."""
    text = (PRIVATE.format(private_key) + "\n").encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_private_key(path: str | os.PathLike[str]) -> bytes:
    """Read a ``privkey:<hex>`` file, or create one (mode 0600) with a fresh key on first use."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        key = generate_private_key()
        try:
            write_private_key(path, key)
        except FileExistsError:  # lost a race with another process: use theirs
            return load_or_create_private_key(path)
        return key
    except UnicodeDecodeError as exc:
        raise KeyFormatError(f"{os.fspath(path)}: not a privkey: text file") from exc
    try:
        return PRIVATE.parse(text.strip())
    except KeyFormatError as exc:
        raise KeyFormatError(f"{os.fspath(path)}: {exc}") from None
