"""TS2021 Noise: known-answer vectors, an independent re-derivation, transport records, early payload."""

import hashlib
import hmac
import json
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from trioscale.shared.proto import keys, noise

# Fixed keys for the known-answer vector (clamped byte ranges).
S_PRIV = keys.clamp(bytes(range(1, 33)))  # server static
M_PRIV = keys.clamp(bytes(range(33, 65)))  # client machine static
CE_PRIV = keys.clamp(bytes(range(65, 97)))  # client ephemeral
SE_PRIV = keys.clamp(bytes(range(97, 129)))  # server ephemeral

VECTOR = {
    "server_pub": "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c",
    "machine_pub": "5869aff450549732cbaaed5e5df9b30a6da31cb0e5742bad5ad4a1a768f1a67b",
    "initiation": (
        "008201006064b101b1d0be5a8704bd078f9895001fc03e8e9f9522f188dd128d9846d484660806c371c2f5b89e49"
        "d5c606b01d6586a9712bf580bcfb3a6c2d1d66cc5a9591408e5c05c1173ab99f3225f4f6434f00549771054b9963"
        "b6bfc7e2a99edb4c06"
    ),
    "response": "020030244fe3b963e899dd295baffce248d3530f3a9a7479ba063002680ebfe7adad4957324e83f722058835b2229bbe82a1d8",
    "hash": "c4c5e2465822989c3fab9cf54114726f203239ab2126f7951d298e9019f3c9f2",
    "c2s_hello_0": "040015b31929cb281c149e97e1e8212a4dd90a76c1a14985",
    "c2s_hello_1": "040015f808261f8450735b42cdf983253ac44bf304119bad",
    "s2c_world_0": "0400151cfc676e390d6c70ea557141d6cacc400e15cad190",
}


def pair(version=130):
    init = noise.Initiator(keys.public_key(S_PRIV), M_PRIV, version, ephemeral_private_key=CE_PRIV)
    server = noise.respond(init.initiation, S_PRIV, ephemeral_private_key=SE_PRIV)
    client = init.receive_response(server.response)
    return init, server, client


def random_pair(version=130):
    s = keys.generate_private_key()
    init = noise.Initiator(keys.public_key(s), keys.generate_private_key(), version)
    server = noise.respond(init.initiation, s)
    return server.connection, init.receive_response(server.response).connection


def test_known_answer_vector():
    init, server, client = pair()
    assert keys.public_key(S_PRIV).hex() == VECTOR["server_pub"]
    assert init.initiation.hex() == VECTOR["initiation"]
    assert server.response.hex() == VECTOR["response"]
    assert server.machine_key.hex() == VECTOR["machine_pub"]
    assert server.version == 130
    assert server.handshake_hash.hex() == client.handshake_hash.hex() == VECTOR["hash"]
    assert client.connection.encrypt(b"hello").hex() == VECTOR["c2s_hello_0"]
    assert client.connection.encrypt(b"hello").hex() == VECTOR["c2s_hello_1"]
    assert server.connection.encrypt(b"world").hex() == VECTOR["s2c_world_0"]


def test_vector_layout_matches_spec():
    init = bytes.fromhex(VECTOR["initiation"])
    resp = bytes.fromhex(VECTOR["response"])
    # initiation: u16 BE version, type 1, u16 BE length 96, then e(32) | enc s (48) | tag (16)
    assert len(init) == 101 and init[:5] == b"\x00\x82\x01\x00\x60"
    assert init[5:37] == keys.public_key(CE_PRIV)
    # response: type 2, u16 BE 48, E(32) | tag(16)
    assert len(resp) == 51 and resp[:3] == b"\x02\x00\x30"
    assert resp[3:35] == keys.public_key(SE_PRIV)
    # record: type 4, u16 BE ciphertext length (5 + 16 tag)
    assert bytes.fromhex(VECTOR["c2s_hello_0"])[:3] == b"\x04\x00\x15"


# --- independent re-derivation (straight from the spec's text, using RFC 5869 HKDF) ---------------


def _b2s(data):
    return hashlib.blake2s(data).digest()


