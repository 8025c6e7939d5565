"""The DERP handshake's pieces, sans-IO: the HTTP/1.1 upgrade before the frames, and the sealed
ClientInfo / ServerInfo boxes (NaCl boxes of small JSON objects) that the connections exchange.

The server speaks first (ServerKey); the client answers with ClientInfo (sealed to the server's
key); the server replies with ServerInfo (sealed to the client's key).
"""

from __future__ import annotations

import json
from typing import Any

import h11
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from .frames import (
    ClientInfo,
    DerpError,
    KEY_LEN,
    LocalProtocolError,
    NONCE_LEN,
    PROTOCOL_VERSION,
    RemoteProtocolError,
    ServerInfo,
    _key,
)

__all__ = [
    "UPGRADE_PROTOCOL",
    "UpgradeRefused",
    "ClientUpgrade",
    "switching_protocols_headers",
    "public_key_of",
]


# --- handshake helpers ----------------------------------------------------------------------------


def _json_ci(obj: dict[str, Any], name: str) -> Any:
    """Case-insensitive field lookup, as Go's JSON decoder matches names (exact match first)."""
    if name in obj:
        return obj[name]
    lname = name.lower()
    for k, v in obj.items():
        if k.lower() == lname:
            return v
    return None


def _parse_client_info_json(client_key: bytes, plaintext: bytes) -> ClientInfo:
    try:
        obj = json.loads(plaintext)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"ClientInfo JSON is invalid: {exc}") from None
    except RecursionError:  # nesting deeper than the interpreter's stack: hostile, not a bug of ours
        raise RemoteProtocolError("ClientInfo JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("ClientInfo JSON is not an object")
    version = _json_ci(obj, "version")
    if version is None:
        version = 0
    if not isinstance(version, int) or isinstance(version, bool):
        raise RemoteProtocolError("ClientInfo version is not an integer")
    mesh_text = _json_ci(obj, "meshKey")
    mesh_key = None
    if mesh_text is not None and mesh_text != "":
        if not isinstance(mesh_text, str):
            raise RemoteProtocolError("ClientInfo meshKey is not a string")
        mesh_text = mesh_text.strip()
        if len(mesh_text) != 2 * KEY_LEN:
            raise RemoteProtocolError("ClientInfo meshKey must be 64 hex characters")
        try:
            mesh_key = bytes.fromhex(mesh_text)
        except ValueError:
            raise RemoteProtocolError("ClientInfo meshKey is not hex") from None
        if mesh_key == bytes(KEY_LEN):
            mesh_key = None
    can_ack = _json_ci(obj, "CanAckPings")
    prober = _json_ci(obj, "IsProber")
    return ClientInfo(
        key=client_key,
        version=version,
        mesh_key=mesh_key,
        can_ack_pings=can_ack is True,
        is_prober=prober is True,
        raw=obj,
    )


def _client_info_json(info: ClientInfo) -> bytes:
    obj: dict[str, Any] = {}
    if info.mesh_key:
        obj["meshKey"] = _key(info.mesh_key, "mesh key").hex()
    if info.version:
        obj["version"] = info.version
    obj["CanAckPings"] = bool(info.can_ack_pings)
    if info.is_prober:
        obj["IsProber"] = True
    for k, v in info.raw.items():
        obj.setdefault(k, v)
    return json.dumps(obj, separators=(",", ":")).encode()


def _server_info_json(info: ServerInfo) -> bytes:
    obj: dict[str, Any] = {"version": info.version}
    if info.token_bucket_bytes_per_second:
        obj["TokenBucketBytesPerSecond"] = info.token_bucket_bytes_per_second
    if info.token_bucket_bytes_burst:
        obj["TokenBucketBytesBurst"] = info.token_bucket_bytes_burst
    return json.dumps(obj, separators=(",", ":")).encode()


def _parse_server_info_json(plaintext: bytes) -> ServerInfo:
    try:
        obj = json.loads(plaintext)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"ServerInfo JSON is invalid: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("ServerInfo JSON is not an object")

    def _int(name: str) -> int:
        v = _json_ci(obj, name)
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    return ServerInfo(
        version=_int("version"),
        token_bucket_bytes_per_second=_int("TokenBucketBytesPerSecond"),
        token_bucket_bytes_burst=_int("TokenBucketBytesBurst"),
        raw=obj,
    )


def _seal(private_key: bytes, peer_public: bytes, plaintext: bytes, nonce: bytes | None) -> bytes:
    box = Box(PrivateKey(private_key), PublicKey(peer_public))
    if nonce is not None and len(nonce) != NONCE_LEN:
        raise LocalProtocolError(f"nonce must be {NONCE_LEN} bytes")
    return bytes(box.encrypt(plaintext, nonce))  # nonce || tag || ciphertext


def _open(private_key: bytes, peer_public: bytes, sealed: bytes, what: str) -> bytes:
    try:
        box = Box(PrivateKey(private_key), PublicKey(peer_public))
        return box.decrypt(bytes(sealed[NONCE_LEN:]), bytes(sealed[:NONCE_LEN]))
    except (CryptoError, ValueError, TypeError):
        raise RemoteProtocolError(f"{what} box does not open") from None


def public_key_of(private_key: bytes) -> bytes:
    return bytes(PrivateKey(_key(private_key, "private key")).public_key)


# --- the HTTP/1.1 upgrade -------------------------------------------------------------------------
#
# A DERP connection starts as ``GET /derp`` with ``Upgrade: DERP``; the relay answers ``101`` and
# speaks first (ServerKey). With ``Derp-Fast-Start: 1`` the client already knows the relay's key
# and sends its ClientInfo right after the request; the relay then sends no HTTP answer at all.

UPGRADE_PROTOCOL = "DERP"
_UPGRADE_HEAD_LIMIT = 64 * 1024


class UpgradeRefused(DerpError):
    """The relay answered the upgrade with something other than ``101``, or not HTTP/1.1 at all."""


def switching_protocols_headers(server_public_key: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of the relay's ``101`` (for ``h11.InformationalResponse``)."""
    return [
        (b"Upgrade", UPGRADE_PROTOCOL.encode()),
        (b"Connection", b"Upgrade"),
        (b"Derp-Version", str(PROTOCOL_VERSION).encode()),
        (b"Derp-Public-Key", _key(server_public_key, "server key").hex().encode()),
    ]


class ClientUpgrade:
    """The client's side of the upgrade: the request bytes, then the relay's answer parsed.

        up = ClientUpgrade("derp.example.com", fast_start=False)
        out = up.request()                 # write these first
        rest = up.receive_data(data)       # None until the 101 is complete; then the DERP bytes after it

    ``headers`` are added to (and override) the request's own; with ``fast_start`` no answer
    comes and `receive_data` is not used."""

    def __init__(self, host: str, path: str = "/derp", headers: dict[str, str] | None = None,
                 *, fast_start: bool = False):
        fields = {"Host": host, "Connection": "Upgrade", "Upgrade": UPGRADE_PROTOCOL}
        if fast_start:
            fields["Derp-Fast-Start"] = "1"
        fields.update(headers or {})
        self.fast_start = fast_start
        self._target = path
        self._fields = list(fields.items())
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=_UPGRADE_HEAD_LIMIT)

    def request(self) -> bytes:
        return (self._http.send(h11.Request(method="GET", target=self._target, headers=self._fields)) or b"") + (
            self._http.send(h11.EndOfMessage()) or b""
        )

    def receive_data(self, data: bytes) -> bytes | None:
        """Feed the relay's bytes; the bytes after the ``101`` once it is complete, else None.
        Raises UpgradeRefused for any other answer (its status line in the message)."""
        http = self._http
        http.receive_data(data)
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpgradeRefused(f"bad HTTP answer to the upgrade: {exc}") from None
        if event is h11.NEED_DATA:
            return None
        if type(event) is h11.InformationalResponse and event.status_code == 101:
            return bytes(http.trailing_data[0])
        if isinstance(event, (h11.Response, h11.InformationalResponse)):
            reason = event.reason.decode("latin-1", "replace")
            raise UpgradeRefused(f"upgrade refused: HTTP/1.1 {event.status_code} {reason}".rstrip())
        raise UpgradeRefused("relay closed the connection before answering the upgrade")
