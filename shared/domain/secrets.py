"""Pre-auth keys and API keys: `tskey-auth-<prefix>-<secret>` and `tskey-api-<prefix>-<secret>`.

The prefix (12 url-safe characters, no dash) identifies the key and is stored in clear; the secret
(43 url-safe characters, 32 random bytes) is only ever stored as its SHA-256 (`hash_secret`) and
compared in constant time (`verify`). The full key is shown once, at creation.

Keys brought over from Headscale (`trioscale import headscale`) keep working as their holders wrote
them: `hskey-auth-<prefix>-<secret>`, `hskey-api-<prefix>-<secret>` (a 12-character url-safe
prefix, which may itself hold dashes, so the key is cut at fixed places), the older API-key
form `<7-character prefix>.<secret>`, and the pre-auth keys of Headscale before v0.28 (48 hex
digits, which it stored in clear; brought over, they are cut into a prefix and a secret like ours
and stored as the prefix and the secret's SHA-256). Headscale stored bcrypt hashes of those secrets; `verify`
recognises such a hash by its `$2…$` form and checks it with bcrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import NamedTuple

import bcrypt

__all__ = [
    "KIND_AUTH",
    "KIND_API",
    "KIND_CLIENT",
    "KeyFormatError",
    "NewKey",
    "generate_key",
    "generate_preauth_key",
    "generate_api_key",
    "hash_secret",
    "split_key",
    "prefix_of",
    "verify",
    "mask",
    "KEY_PATTERN",
]

KIND_AUTH = "auth"
KIND_API = "api"
#: an OAuth client's secret (`tskey-client-<client id>-<secret>`, Tailscale's form; API v2)
KIND_CLIENT = "client"
_KINDS = (KIND_AUTH, KIND_API, KIND_CLIENT)

PREFIX_LEN = 12
SECRET_BYTES = 32
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9]{%d}$" % PREFIX_LEN)
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43,}$")

#: matches anything that looks like a key (for log masking); group 1 is the part safe to show
KEY_PATTERN = re.compile(
    r"(tskey-(?:auth|api|client)-[A-Za-z0-9]*|hskey-(?:auth|api)-[A-Za-z0-9_-]{0,12})(-[A-Za-z0-9_-]+)?"
)

#: Headscale's key forms (v0.23 and later), cut at fixed places since its prefix may hold dashes
_HS_PREFIX_LEN = 12
_HS_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{%d}-([A-Za-z0-9_-]{32,})$" % _HS_PREFIX_LEN)
#: Headscale's API keys before v0.23: `<prefix>.<secret>`
_HS_LEGACY_API_RE = re.compile(r"^([A-Za-z0-9_-]{7})\.([A-Za-z0-9_-]{16,})$")
#: Headscale's pre-auth keys before v0.28: 48 hex digits, cut here into a prefix and a secret
_HS_LEGACY_AUTH_RE = re.compile(r"^[0-9a-f]{48}$")
#: bcrypt's modular crypt form: `$2a$`, `$2b$` or `$2y$`, cost, 53 characters of salt and hash
_BCRYPT_RE = re.compile(rb"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


class KeyFormatError(ValueError):
    """The text is not a well-formed key; the message says what is wrong (never echoes the secret)."""


class NewKey(NamedTuple):
    kind: str
    prefix: str
    secret: str
    key_hash: bytes

    @property
    def text(self) -> str:
        return f"tskey-{self.kind}-{self.prefix}-{self.secret}"


def _new_prefix() -> str:
    # no '-' or '_' so the key splits unambiguously at the dashes
    return "".join(secrets.choice(_ALPHABET) for _ in range(PREFIX_LEN))


def _new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def generate_key(kind: str) -> NewKey:
    if kind not in _KINDS:
        raise ValueError(f"unknown key kind {kind!r}")
    secret = _new_secret()
    return NewKey(kind, _new_prefix(), secret, hash_secret(secret))


def generate_preauth_key() -> NewKey:
    return generate_key(KIND_AUTH)


def generate_api_key() -> NewKey:
    return generate_key(KIND_API)


def hash_secret(secret: str | bytes) -> bytes:
    """SHA-256 of the secret half (the secret has 256 bits of entropy, so no salt or stretching)."""
    data = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hashlib.sha256(data).digest()


def split_key(text: str) -> tuple[str, str, str]:
    """'tskey-<kind>-<prefix>-<secret>' -> (kind, prefix, secret). KeyFormatError if malformed."""
    if not isinstance(text, str):
        raise KeyFormatError("a key must be text")
    text = text.strip()
    if text.startswith("hskey-"):
        return _split_headscale_key(text)
    legacy = _HS_LEGACY_API_RE.match(text)
    if legacy:
        return KIND_API, legacy.group(1), legacy.group(2)
    if _HS_LEGACY_AUTH_RE.match(text):
        return KIND_AUTH, text[:PREFIX_LEN], text[PREFIX_LEN:]
    if not text.startswith("tskey-"):
        raise KeyFormatError("not a trioscale key (expected tskey-auth-… or tskey-api-…)")
    parts = text.split("-", 3)
    if len(parts) != 4:
        raise KeyFormatError("malformed key (expected tskey-<kind>-<prefix>-<secret>)")
    _, kind, prefix, secret = parts
    if kind not in _KINDS:
        raise KeyFormatError(f"unknown key kind {kind!r} (expected auth, api or client)")
    if not _PREFIX_RE.match(prefix):
        raise KeyFormatError(f"malformed key prefix (expected {PREFIX_LEN} letters or digits)")
    if not _SECRET_RE.match(secret):
        raise KeyFormatError("malformed key secret")
    return kind, prefix, secret


def _split_headscale_key(text: str) -> tuple[str, str, str]:
    kind, _, rest = text[len("hskey-"):].partition("-")
    if kind not in _KINDS:
        raise KeyFormatError(f"unknown key kind {kind!r} (expected auth or api)")
    m = _HS_SECRET_RE.match(rest)
    if not m:
        raise KeyFormatError("malformed key (expected hskey-<kind>-<12-character prefix>-<secret>)")
    return kind, rest[:_HS_PREFIX_LEN], m.group(1)


def prefix_of(text: str, kind: str) -> str:
    """The prefix named by `text`: a prefix as it is, or a whole key of `kind` (its secret is
    dropped, so it goes no further: not into a URL, a log line or an error). KeyFormatError for a
    malformed key or one of another kind."""
    text = text.strip()
    if not text.startswith(("tskey-", "hskey-")) and not _HS_LEGACY_API_RE.match(text) \
            and not _HS_LEGACY_AUTH_RE.match(text):
        return text
    found, prefix, _ = split_key(text)
    if found != kind:
        raise KeyFormatError(f"expected a tskey-{kind}-… key, not a tskey-{found}-… one")
    return prefix


def verify(secret: str | bytes, key_hash: bytes) -> bool:
    """Constant-time check that `secret` hashes to `key_hash` (SHA-256, or bcrypt for a key
    brought over from Headscale)."""
    try:
        stored = bytes(key_hash)
        if _BCRYPT_RE.match(stored):
            return _bcrypt_matches(secret, stored)
        return hmac.compare_digest(hash_secret(secret), stored)
    except (TypeError, ValueError):
        return False


#: (SHA-256 of a secret, bcrypt hash) pairs bcrypt has already matched: a bcrypt check costs tens
#: of milliseconds of CPU, and an API key is checked on every admin request, in the coordinator's
#: process. Only matches are kept (a wrong secret always pays), and a revoked key is refused before
#: its hash is looked at, so the cache never lets anything in that the store would not.
_BCRYPT_MATCHED: dict[tuple[bytes, bytes], None] = {}
_BCRYPT_MATCHED_MAX = 256


def _bcrypt_matches(secret: str | bytes, stored: bytes) -> bool:
    data = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    memo = (hashlib.sha256(data).digest(), stored)
    if memo in _BCRYPT_MATCHED:
        return True
    if not bcrypt.checkpw(data, stored):
        return False
    if len(_BCRYPT_MATCHED) >= _BCRYPT_MATCHED_MAX:
        _BCRYPT_MATCHED.pop(next(iter(_BCRYPT_MATCHED)))
    _BCRYPT_MATCHED[memo] = None
    return True


def mask(text: str) -> str:
    """Replace the secret part of every key-looking substring with '****'."""
    return KEY_PATTERN.sub(lambda m: m.group(1) + ("-****" if m.group(2) else ""), text)