def _hkdf64(ck, ikm):
    # Go: hkdf.New(blake2s.New256, ikm, salt=ck, info=nil), 64 bytes read.
    out = HKDF(algorithm=hashes.BLAKE2s(32), length=64, salt=ck, info=None).derive(ikm)
    return out[:32], out[32:]


def _dh(priv, pub):
    return keys.x25519(priv, pub)


def test_independent_rederivation():
    init = bytes.fromhex(VECTOR["initiation"])
    resp = bytes.fromhex(VECTOR["response"])
    s_pub = keys.public_key(S_PRIV)
    h = _b2s(b"Noise_IK_25519_ChaChaPoly_BLAKE2s")
    ck = h
    h = _b2s(h + b"Tailscale Control Protocol v130")
    h = _b2s(h + s_pub)
    e = init[5:37]
    h = _b2s(h + e)
    ck, k = _hkdf64(ck, _dh(S_PRIV, e))
    m_pub = ChaCha20Poly1305(k).decrypt(bytes(12), init[37:85], h)
    assert m_pub.hex() == VECTOR["machine_pub"]
    h = _b2s(h + init[37:85])
    ck, k = _hkdf64(ck, _dh(S_PRIV, m_pub))
    assert ChaCha20Poly1305(k).decrypt(bytes(12), init[85:101], h) == b""
    h = _b2s(h + init[85:101])
    big_e = resp[3:35]
    h = _b2s(h + big_e)
    ck, _ = _hkdf64(ck, _dh(SE_PRIV, e))
    ck, k = _hkdf64(ck, _dh(SE_PRIV, m_pub))
    assert ChaCha20Poly1305(k).encrypt(bytes(12), b"", h) == resp[35:51]
    h = _b2s(h + resp[35:51])
    assert h.hex() == VECTOR["hash"]
    k1, k2 = _hkdf64(ck, b"")
    # client→server with k1, server→client with k2, nonce = 4 zero bytes + u64 BE counter
    rec0 = bytes.fromhex(VECTOR["c2s_hello_0"])
    rec1 = bytes.fromhex(VECTOR["c2s_hello_1"])
    assert ChaCha20Poly1305(k1).decrypt(bytes(12), rec0[3:], None) == b"hello"
    be1 = bytes(4) + (1).to_bytes(8, "big")
    le1 = bytes(4) + (1).to_bytes(8, "little")
    assert ChaCha20Poly1305(k1).decrypt(be1, rec1[3:], None) == b"hello"
    with pytest.raises(Exception):
        ChaCha20Poly1305(k1).decrypt(le1, rec1[3:], None)  # little-endian nonce fails from record 1 on
    rec_s = bytes.fromhex(VECTOR["s2c_world_0"])
    assert ChaCha20Poly1305(k2).decrypt(bytes(12), rec_s[3:], None) == b"world"


def test_hkdf_is_hmac_blake2s():
    ck, ikm = b"c" * 32, b"dh-output"
    t = hmac.new(ck, ikm, hashlib.blake2s).digest()
    o1 = hmac.new(t, b"\x01", hashlib.blake2s).digest()
    o2 = hmac.new(t, o1 + b"\x02", hashlib.blake2s).digest()
    assert _hkdf64(ck, ikm) == (o1, o2)


@given(st.binary(max_size=100), st.binary(max_size=200))
def test_hmac_matches_the_hmac_module(key, data):
    # the handshake's HMAC-BLAKE2s is written out for speed; it must be RFC 2104's for any key
    assert noise._hmac(key, data) == hmac.new(key, data, hashlib.blake2s).digest()


# --- handshake errors -------------------------------------------------------------------------------


def test_prologue_uses_client_version():
    for v in (113, 123, 130, 65535):
        _, server, client = pair(v)
        assert server.version == v
        assert server.handshake_hash == client.handshake_hash
    assert noise.prologue(130) == b"Tailscale Control Protocol v130"


def test_respond_rejects_bad_framing():
    init = bytes.fromhex(VECTOR["initiation"])
    with pytest.raises(noise.RemoteProtocolError, match="size"):
        noise.respond(init[:-1], S_PRIV)
    with pytest.raises(noise.RemoteProtocolError, match="type"):
        noise.respond(init[:2] + b"\x02" + init[3:], S_PRIV)
    with pytest.raises(noise.RemoteProtocolError, match="length"):
        noise.respond(init[:3] + b"\x00\x61" + init[5:], S_PRIV)


