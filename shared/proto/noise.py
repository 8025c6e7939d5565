"""TS2021 Noise (``Noise_IK_25519_ChaChaPoly_BLAKE2s``) as Tailscale's control protocol uses it. Sans-IO.

Handshake (spec §2.4): the client's 101-byte initiation travels base64'd in the ``X-Tailscale-Handshake``
header of the ``/ts2021`` upgrade request; the server answers with a 51-byte response written raw on the
socket right after the ``101`` response.  The prologue is ``"Tailscale Control Protocol v<version>"``
with the decimal version from the initiation header.

* :func:`respond` — responder: initiation bytes + server static private key → :class:`Handshake`
  (response bytes, peer machine key, version, handshake hash, a ready :class:`NoiseConnection`).
* :class:`Initiator` — initiator (for our own client, tests and load tools).
* :func:`error_frame` — the unauthenticated type-3 error message a server may send instead of a response.

Transport (§2.5): records ``0x04 | u16 BE length | ChaCha20-Poly1305 ciphertext``; nonce = 4 zero bytes +
8-byte **big-endian** counter per direction; at most 4096 bytes per record on the wire (4077 plaintext).
The responder sends with the second split key and receives with the first.

Early payload (§2.6): :func:`encode_early_payload` (server) and :class:`EarlyPayloadParser` (client).

Errors: :class:`RemoteProtocolError` — the peer sent something invalid; :class:`LocalProtocolError` — our
own caller misused the API.  Both derive from :class:`NoiseError`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import keys

__all__ = [
    "NoiseError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "PROTOCOL_NAME",
    "INITIATION_LEN",
    "RESPONSE_LEN",
    "MAX_RECORD_LEN",
    "MAX_PLAINTEXT_LEN",
    "MSG_INITIATION",
    "MSG_RESPONSE",
    "MSG_ERROR",
    "MSG_RECORD",
    "EARLY_PAYLOAD_MAGIC",
    "MAX_EARLY_PAYLOAD_LEN",
    "prologue",
    "parse_initiation_version",
    "Handshake",
    "respond",
    "error_frame",
    "Initiator",
    "NoiseConnection",
    "encode_early_payload",
    "EarlyPayloadParser",
]


class NoiseError(Exception):
    """Base class of this module's errors."""


class LocalProtocolError(NoiseError):
    """We (the caller of this module) tried to do something the protocol does not allow."""


class RemoteProtocolError(NoiseError):
    """The peer sent bytes that break the protocol; the connection must be closed."""


PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_ERROR = 3
MSG_RECORD = 4

_TAG_LEN = 16
_INIT_HEADER_LEN = 5  # u16 version, u8 type, u16 length
_INIT_PAYLOAD_LEN = keys.KEY_LEN + (keys.KEY_LEN + _TAG_LEN) + _TAG_LEN  # 96
INITIATION_LEN = _INIT_HEADER_LEN + _INIT_PAYLOAD_LEN  # 101
_RESP_HEADER_LEN = 3  # u8 type, u16 length
_RESP_PAYLOAD_LEN = keys.KEY_LEN + _TAG_LEN  # 48
RESPONSE_LEN = _RESP_HEADER_LEN + _RESP_PAYLOAD_LEN  # 51

_RECORD_HEADER_LEN = 3
MAX_RECORD_LEN = 4096
MAX_CIPHERTEXT_LEN = MAX_RECORD_LEN - _RECORD_HEADER_LEN  # 4093
MAX_PLAINTEXT_LEN = MAX_CIPHERTEXT_LEN - _TAG_LEN  # 4077
_MAX_NONCE = 2**64 - 1
_NONCE_PREFIX = bytes(4)  # a transport nonce is 4 zero bytes, then the counter big-endian
_HEADER = struct.Struct(">BH")  # every message: type, then length big-endian

_ZERO_NONCE = bytes(12)


