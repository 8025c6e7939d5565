"""Rows to records and back: the value conversions both stores share.

Rows come in as mappings (sqlite3.Row or asyncpg.Record). The readers accept both dialects'
spellings of a value (JSON text or a native list/dict, ISO text or a datetime, 0/1 or a bool), so
one function per record serves both stores. Turning a Python value into a driver value is dialect
specific and lives with each store; the shared pieces of it (time text, JSON text, change data
packing) are here. The normalisers put a value in the form a record holds, so a value a client
sends compares equal to the one read back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import msgpack

from trioscale.shared.model import (
    CHANGE_KINDS,
    ApiKey,
    Change,
    DerpRelay,
    Node,
    OAuthClient,
    PendingRegistration,
    PolicyVersion,
    Presence,
    PreAuthKey,
    Share,
    SSHCheck,
    User,
)

# -- times ---------------------------------------------------------------------------------------


def utc(dt: datetime) -> datetime:
    """`dt` as an aware UTC datetime; a naive datetime is a caller bug."""
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        raise ValueError(f"naive datetime {dt!r}: the store takes aware UTC datetimes")
    return dt.astimezone(timezone.utc)


def opt_utc(dt: datetime | None) -> datetime | None:
    return None if dt is None else utc(dt)


def time_text(dt: datetime | None) -> str | None:
    """Fixed-width ISO text (always microseconds, always +00:00) so text order is time order."""
    return None if dt is None else utc(dt).isoformat(timespec="microseconds")


def read_time(v: Any) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if v.tzinfo is None:  # a driver that drops the zone: the store only ever writes UTC
        return v.replace(tzinfo=timezone.utc)
    return v.astimezone(timezone.utc)


# -- JSON-ish values -----------------------------------------------------------------------------


def json_text(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def read_tuple(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = json.loads(v)
    return tuple(v)


def read_dict(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if isinstance(v, (str, bytes)):
        v = json.loads(v)
    return dict(v)


def read_bytes(v: Any) -> bytes | None:
    return None if v is None else bytes(v)


def str_tuple(v: Iterable[str] | None) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        raise TypeError("expected a sequence of strings, got a str")
    return tuple(str(x) for x in v)


# -- change data ---------------------------------------------------------------------------------


def pack_data(data: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(data), use_bin_type=True)


def unpack_data(raw: Any) -> dict[str, Any]:
    return msgpack.unpackb(bytes(raw), raw=False, strict_map_key=False)


def check_kind(kind: str) -> str:
    if kind not in CHANGE_KINDS:
        raise ValueError(f"unknown change kind {kind!r}")
    return kind


def change_from_row(r: Mapping[str, Any]) -> Change:
    return change_from_fields(r["seq"], r["kind"], r["data"], r["at"])


def change_from_fields(seq: int, kind: str, data: bytes, at: Any) -> Change:
    """A change from its log row's columns, as stored (packed data, stored time)."""
    return Change(seq=int(seq), kind=kind, data=unpack_data(data), at=read_time(at))


# -- records -------------------------------------------------------------------------------------


def user_from_row(r: Mapping[str, Any]) -> User:
    return User(
        id=int(r["id"]),
        name=r["name"],
        display_name=r["display_name"],
        email=r["email"],
        created_at=read_time(r["created_at"]),
        provider=r["provider"],
        provider_id=r["provider_id"],
        profile_pic_url=r["profile_pic_url"],
    )


#: every Node attribute but id, in table column order
NODE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Node) if f.name != "id")
NODE_TUPLE_FIELDS = frozenset({"endpoints", "tags", "approved_routes"})
NODE_TIME_FIELDS = frozenset({"expiry", "created_at", "last_seen"})
NODE_BYTES_FIELDS = frozenset({"machine_key", "node_key", "disco_key"})


def normalize_node_value(name: str, v: Any) -> Any:
    """A value for Node field `name` in the form the record holds (for comparing and storing)."""
    if name in NODE_TUPLE_FIELDS:
        return str_tuple(v)
    if name in NODE_TIME_FIELDS:
        return opt_utc(v)
    if name in NODE_BYTES_FIELDS:
        return read_bytes(v)
    if name == "hostinfo":
        return dict(v or {})
    if name == "ephemeral":
        return bool(v)
    if name in ("user_id", "home_derp"):
        return int(v)
    if name == "auth_key_id":
        return None if v is None else int(v)
    return v


def normalize_hostinfo(v: Any) -> dict[str, Any]:
    """Hostinfo as it comes back from the database (JSON round trip), so equal means equal."""
    return json.loads(json_text(dict(v or {})))


def hostinfo_size(hostinfo: Any) -> int:
    """Bytes of `hostinfo` as the store writes it (compact JSON)."""
    return len(json_text(dict(hostinfo or {})).encode())


def node_from_row(r: Mapping[str, Any]) -> Node:
    return Node(
        id=int(r["id"]),
        machine_key=bytes(r["machine_key"]),
        node_key=bytes(r["node_key"]),
        user_id=int(r["user_id"]),
        hostname=r["hostname"],
        given_name=r["given_name"],
        ipv4=r["ipv4"],
        ipv6=r["ipv6"],
        disco_key=read_bytes(r["disco_key"]),
        endpoints=read_tuple(r["endpoints"]),
        hostinfo=read_dict(r["hostinfo"]),
        home_derp=int(r["home_derp"]),
        tags=read_tuple(r["tags"]),
        approved_routes=read_tuple(r["approved_routes"]),
        ephemeral=bool(r["ephemeral"]),
        auth_key_id=None if r["auth_key_id"] is None else int(r["auth_key_id"]),
        expiry=read_time(r["expiry"]),
        created_at=read_time(r["created_at"]),
        last_seen=read_time(r["last_seen"]),
        register_method=r["register_method"],
    )