def test_respond_rejects_tampering_and_wrong_server_key():
    init = bytearray.fromhex(VECTOR["initiation"])
    for i in (0, 1, 40, 90, 100):  # version (prologue) / encrypted static / tag
        bad = bytearray(init)
        bad[i] ^= 1
        with pytest.raises(noise.RemoteProtocolError):
            noise.respond(bytes(bad), S_PRIV)
    with pytest.raises(noise.RemoteProtocolError, match="authentication"):
        noise.respond(bytes(init), keys.generate_private_key())


def test_low_order_ephemeral_rejected():
    init = bytearray.fromhex(VECTOR["initiation"])
    init[5:37] = bytes(32)
    with pytest.raises(noise.RemoteProtocolError):
        noise.respond(bytes(init), S_PRIV)


def test_initiator_error_frame_and_bad_reply():
    init = noise.Initiator(keys.public_key(S_PRIV), M_PRIV, 130)
    with pytest.raises(noise.RemoteProtocolError, match="too old"):
        init.receive_response(noise.error_frame("too old"))
    assert noise.error_frame("x") == b"\x03\x00\x01x"
    with pytest.raises(noise.RemoteProtocolError, match="type"):
        noise.Initiator.reply_length(b"\x04\x00\x30")
    with pytest.raises(noise.RemoteProtocolError, match="length"):
        noise.Initiator.reply_length(b"\x02\x00\x31")
    server = noise.respond(init.initiation, S_PRIV)
    bad = bytearray(server.response)
    bad[-1] ^= 1
    with pytest.raises(noise.RemoteProtocolError, match="authentication"):
        init.receive_response(bytes(bad))


@given(st.binary(min_size=101, max_size=101))
@settings(max_examples=200)
def test_respond_garbage_only_remote_error(data):
    with pytest.raises(noise.RemoteProtocolError):
        noise.respond(data, S_PRIV)


# --- transport ---------------------------------------------------------------------------------------


def test_record_limits():
    server, client = random_pair()
    wire = client.encrypt(b"a" * (noise.MAX_PLAINTEXT_LEN * 2 + 1))
    first_len = struct.unpack(">H", wire[1:3])[0]
    assert 3 + first_len == noise.MAX_RECORD_LEN == 4096
    assert noise.MAX_PLAINTEXT_LEN == 4077
    chunks = server.receive_data(wire)
    assert [len(c) for c in chunks] == [4077, 4077, 1]
    assert client.encrypt(b"") == b""


def test_records_sealed_in_place_are_the_records_sealed_one_by_one():
    size = noise.MAX_PLAINTEXT_LEN
    in_place, one_by_one = noise._Cipher(bytes(range(32))), noise._Cipher(bytes(range(32)))
    data = bytes(i % 251 for i in range(size * 3 + 5))
    records = [one_by_one.encrypt(data[i : i + size]) for i in range(0, len(data), size)]
    assert in_place.seal_records(data) == b"".join(struct.pack(">BH", 4, len(r)) + r for r in records)
    assert in_place._n == one_by_one._n == 4


def test_the_last_send_nonces_are_used_and_then_refused_before_any_record():
    cipher = noise._Cipher(bytes(32))
    cipher._n = noise._MAX_NONCE - 2
    with pytest.raises(noise.LocalProtocolError, match="exhausted"):
        cipher.seal_records(b"a" * (noise.MAX_PLAINTEXT_LEN * 2 + 1))  # three records, two nonces left
    assert cipher._n == noise._MAX_NONCE - 2
    cipher.seal_records(b"a" * (noise.MAX_PLAINTEXT_LEN + 1))
    with pytest.raises(noise.LocalProtocolError, match="exhausted"):
        cipher.seal_records(b"x")


def test_record_too_big_and_wrong_type():
    server, _ = random_pair()
    with pytest.raises(noise.RemoteProtocolError, match="too big"):
        server.receive_data(b"\x04\x0f\xfe")  # 3 + 4094 > 4096
    with pytest.raises(noise.RemoteProtocolError, match="already failed"):
        server.receive_data(b"")
    server, _ = random_pair()
    with pytest.raises(noise.RemoteProtocolError, match="type"):
        server.receive_data(b"\x02\x00\x30")