def prologue(version: int) -> bytes:
    """The Noise prologue for a protocol (capability) version."""
    return PROLOGUE_PREFIX + str(int(version)).encode("ascii")


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_BLAKE2S_BLOCK = 64


def _hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s (RFC 2104). Written out because the `hmac` module's generic path took twice
    as long, and a handshake computes about fifteen of these. Keys here are 32-byte chaining keys
    and HMAC outputs; a longer one goes through the module."""
    if len(key) > _BLAKE2S_BLOCK:
        return hmac.new(key, data, hashlib.blake2s).digest()
    padded = key.ljust(_BLAKE2S_BLOCK, b"\0")
    inner = hashlib.blake2s(padded.translate(_IPAD) + data).digest()
    return hashlib.blake2s(padded.translate(_OPAD) + inner).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2


def _dh(private_key: X25519PrivateKey, public_key: bytes) -> bytes:
    try:
        return keys.exchange(private_key, public_key)
    except ValueError as exc:  # low-order point → all-zero shared secret
        raise RemoteProtocolError("invalid Diffie-Hellman public key") from exc


class _SymmetricState:
    """Noise SymmetricState: chaining key and handshake hash (handshake AEADs use nonce 0)."""

    __slots__ = ("h", "ck")

    def __init__(self, version: int, responder_static: bytes) -> None:
        self.h = _hash(PROTOCOL_NAME)
        self.ck = self.h
        self.mix_hash(prologue(version))
        self.mix_hash(responder_static)  # pre-message "<- s"

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_dh(self, private_key: X25519PrivateKey, public_key: bytes) -> bytes:
        self.ck, k = _hkdf2(self.ck, _dh(private_key, public_key))
        return k

    def encrypt_and_hash(self, k: bytes, plaintext: bytes) -> bytes:
        ct = ChaCha20Poly1305(k).encrypt(_ZERO_NONCE, plaintext, self.h)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, k: bytes, ciphertext: bytes) -> bytes:
        try:
            pt = ChaCha20Poly1305(k).decrypt(_ZERO_NONCE, ciphertext, self.h)
        except InvalidTag:
            raise RemoteProtocolError("handshake message authentication failed") from None
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf2(self.ck, b"")


def parse_initiation_version(initiation: bytes) -> int:
    """Check an initiation's framing (length, type, length field) and return its version."""
    if len(initiation) != INITIATION_LEN:
        raise RemoteProtocolError(f"wrong handshake initiation size {len(initiation)}")
    version, mtype, length = struct.unpack_from(">HBH", initiation)
    if mtype != MSG_INITIATION:
        raise RemoteProtocolError(f"unexpected handshake message type {mtype}")
    if length != _INIT_PAYLOAD_LEN:
        raise RemoteProtocolError(f"wrong handshake initiation length {length}")
    return version


@dataclass(frozen=True, eq=False)
class Handshake:
    """Outcome of a completed handshake (on either side)."""

    response: bytes  #: the 51-byte response message (responder) / as received (initiator)
    peer_static: bytes  #: responder: the client's machine public key; initiator: the server key
    version: int  #: protocol (capability) version from the initiation header
    handshake_hash: bytes  #: final Noise ``h``
    connection: NoiseConnection = field(repr=False)

    @property
    def machine_key(self) -> bytes:
        """Alias of ``peer_static`` for the responder side."""
        return self.peer_static


#: the responder's static key, loaded (a server answers every handshake with the same one)
_SERVER_KEY: tuple[bytes, X25519PrivateKey, bytes] | None = None


def _server_key(private_key: bytes) -> tuple[X25519PrivateKey, bytes]:
    global _SERVER_KEY
    held = _SERVER_KEY
    if held is None or held[0] != private_key:
        loaded = keys.private_key_object(private_key)
        held = _SERVER_KEY = (bytes(private_key), loaded, loaded.public_key().public_bytes_raw())
    return held[1], held[2]


