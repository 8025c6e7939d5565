"""Key text forms, JSON helpers, X25519 helpers and the private key file."""

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioscale.shared.proto import keys

KINDS = [keys.MACHINE, keys.NODE, keys.DISCO, keys.CHALLENGE, keys.PRIVATE]


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [(keys.MACHINE, "mkey:"), (keys.NODE, "nodekey:"), (keys.DISCO, "discokey:"),
     (keys.CHALLENGE, "chalpub:"), (keys.PRIVATE, "privkey:")],
)
def test_prefixes(kind, prefix):
    raw = bytes(range(32))
    text = kind.format(raw)
    assert text == prefix + "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    assert kind.parse(text) == raw
    assert kind.zero() == prefix + "0" * 64


@given(st.binary(min_size=32, max_size=32), st.sampled_from(KINDS))
def test_round_trip(raw, kind):
    text = kind.format(raw)
    assert text == text.lower()
    assert kind.parse(text) == raw
    assert kind.parse(kind.prefix + text[len(kind.prefix):].upper()) == raw


@pytest.mark.parametrize(
    "text",
    ["", "nodekey:", "mkey:" + "00" * 32, "nodekey:" + "0" * 63, "nodekey:" + "0" * 65,
     "nodekey:" + "g" * 64, "NODEKEY:" + "0" * 64, " nodekey:" + "0" * 64, "nodekey:" + "0" * 62 + " 0"],
)
def test_parse_rejects(text):
    with pytest.raises(keys.KeyFormatError):
        keys.NODE.parse(text)


def test_parse_rejects_non_string():
    with pytest.raises(keys.KeyFormatError, match="string"):
        keys.NODE.parse(None)
    with pytest.raises(keys.KeyFormatError, match="string"):
        keys.NODE.parse(b"nodekey:" + b"0" * 64)


@given(st.text(max_size=80))
def test_parse_garbage_only_keyformaterror(text):
    try:
        raw = keys.DISCO.parse(text)
    except keys.KeyFormatError:
        return
    assert len(raw) == 32


def test_format_rejects_wrong_length():
    with pytest.raises(keys.KeyFormatError, match="32 bytes"):
        keys.NODE.format(b"\x01" * 31)


def test_json_helpers_never_emit_empty_string():
    raw = b"\x07" * 32
    assert keys.NODE.to_json(None) is None
    assert keys.NODE.to_json(b"") is None
    assert keys.NODE.to_json(keys.ZERO_KEY) is None
    assert keys.NODE.to_json(keys.ZERO_KEY, zero_as_none=False) == keys.NODE.zero()
    assert keys.NODE.to_json(raw) == keys.NODE.format(raw)
    obj = {}
    keys.NODE.put(obj, "OldNodeKey", None)
    keys.NODE.put(obj, "Zero", keys.ZERO_KEY)
    keys.NODE.put(obj, "NodeKey", raw)
    assert obj == {"NodeKey": keys.NODE.format(raw)}


def test_from_json():
    raw = b"\x09" * 32
    assert keys.NODE.from_json(None) is None
    assert keys.NODE.from_json(keys.NODE.zero()) is None
    assert keys.NODE.from_json(keys.NODE.zero(), zero_as_none=False) == keys.ZERO_KEY
    assert keys.NODE.from_json(keys.NODE.format(raw)) == raw
    with pytest.raises(keys.KeyFormatError, match="empty"):
        keys.NODE.from_json("")


def test_is_zero():
    assert keys.is_zero(None) and keys.is_zero(b"") and keys.is_zero(keys.ZERO_KEY)
    assert not keys.is_zero(b"\x01" + bytes(31))


def test_x25519_helpers():
    a, b = keys.generate_private_key(), keys.generate_private_key()
    assert a != b
    assert keys.clamp(a) == a  # generated keys are clamped
    assert keys.x25519(a, keys.public_key(b)) == keys.x25519(b, keys.public_key(a))
    with pytest.raises(ValueError):
        keys.x25519(a, keys.ZERO_KEY)  # low-order point


def test_x25519_rfc7748_vector():
    # RFC 7748 section 6.1
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert keys.public_key(alice).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert keys.x25519(alice, bob_pub).hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


@given(st.binary(min_size=32, max_size=32))
def test_public_key_matches_openssl_for_any_scalar(raw):
    # public_key goes through libsodium, exchanges through OpenSSL: both must clamp the same way,
    # or a handshake's early-payload key and its exchanges would disagree
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    expected = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    assert keys.public_key(raw) == expected
    assert keys.public_key(keys.clamp(raw)) == expected


def test_new_private_key_object_exchanges_like_its_bytes():
    loaded = keys.new_private_key_object()
    raw = loaded.private_bytes_raw()
    peer = keys.generate_private_key()
    assert keys.exchange(loaded, keys.public_key(peer)) == keys.x25519(peer, keys.public_key(raw))


def test_clamp():
    assert keys.clamp(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert keys.clamp(bytes(32)) == bytes(31) + b"\x40"


def test_load_or_create_private_key(tmp_path):
    path = tmp_path / "noise.key"
    k1 = keys.load_or_create_private_key(path)
    assert len(k1) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == keys.PRIVATE.format(k1) + "\n"
    assert keys.load_or_create_private_key(path) == k1


def test_load_private_key_bad_file(tmp_path):
    path = tmp_path / "bad.key"
    path.write_text("mkey:" + "00" * 32)
    with pytest.raises(keys.KeyFormatError, match="bad.key"):
        keys.load_or_create_private_key(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(keys.KeyFormatError):
        keys.load_or_create_private_key(path)