def test_zero_length_plaintext_records_are_skipped():
    server, client = random_pair()
    empty = client._tx.encrypt(b"")
    wire = b"\x04\x00\x10" + empty + client.encrypt(b"x")
    assert server.receive_data(wire) == [b"x"]


def test_replayed_record_fails():
    server, client = random_pair()
    rec = client.encrypt(b"once")
    assert server.receive_data(rec) == [b"once"]
    with pytest.raises(noise.RemoteProtocolError, match="authentication"):
        server.receive_data(rec)


@given(
    messages=st.lists(st.binary(max_size=9000), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=40000), max_size=12),
)
@settings(max_examples=100, deadline=None)
def test_round_trip_arbitrary_splits(messages, cuts):
    server, client = random_pair()
    wire = b"".join(client.encrypt(m) for m in messages)
    points = sorted({c % (len(wire) + 1) for c in cuts})
    got = []
    prev = 0
    for p in points + [len(wire)]:
        got.extend(server.receive_data(wire[prev:p]))
        prev = p
    assert b"".join(got) == b"".join(messages)
    assert server.buffered == 0


@given(st.lists(st.binary(max_size=300), max_size=8))
@settings(max_examples=200)
def test_garbage_only_remote_error(chunks):
    server, _ = random_pair()
    try:
        for c in chunks:
            assert server.receive_data(c) == []  # garbage can never authenticate
    except noise.RemoteProtocolError:
        pass


def test_both_directions_independent():
    server, client = random_pair()
    for i in range(5):
        assert server.receive_data(client.encrypt(b"c%d" % i)) == [b"c%d" % i]
        assert client.receive_data(server.encrypt(b"s%d" % i)) == [b"s%d" % i]


# --- early payload ------------------------------------------------------------------------------------


def test_early_payload_encode_and_parse():
    chal = keys.public_key(keys.generate_private_key())
    data = noise.encode_early_payload(chal)
    assert data[:5] == b"\xff\xff\xffTS"
    (n,) = struct.unpack(">I", data[5:9])
    assert json.loads(data[9:]) == {"nodeKeyChallenge": keys.CHALLENGE.format(chal)}
    assert n == len(data) - 9
    h2_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    p = noise.EarlyPayloadParser()
    for b in data + h2_settings:  # byte by byte
        if p.receive_data(bytes([b])):
            break
    assert p.challenge_public_key == chal
    assert p.rest == b""
    p = noise.EarlyPayloadParser()
    assert p.receive_data(data + h2_settings)
    assert p.rest == h2_settings


def test_early_payload_absent():
    h2_settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"
    p = noise.EarlyPayloadParser()
    assert p.receive_data(h2_settings[:1])  # first byte already rules out the magic
    p2 = noise.EarlyPayloadParser()
    assert not p2.receive_data(b"\xff\xff")
    assert p2.receive_data(b"\xffTX\x00\x00\x00\x00")
    assert p2.payload is None and p2.rest == b"\xff\xff\xffTX\x00\x00\x00\x00"
    p3 = noise.EarlyPayloadParser()
    assert p3.receive_data(h2_settings)
    assert p3.payload is None and p3.challenge_public_key is None and p3.rest == h2_settings


def test_early_payload_errors():
    with pytest.raises(noise.RemoteProtocolError, match="too big"):
        noise.EarlyPayloadParser().receive_data(b"\xff\xff\xffTS" + struct.pack(">I", (10 << 20) + 1))
    with pytest.raises(noise.RemoteProtocolError, match="JSON"):
        noise.EarlyPayloadParser().receive_data(b"\xff\xff\xffTS\x00\x00\x00\x02{x")
    with pytest.raises(noise.RemoteProtocolError, match="chalpub"):
        noise.EarlyPayloadParser().receive_data(b"\xff\xff\xffTS\x00\x00\x00\x17" + b'{"nodeKeyChallenge":""}')


@given(st.binary(max_size=64))
def test_early_payload_garbage_only_remote_error(data):
    p = noise.EarlyPayloadParser()
    try:
        p.receive_data(data)
    except noise.RemoteProtocolError:
        pass