def respond(
    initiation: bytes,
    server_private_key: bytes,
    *,
    ephemeral_private_key: bytes | None = None,
) -> Handshake:
    """Run the responder half of the handshake on a 101-byte initiation.

    ``ephemeral_private_key`` is for known-answer tests only; normally a fresh one is generated.
    Raises :class:`RemoteProtocolError` if the initiation is malformed or fails authentication.
    """
    initiation = bytes(initiation)
    version = parse_initiation_version(initiation)
    server, server_public = _server_key(server_private_key)
    ss = _SymmetricState(version, server_public)

    client_eph = initiation[5:37]
    ss.mix_hash(client_eph)
    k = ss.mix_dh(server, client_eph)  # es
    machine_key = ss.decrypt_and_hash(k, initiation[37:85])
    k = ss.mix_dh(server, machine_key)  # ss
    ss.decrypt_and_hash(k, initiation[85:101])

    eph = (keys.private_key_object(ephemeral_private_key) if ephemeral_private_key is not None
           else keys.new_private_key_object())
    eph_pub = eph.public_key().public_bytes_raw()
    ss.mix_hash(eph_pub)
    ss.mix_dh(eph, client_eph)  # ee
    k = ss.mix_dh(eph, machine_key)  # se
    tag = ss.encrypt_and_hash(k, b"")
    k1, k2 = ss.split()

    response = _HEADER.pack(MSG_RESPONSE, _RESP_PAYLOAD_LEN) + eph_pub + tag
    conn = NoiseConnection(send_key=k2, receive_key=k1)
    return Handshake(response, machine_key, version, ss.h, conn)


def error_frame(message: str) -> bytes:
    """A type-3 handshake error message (unauthenticated, sent instead of the response)."""
    body = message.encode("utf-8")[:MAX_CIPHERTEXT_LEN]
    return _HEADER.pack(MSG_ERROR, len(body)) + body


class Initiator:
    """The client half of the handshake.

    ``initiation`` (101 bytes) is ready after construction; feed the server's reply (the 51-byte
    response, or a whole type-3 error frame) to :meth:`receive_response`.
    ``ephemeral_private_key`` is for known-answer tests only.
    """

    def __init__(
        self,
        server_public_key: bytes,
        machine_private_key: bytes,
        version: int,
        *,
        ephemeral_private_key: bytes | None = None,
    ) -> None:
        if not 0 <= version <= 0xFFFF:
            raise LocalProtocolError(f"version {version} does not fit in u16")
        self._server_public = bytes(server_public_key)
        self._machine = keys.private_key_object(bytes(machine_private_key))
        self.version = version
        self._eph = keys.private_key_object(ephemeral_private_key if ephemeral_private_key is not None
                                            else keys.generate_private_key())
        self._eph_pub = self._eph.public_key().public_bytes_raw()
        self._ss = _SymmetricState(version, self._server_public)
        self._done = False

        ss = self._ss
        ss.mix_hash(self._eph_pub)
        try:
            k = ss.mix_dh(self._eph, self._server_public)  # es
            machine_ct = ss.encrypt_and_hash(k, self._machine.public_key().public_bytes_raw())
            k = ss.mix_dh(self._machine, self._server_public)  # ss
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"bad server public key: {exc}") from None
        tag = ss.encrypt_and_hash(k, b"")
        header = struct.pack(">HBH", version, MSG_INITIATION, _INIT_PAYLOAD_LEN)
        self.initiation = header + self._eph_pub + machine_ct + tag

    @staticmethod
    def reply_length(header: bytes) -> int:
        """Given the first 3 bytes of the server's reply, how many more bytes to read."""
        if len(header) != 3:
            raise LocalProtocolError("need exactly the 3-byte reply header")
        mtype, length = _HEADER.unpack(header)
        if mtype == MSG_RESPONSE:
            if length != _RESP_PAYLOAD_LEN:
                raise RemoteProtocolError(f"wrong handshake response length {length}")
            return length
        if mtype == MSG_ERROR:
            return length
        raise RemoteProtocolError(f"unexpected handshake reply type {mtype}")

    def receive_response(self, message: bytes) -> Handshake:
        """Finish the handshake; a type-3 error frame raises :class:`RemoteProtocolError` with its text."""
        if self._done:
            raise LocalProtocolError("handshake already finished")
        message = bytes(message)
        if len(message) < 3:
            raise RemoteProtocolError("truncated handshake reply")
        length = self.reply_length(message[:3])
        if len(message) != 3 + length:
            raise RemoteProtocolError("handshake reply length mismatch")
        if message[0] == MSG_ERROR:
            text = message[3:].decode("utf-8", "replace")
            raise RemoteProtocolError(f"server error: {text!r}")
        ss = self._ss
        server_eph = message[3:35]
        ss.mix_hash(server_eph)
        ss.mix_dh(self._eph, server_eph)  # ee
        k = ss.mix_dh(self._machine, server_eph)  # se
        ss.decrypt_and_hash(k, message[35:51])
        k1, k2 = ss.split()
        self._done = True
        conn = NoiseConnection(send_key=k1, receive_key=k2)
        return Handshake(message, self._server_public, self.version, ss.h, conn)