def node_as_row(node: Node) -> dict[str, Any]:
    """`node` as a row `node_from_row` reads back equal, in values change data can carry (a node
    change carries the node as committed, so the replicas that apply it need not read it again)."""
    out: dict[str, Any] = {}
    for name in ("id", *NODE_FIELDS):
        v = getattr(node, name)
        if isinstance(v, datetime):
            v = time_text(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[name] = v
    return out


def preauth_key_from_row(r: Mapping[str, Any]) -> PreAuthKey:
    return PreAuthKey(
        id=int(r["id"]),
        prefix=r["prefix"],
        key_hash=bytes(r["key_hash"]),
        user_id=int(r["user_id"]),
        reusable=bool(r["reusable"]),
        ephemeral=bool(r["ephemeral"]),
        used=bool(r["used"]),
        tags=read_tuple(r["tags"]),
        expiration=read_time(r["expiration"]),
        created_at=read_time(r["created_at"]),
        description=r["description"],
    )


def api_key_from_row(r: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        id=int(r["id"]),
        prefix=r["prefix"],
        key_hash=bytes(r["key_hash"]),
        expiration=read_time(r["expiration"]),
        created_at=read_time(r["created_at"]),
        last_seen=read_time(r["last_seen"]),
        scopes=read_tuple(r["scopes"]),
        tags=read_tuple(r["tags"]),
        oauth_client_id=None if r["oauth_client_id"] is None else int(r["oauth_client_id"]),
    )


def oauth_client_from_row(r: Mapping[str, Any]) -> OAuthClient:
    return OAuthClient(
        id=int(r["id"]),
        client_id=r["client_id"],
        secret_hash=bytes(r["secret_hash"]),
        description=r["description"],
        scopes=read_tuple(r["scopes"]),
        tags=read_tuple(r["tags"]),
        created_at=read_time(r["created_at"]),
        last_used=read_time(r["last_used"]),
    )


def policy_from_row(r: Mapping[str, Any]) -> PolicyVersion:
    return PolicyVersion(version=int(r["version"]), text=r["text"], created_at=read_time(r["created_at"]))


def registration_from_row(r: Mapping[str, Any]) -> PendingRegistration:
    return PendingRegistration(
        id=r["id"],
        machine_key=bytes(r["machine_key"]),
        node_key=bytes(r["node_key"]),
        hostinfo=read_dict(r["hostinfo"]),
        expiry=read_time(r["expiry"]),
        created_at=read_time(r["created_at"]),
        node_id=None if r["node_id"] is None else int(r["node_id"]),
        user_id=None if r["user_id"] is None else int(r["user_id"]),
        source=r["source"],
    )


#: DerpRelay attributes stored as columns (all of them); heartbeat_at alone never records a change
RELAY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DerpRelay))
RELAY_COLUMNS: tuple[str, ...] = (
    "region_id",
    "name",
    "host",
    "region_code",
    "region_name",
    "ipv4",
    "ipv6",
    "derp_port",
    "stun_port",
    "heartbeat_at",
    "cert_name",
    "insecure_for_tests",
)


def relay_from_row(r: Mapping[str, Any]) -> DerpRelay:
    values: dict[str, Any] = {}
    for name in RELAY_FIELDS:
        if name not in RELAY_COLUMNS:
            continue
        v = r[name]
        if name == "heartbeat_at":
            v = read_time(v)
        elif name == "insecure_for_tests":
            v = bool(v)
        elif name in ("region_id", "derp_port", "stun_port"):
            v = int(v)
        values[name] = v
    return DerpRelay(**values)


def relay_values(relay: DerpRelay) -> dict[str, Any]:
    """Column -> value for `relay` (columns the model lacks get their defaults)."""
    out: dict[str, Any] = {}
    for col in RELAY_COLUMNS:
        v = getattr(relay, col, None)
        if col == "heartbeat_at":
            v = utc(v)
        elif col == "insecure_for_tests":
            v = bool(v)
        elif v is None:
            v = ""
        out[col] = v
    return out


def share_from_row(r: Mapping[str, Any]) -> Share:
    return Share(node_id=int(r["node_id"]), user_id=int(r["user_id"]), created_at=read_time(r["created_at"]))



def presence_from_row(r: Mapping[str, Any]) -> Presence:
    return Presence(
        node_id=int(r["node_id"]), replica_id=r["replica_id"], lease_expires=read_time(r["lease_expires"])
    )


def ssh_check_from_row(r: Mapping[str, Any]) -> SSHCheck:
    return SSHCheck(id=r["id"], src_node_id=int(r["src_node_id"]), dst_node_id=int(r["dst_node_id"]),
                    local_user=r["local_user"], decision=r["decision"], created_at=read_time(r["created_at"]),
                    expires_at=read_time(r["expires_at"]))