# --- transport -----------------------------------------------------------------------------------


class _Cipher:
    __slots__ = ("_aead", "_n")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._n = 0

    def _nonce(self) -> bytes:
        return _NONCE_PREFIX + self._n.to_bytes(8, "big")

    def encrypt(self, plaintext: bytes) -> bytes:
        if self._n >= _MAX_NONCE:
            raise LocalProtocolError("send nonce exhausted")
        ct = self._aead.encrypt(self._nonce(), plaintext, None)
        self._n += 1
        return ct

    def seal_records(self, plaintext: bytes) -> bytes:
        """`plaintext` as transport records of at most MAX_PLAINTEXT_LEN bytes each, sealed in
        place into one buffer: a first map is hundreds of records, and sealing each into bytes of
        its own and then joining them cost more than the cipher (about twice the time)."""
        size = len(plaintext)
        count = -(-size // MAX_PLAINTEXT_LEN)
        if self._n + count > _MAX_NONCE:
            raise LocalProtocolError("send nonce exhausted")
        out = bytearray(size + count * (_RECORD_HEADER_LEN + _TAG_LEN))
        dst = memoryview(out)
        src = memoryview(plaintext)
        seal = self._aead.encrypt_into
        n = self._n
        at = 0
        for start in range(0, size, MAX_PLAINTEXT_LEN):
            part = src[start : start + MAX_PLAINTEXT_LEN]
            sealed = len(part) + _TAG_LEN
            _HEADER.pack_into(out, at, MSG_RECORD, sealed)
            at += _RECORD_HEADER_LEN
            seal(_NONCE_PREFIX + n.to_bytes(8, "big"), part, None, dst[at : at + sealed])
            at += sealed
            n += 1
        self._n = n
        return bytes(out)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if self._n >= _MAX_NONCE:
            raise RemoteProtocolError("receive nonce exhausted")
        try:
            pt = self._aead.decrypt(self._nonce(), ciphertext, None)
        except InvalidTag:
            raise RemoteProtocolError("record authentication failed") from None
        self._n += 1
        return pt


class NoiseConnection:
    """Transport phase: encrypt outgoing plaintext into records, decrypt incoming records.

    Both directions are independent.  After a :class:`RemoteProtocolError` the receive side is dead
    and every later :meth:`receive_data` raises again.
    """

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._tx = _Cipher(send_key)
        self._rx = _Cipher(receive_key)
        self._buf = bytearray()
        self._broken: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete record waiting for more data."""
        return len(self._buf)

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` into as many records (≤ 4077 plaintext bytes each) as needed.

        An empty ``plaintext`` gives ``b""`` (no record).
        """
        return self._tx.seal_records(plaintext) if plaintext else b""

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed received bytes; return the plaintext of every record completed by them (empty ones dropped)."""
        if self._broken is not None:
            raise RemoteProtocolError(f"connection already failed: {self._broken}")
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= _RECORD_HEADER_LEN:
                mtype, length = _HEADER.unpack_from(buf, pos)
                if mtype != MSG_RECORD:
                    raise RemoteProtocolError(f"unexpected record type {mtype}")
                if length > MAX_CIPHERTEXT_LEN:
                    raise RemoteProtocolError(f"record too big ({length} bytes)")
                if length < _TAG_LEN:
                    raise RemoteProtocolError(f"record too short ({length} bytes)")
                end = pos + _RECORD_HEADER_LEN + length
                if len(buf) < end:
                    break
                pt = self._rx.decrypt(bytes(buf[pos + _RECORD_HEADER_LEN : end]))
                pos = end
                if pt:
                    out.append(pt)
        except RemoteProtocolError as exc:
            self._broken = str(exc)
            self._buf = bytearray()
            raise
        del buf[:pos]
        return out


# --- early payload -------------------------------------------------------------------------------

EARLY_PAYLOAD_MAGIC = b"\xff\xff\xffTS"
MAX_EARLY_PAYLOAD_LEN = 10 << 20
_EARLY_HEADER_LEN = 9


def encode_early_payload(challenge_public_key: bytes | None = None, **extra: Any) -> bytes:
    """Server→client early payload: magic, u32 BE length, JSON ``{"nodeKeyChallenge": "chalpub:…"}``."""
    obj: dict[str, Any] = {}
    keys.CHALLENGE.put(obj, "nodeKeyChallenge", challenge_public_key)
    obj.update(extra)
    body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return EARLY_PAYLOAD_MAGIC + struct.pack(">I", len(body)) + body


class EarlyPayloadParser:
    """Client side: detect and strip the optional early payload at the start of the plaintext stream.

    Feed plaintext with :meth:`receive_data` until it returns ``True``; then :attr:`payload` is the decoded
    JSON object (or ``None`` if the server sent none), :attr:`challenge_public_key` the challenge key (or
    ``None``) and :attr:`rest` the bytes that follow (the start of HTTP/2).  Like the Go client, the
    decision is made on the first 9 bytes.
    """

    def __init__(self, max_length: int = MAX_EARLY_PAYLOAD_LEN) -> None:
        self._buf = bytearray()
        self._max = max_length
        self.done = False
        self.payload: dict[str, Any] | None = None
        self.challenge_public_key: bytes | None = None
        self.rest = b""

    def receive_data(self, data: bytes) -> bool:
        if self.done:
            raise LocalProtocolError("early payload already parsed")
        self._buf += data
        buf = self._buf
        if len(buf) < _EARLY_HEADER_LEN:
            n = min(len(buf), len(EARLY_PAYLOAD_MAGIC))
            if bytes(buf[:n]) != EARLY_PAYLOAD_MAGIC[:n]:
                return self._finish(None, 0)  # cannot be the magic: all of it is HTTP/2
            return False
        if bytes(buf[:5]) != EARLY_PAYLOAD_MAGIC:
            return self._finish(None, 0)
        (length,) = struct.unpack_from(">I", buf, 5)
        if length > self._max:
            raise RemoteProtocolError(f"early payload too big ({length} bytes)")
        end = _EARLY_HEADER_LEN + length
        if len(buf) < end:
            return False
        try:
            obj = json.loads(bytes(buf[_EARLY_HEADER_LEN:end]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteProtocolError(f"early payload is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise RemoteProtocolError("early payload is not a JSON object")
        try:
            self.challenge_public_key = keys.CHALLENGE.from_json(obj.get("nodeKeyChallenge"))
        except keys.KeyFormatError as exc:
            raise RemoteProtocolError(f"early payload: {exc}") from None
        return self._finish(obj, end)

    def _finish(self, payload: dict[str, Any] | None, consumed: int) -> bool:
        self.payload = payload
        self.rest = bytes(self._buf[consumed:])
        self._buf = bytearray()
        self.done = True
        return True
