"""Row <-> record helpers shared by the SQLite and PostgreSQL stores, and the store operations
written once for both (see "Operations" below).

Rows come in as mappings (sqlite3.Row or asyncpg.Record). The readers below accept both dialects'
spellings of a value: JSON text or a native list/dict, ISO text or a datetime, 0/1 or a bool, so one
function per record serves both stores. Writers are dialect specific and live with each store, except
for the small helpers here (time text, JSON text, change data packing).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import msgpack

from trioscale.shared.model import (
    CHANGE_KINDS,
    ApiKey,
    Change,
    DerpRelay,
    Node,
    PendingRegistration,
    Policy,
    Presence,
    PreAuthKey,
    Share,
    SSHCheck,
    User,
    utcnow,
)
from trioscale.shared.store import base
from trioscale.shared.store.base import Conflict, NotFound, Store, StoreFull, TooLarge

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
    return Change(seq=int(r["seq"]), kind=r["kind"], data=unpack_data(r["data"]), at=read_time(r["at"]))


# -- records -------------------------------------------------------------------------------------


def user_from_row(r: Mapping[str, Any]) -> User:
    return User(
        id=int(r["id"]),
        name=r["name"],
        display_name=r["display_name"],
        email=r["email"],
        created_at=read_time(r["created_at"]),
    )


#: every Node attribute but id, in table column order
NODE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Node) if f.name != "id")
#: what update_node may set
NODE_UPDATABLE: frozenset[str] = frozenset(NODE_FIELDS) - {"machine_key"}
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


def node_conflict_message(column: str, node: Node | Mapping[str, Any]) -> str:
    get = (lambda k: node.get(k)) if isinstance(node, Mapping) else (lambda k: getattr(node, k))
    if column == "machine_key":
        return "a node with this machine key is already registered"
    if column == "node_key":
        return "a node with this node key is already registered"
    if column == "given_name":
        return f'node name "{get("given_name")}" is already taken'
    if column in ("ipv4", "ipv6"):
        return f"address {get(column)} is already assigned to another node"
    return "node conflicts with an existing node"


#: unique node columns, in the order conflicts are reported
NODE_UNIQUE = ("machine_key", "node_key", "given_name", "ipv4", "ipv6")


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
    )


def api_key_from_row(r: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        id=int(r["id"]),
        prefix=r["prefix"],
        key_hash=bytes(r["key_hash"]),
        expiration=read_time(r["expiration"]),
        created_at=read_time(r["created_at"]),
        last_seen=read_time(r["last_seen"]),
    )


def policy_from_row(r: Mapping[str, Any]) -> Policy:
    return Policy(version=int(r["version"]), text=r["text"], created_at=read_time(r["created_at"]))


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


# =================================================================================================
# Operations, written once for both stores.
#
# Each store operation is a generator that yields requests and receives their results:
#
#     row = yield One("SELECT ... WHERE id = ?", user_id)     # -> a row mapping or None
#     rows = yield All("SELECT ...")                           # -> list of row mappings
#     yield Exec("UPDATE ...")                                 # -> None
#     yield Emit("user.created", {"id": 1})                    # -> the change's seq
#
# and returns its result. SQL uses `?` placeholders and values in their Python form (bytes, str,
# int, bool, datetime, tuple of str, dict); each store's driver converts the placeholders and
# values for its database, runs the generator inside one transaction (for writes) and turns
# Emit into a change-log row. Rule violations are raised from inside as NotFound / Conflict.
# =================================================================================================


class _Query:
    """An SQL request yielded by an operation: `One("SELECT ...", a, b)`."""

    __slots__ = ("sql", "args")

    def __init__(self, sql: str, *args: Any) -> None:
        self.sql = sql
        self.args = args

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sql!r}, *{self.args!r})"


class One(_Query):
    """Fetch one row (or None)."""

    __slots__ = ()


class All(_Query):
    """Fetch all rows."""

    __slots__ = ()


class Exec(_Query):
    """Run a statement, no rows."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Emit:
    kind: str
    data: dict


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _hex(b: bytes | None) -> str | None:
    return None if b is None else bytes(b).hex()


# -- users ---------------------------------------------------------------------------------------


def op_get_user(user_id: int):
    r = yield One("SELECT * FROM users WHERE id = ?", int(user_id))
    return None if r is None else user_from_row(r)


def op_get_user_by_name(name: str):
    r = yield One("SELECT * FROM users WHERE name = ?", name)
    return None if r is None else user_from_row(r)


def op_list_users():
    rows = yield All("SELECT * FROM users ORDER BY id")
    return [user_from_row(r) for r in rows]


def _need_user(user_id: int):
    r = yield One("SELECT * FROM users WHERE id = ?", int(user_id))
    if r is None:
        raise NotFound(f"user {user_id} not found")
    return user_from_row(r)


def _need_node(node_id: int):
    r = yield One("SELECT * FROM nodes WHERE id = ?", int(node_id))
    if r is None:
        raise NotFound(f"node {node_id} not found")
    return node_from_row(r)


def op_create_user(name: str, display_name: str, email: str, now: datetime):
    if (yield One("SELECT id FROM users WHERE name = ?", name)) is not None:
        raise Conflict(f'user "{name}" already exists')
    r = yield One(
        "INSERT INTO users (name, display_name, email, created_at) VALUES (?, ?, ?, ?) RETURNING *",
        name,
        display_name or "",
        email or "",
        now,
    )
    user = user_from_row(r)
    yield Emit("user.created", {"id": user.id, "name": user.name})
    return user


def op_rename_user(user_id: int, new_name: str):
    user = yield from _need_user(user_id)
    if user.name == new_name:
        return user
    if (yield One("SELECT id FROM users WHERE name = ?", new_name)) is not None:
        raise Conflict(f'user "{new_name}" already exists')
    yield Exec("UPDATE users SET name = ? WHERE id = ?", new_name, user.id)
    yield Emit("user.updated", {"id": user.id, "name": new_name, "old_name": user.name, "fields": ["name"]})
    return dataclasses.replace(user, name=new_name)


def op_delete_user(user_id: int):
    user = yield from _need_user(user_id)
    r = yield One("SELECT count(*) AS n FROM nodes WHERE user_id = ?", user.id)
    if int(r["n"]):
        raise Conflict(f'user "{user.name}" still owns {_plural(int(r["n"]), "node")}')
    for s in (yield All("SELECT * FROM shares WHERE user_id = ? ORDER BY node_id", user.id)):
        yield Exec("DELETE FROM shares WHERE node_id = ? AND user_id = ?", s["node_id"], user.id)
        yield Emit("share.deleted", {"node_id": int(s["node_id"]), "user_id": user.id})
    for k in (yield All("SELECT id, prefix FROM preauth_keys WHERE user_id = ? ORDER BY id", user.id)):
        yield Exec("DELETE FROM preauth_keys WHERE id = ?", k["id"])
        yield Emit("preauthkey.deleted", {"id": int(k["id"]), "user_id": user.id, "prefix": k["prefix"]})
    yield Exec("DELETE FROM users WHERE id = ?", user.id)
    yield Emit("user.deleted", {"id": user.id, "name": user.name})


# -- nodes ---------------------------------------------------------------------------------------


def op_get_node(node_id: int):
    r = yield One("SELECT * FROM nodes WHERE id = ?", int(node_id))
    return None if r is None else node_from_row(r)


def op_get_node_by(column: str, key: bytes):
    assert column in ("machine_key", "node_key")
    r = yield One(f"SELECT * FROM nodes WHERE {column} = ?", bytes(key))
    return None if r is None else node_from_row(r)


def op_list_nodes(user_id: int | None):
    if user_id is None:
        rows = yield All("SELECT * FROM nodes ORDER BY id")
    else:
        rows = yield All("SELECT * FROM nodes WHERE user_id = ? ORDER BY id", int(user_id))
    return [node_from_row(r) for r in rows]


def normalize_hostinfo(v: Any) -> dict[str, Any]:
    """Hostinfo as it comes back from the database (JSON round trip), so equal means equal."""
    return json.loads(json_text(dict(v or {})))


def _node_value(name: str, v: Any) -> Any:
    if name == "hostinfo":
        return normalize_hostinfo(v)
    return normalize_node_value(name, v)


def hostinfo_size(hostinfo: Any) -> int:
    """Bytes of `hostinfo` as the store writes it (compact JSON)."""
    return len(json_text(dict(hostinfo or {})).encode())


def check_hostinfo(hostinfo: Any) -> int:
    """Its size; TooLarge over MAX_HOSTINFO_BYTES (read at call time, so tests may lower it),
    BadValue with a NUL character in it."""
    text = json_text(dict(hostinfo or {}))
    size = len(text.encode())
    if size > base.MAX_HOSTINFO_BYTES:
        raise TooLarge(f"Hostinfo is {size} bytes; the limit is {base.MAX_HOSTINFO_BYTES}")
    if "\\u0000" in text:
        raise base.BadValue("Hostinfo contains a NUL character")
    return size


def _check_node_sizes(values: Mapping[str, Any]) -> None:
    """Client-supplied node fields within their caps: what a client sends is never stored whole
    when it is larger than any real client sends."""
    if "hostinfo" in values:
        check_hostinfo(values["hostinfo"])
    eps = values.get("endpoints") or ()
    if len(eps) > base.MAX_ENDPOINTS:
        raise TooLarge(f"{len(eps)} endpoints; the limit is {base.MAX_ENDPOINTS}")
    if any(len(e) > base.MAX_ENDPOINT_LEN for e in eps):
        raise TooLarge(f"an endpoint is longer than {base.MAX_ENDPOINT_LEN} characters")
    if len(values.get("hostname") or "") > base.MAX_HOSTNAME_LEN:
        raise TooLarge(f"hostname is longer than {base.MAX_HOSTNAME_LEN} characters")
    if "\0" in (values.get("hostname") or "") or any("\0" in e for e in eps):
        raise base.BadValue("a NUL character in the hostname or an endpoint")


def _use_auth_key(key_id: int):
    """A registration with pre-auth key `key_id`, inside the registration's own transaction (so
    two registrations with one single-use key cannot both win): a single-use key must be unused,
    and is marked used."""
    r = yield One("SELECT * FROM preauth_keys WHERE id = ?", int(key_id))
    if r is None:
        raise NotFound(f"pre-auth key {key_id} not found")
    key = preauth_key_from_row(r)
    if key.reusable:
        return key
    if key.used:
        raise Conflict(f"pre-auth key {key.prefix} has already been used")
    yield Exec("UPDATE preauth_keys SET used = ? WHERE id = ?", True, key.id)
    return key


def _emit_key_used(key) -> Any:
    if key is not None and not key.reusable:
        yield Emit("preauthkey.updated", {"id": key.id, "user_id": key.user_id, "fields": ["used"]})


def _check_node_unique(values: Mapping[str, Any], columns: Iterable[str], node_id: int | None):
    for col in NODE_UNIQUE:
        if col not in columns or values.get(col) is None:
            continue
        r = yield One(f"SELECT id FROM nodes WHERE {col} = ?", values[col])
        if r is not None and int(r["id"]) != node_id:
            raise Conflict(node_conflict_message(col, values))


def op_create_node(node: Node, now: datetime):
    values = {name: _node_value(name, getattr(node, name)) for name in NODE_FIELDS}
    if values["created_at"] is None:
        values["created_at"] = now
    _check_node_sizes(values)
    yield from _need_user(values["user_id"])
    key = None
    if values["auth_key_id"] is not None:
        key = yield from _use_auth_key(values["auth_key_id"])
    yield from _check_node_unique(values, NODE_UNIQUE, None)
    cols = ", ".join(NODE_FIELDS)
    marks = ", ".join("?" for _ in NODE_FIELDS)
    r = yield One(f"INSERT INTO nodes ({cols}) VALUES ({marks}) RETURNING *", *values.values())
    created = node_from_row(r)
    yield Emit(
        "node.created",
        {"id": created.id, "user_id": created.user_id, "node_key": _hex(created.node_key)},
    )
    yield from _emit_key_used(key)
    return created


def op_update_node(node_id: int, fields: Mapping[str, Any]):
    bad = sorted(set(fields) - NODE_UPDATABLE)
    if bad:
        raise ValueError(f"update_node cannot set {', '.join(bad)}")
    current = yield from _need_node(node_id)
    new = {name: _node_value(name, v) for name, v in fields.items()}
    _check_node_sizes(new)
    key = None
    if new.get("auth_key_id") is not None:
        key = yield from _use_auth_key(new["auth_key_id"])
    changed = sorted(name for name, v in new.items() if getattr(current, name) != v)
    if not changed:
        yield from _emit_key_used(key)
        return current
    if "user_id" in changed:
        yield from _need_user(new["user_id"])
    yield from _check_node_unique(new, changed, current.id)
    sets = ", ".join(f"{name} = ?" for name in changed)
    r = yield One(f"UPDATE nodes SET {sets} WHERE id = ? RETURNING *", *(new[n] for n in changed), current.id)
    updated = node_from_row(r)
    yield Emit("node.updated", {"id": updated.id, "user_id": updated.user_id, "fields": changed})
    yield from _emit_key_used(key)
    return updated


def op_delete_node(node_id: int):
    node = yield from _need_node(node_id)
    for s in (yield All("SELECT user_id FROM shares WHERE node_id = ? ORDER BY user_id", node.id)):
        yield Exec("DELETE FROM shares WHERE node_id = ? AND user_id = ?", node.id, s["user_id"])
        yield Emit("share.deleted", {"node_id": node.id, "user_id": int(s["user_id"])})
    yield Exec("DELETE FROM presence WHERE node_id = ?", node.id)  # node.deleted implies offline
    yield Exec("DELETE FROM nodes WHERE id = ?", node.id)
    yield Emit(
        "node.deleted",
        {
            "id": node.id,
            "user_id": node.user_id,
            "node_key": _hex(node.node_key),
            "machine_key": _hex(node.machine_key),
            "given_name": node.given_name,
            "ipv4": node.ipv4,
            "ipv6": node.ipv6,
            "tags": list(node.tags),
        },
    )


# -- pre-auth keys -------------------------------------------------------------------------------


def op_create_preauth_key(user_id, prefix, key_hash, reusable, ephemeral, tags, expiration, now):
    yield from _need_user(user_id)
    if (yield One("SELECT id FROM preauth_keys WHERE prefix = ?", prefix)) is not None:
        raise Conflict(f'a pre-auth key with prefix "{prefix}" already exists')
    r = yield One(
        "INSERT INTO preauth_keys (prefix, key_hash, user_id, reusable, ephemeral, used, tags,"
        " expiration, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        prefix,
        bytes(key_hash),
        int(user_id),
        bool(reusable),
        bool(ephemeral),
        False,
        str_tuple(tags),
        opt_utc(expiration),
        now,
    )
    key = preauth_key_from_row(r)
    yield Emit("preauthkey.created", {"id": key.id, "user_id": key.user_id, "prefix": key.prefix})
    return key


def op_get_preauth_key(key_id: int):
    r = yield One("SELECT * FROM preauth_keys WHERE id = ?", int(key_id))
    return None if r is None else preauth_key_from_row(r)


def op_get_preauth_key_by_prefix(prefix: str):
    r = yield One("SELECT * FROM preauth_keys WHERE prefix = ?", prefix)
    return None if r is None else preauth_key_from_row(r)


def op_list_preauth_keys(user_id: int | None):
    if user_id is None:
        rows = yield All("SELECT * FROM preauth_keys ORDER BY id")
    else:
        rows = yield All("SELECT * FROM preauth_keys WHERE user_id = ? ORDER BY id", int(user_id))
    return [preauth_key_from_row(r) for r in rows]


def op_expire_preauth_key(key_id: int, now: datetime):
    r = yield One("SELECT * FROM preauth_keys WHERE id = ?", int(key_id))
    if r is None:
        raise NotFound(f"pre-auth key {key_id} not found")
    key = preauth_key_from_row(r)
    if key.expiration is not None and key.expiration <= now:
        return key
    yield Exec("UPDATE preauth_keys SET expiration = ? WHERE id = ?", now, key.id)
    yield Emit("preauthkey.updated", {"id": key.id, "user_id": key.user_id, "fields": ["expiration"]})
    return dataclasses.replace(key, expiration=now)


def op_delete_preauth_key(key_id: int):
    r = yield One("SELECT * FROM preauth_keys WHERE id = ?", int(key_id))
    if r is None:
        raise NotFound(f"pre-auth key {key_id} not found")
    yield Exec("DELETE FROM preauth_keys WHERE id = ?", int(key_id))
    yield Emit("preauthkey.deleted", {"id": int(r["id"]), "user_id": int(r["user_id"]), "prefix": r["prefix"]})


# -- API keys ------------------------------------------------------------------------------------


def op_create_api_key(prefix: str, key_hash: bytes, expiration: datetime | None, now: datetime):
    if (yield One("SELECT id FROM api_keys WHERE prefix = ?", prefix)) is not None:
        raise Conflict(f'an API key with prefix "{prefix}" already exists')
    r = yield One(
        "INSERT INTO api_keys (prefix, key_hash, expiration, created_at) VALUES (?, ?, ?, ?) RETURNING *",
        prefix,
        bytes(key_hash),
        opt_utc(expiration),
        now,
    )
    key = api_key_from_row(r)
    yield Emit("apikey.created", {"id": key.id, "prefix": key.prefix})
    return key


def op_get_api_key(key_id: int):
    r = yield One("SELECT * FROM api_keys WHERE id = ?", int(key_id))
    return None if r is None else api_key_from_row(r)


def op_get_api_key_by_prefix(prefix: str):
    r = yield One("SELECT * FROM api_keys WHERE prefix = ?", prefix)
    return None if r is None else api_key_from_row(r)


def op_list_api_keys():
    return [api_key_from_row(r) for r in (yield All("SELECT * FROM api_keys ORDER BY id"))]


def op_expire_api_key(key_id: int, now: datetime):
    r = yield One("SELECT * FROM api_keys WHERE id = ?", int(key_id))
    if r is None:
        raise NotFound(f"API key {key_id} not found")
    key = api_key_from_row(r)
    if key.expiration is not None and key.expiration <= now:
        return key
    yield Exec("UPDATE api_keys SET expiration = ? WHERE id = ?", now, key.id)
    yield Emit("apikey.updated", {"id": key.id, "fields": ["expiration"]})
    return dataclasses.replace(key, expiration=now)


def op_delete_api_key(key_id: int):
    r = yield One("SELECT id, prefix FROM api_keys WHERE id = ?", int(key_id))
    if r is None:
        raise NotFound(f"API key {key_id} not found")
    yield Exec("DELETE FROM api_keys WHERE id = ?", int(key_id))
    yield Emit("apikey.deleted", {"id": int(r["id"]), "prefix": r["prefix"]})


def op_touch_api_key(key_id: int, now: datetime):
    yield Exec("UPDATE api_keys SET last_seen = ? WHERE id = ?", now, int(key_id))


# -- policy --------------------------------------------------------------------------------------


def op_get_policy():
    r = yield One("SELECT * FROM policies ORDER BY version DESC LIMIT 1")
    return None if r is None else policy_from_row(r)


def op_set_policy(text: str, now: datetime):
    r = yield One("SELECT coalesce(max(version), 0) AS v FROM policies")
    version = int(r["v"]) + 1
    r = yield One(
        "INSERT INTO policies (version, text, created_at) VALUES (?, ?, ?) RETURNING *", version, text, now
    )
    yield Emit("policy.set", {"version": version})
    return policy_from_row(r)


# -- pending registrations -----------------------------------------------------------------------


def _drop_pending(rows, reason: str):
    for v in rows:
        yield Exec("DELETE FROM pending_registrations WHERE id = ?", v["id"])
        yield Emit("registration.deleted", {"id": v["id"], "reason": reason})


def op_put_pending_registration(reg: PendingRegistration, limit: int, byte_limit: int, per_source: int,
                                stale_before: datetime):
    hostinfo = normalize_hostinfo(reg.hostinfo)
    size = check_hostinfo(hostinfo)
    # expired ones first: they hold room that real logins need
    stale = yield All(
        "SELECT id FROM pending_registrations WHERE created_at < ? AND id <> ? ORDER BY created_at, pos",
        utc(stale_before),
        reg.id,
    )
    yield from _drop_pending(stale, "expired")
    # one waiting login per machine: a client that starts over replaces its own
    mine = yield All(
        "SELECT id FROM pending_registrations WHERE machine_key = ? AND id <> ? AND node_id IS NULL"
        " ORDER BY created_at, pos",
        bytes(reg.machine_key),
        reg.id,
    )
    yield from _drop_pending(mine, "replaced")
    # a source over its share gives up its own oldest, never anyone else's
    n_src = int((yield One(
        "SELECT count(*) AS n FROM pending_registrations WHERE source = ? AND id <> ?", reg.source, reg.id
    ))["n"])
    if n_src >= per_source:
        victims = yield All(
            "SELECT id FROM pending_registrations WHERE source = ? AND id <> ? ORDER BY created_at, pos LIMIT ?",
            reg.source,
            reg.id,
            n_src - max(per_source, 1) + 1,
        )
        yield from _drop_pending(victims, "dropped")
    totals = yield One(
        "SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM pending_registrations WHERE id <> ?", reg.id
    )
    if int(totals["n"]) + 1 > limit or int(totals["b"]) + size > byte_limit:
        raise StoreFull("too many logins are waiting for approval; try again later")
    r = yield One(
        "INSERT INTO pending_registrations (id, machine_key, node_key, hostinfo, expiry, created_at,"
        " node_id, user_id, source, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET machine_key = excluded.machine_key,"
        " node_key = excluded.node_key, hostinfo = excluded.hostinfo, expiry = excluded.expiry,"
        " created_at = excluded.created_at, node_id = excluded.node_id, user_id = excluded.user_id,"
        " source = excluded.source, size = excluded.size"
        " RETURNING *",
        reg.id,
        bytes(reg.machine_key),
        bytes(reg.node_key),
        hostinfo,
        opt_utc(reg.expiry),
        utc(reg.created_at),
        reg.node_id,
        reg.user_id,
        reg.source,
        size,
    )
    stored = registration_from_row(r)
    yield Emit("registration.pending", {"id": stored.id})
    return stored


def op_get_pending_registration(reg_id: str):
    r = yield One("SELECT * FROM pending_registrations WHERE id = ?", reg_id)
    return None if r is None else registration_from_row(r)


def op_complete_pending_registration(reg_id: str, node_id: int, user_id: int):
    r = yield One(
        "UPDATE pending_registrations SET node_id = ?, user_id = ? WHERE id = ? RETURNING *",
        int(node_id),
        int(user_id),
        reg_id,
    )
    if r is None:
        raise NotFound(f'registration "{reg_id}" not found (it may have expired)')
    yield Emit("registration.completed", {"id": reg_id, "node_id": int(node_id), "user_id": int(user_id)})
    return registration_from_row(r)


def op_delete_pending_registration(reg_id: str):
    r = yield One("DELETE FROM pending_registrations WHERE id = ? RETURNING id", reg_id)
    if r is not None:
        yield Emit("registration.deleted", {"id": reg_id})


def op_delete_pending_registrations_before(before: datetime):
    rows = yield All(
        "DELETE FROM pending_registrations WHERE created_at < ? RETURNING id, pos", utc(before)
    )
    for r in sorted(rows, key=lambda r: r["pos"]):
        yield Emit("registration.deleted", {"id": r["id"], "reason": "expired"})
    return len(rows)


# -- relays --------------------------------------------------------------------------------------


def op_upsert_relay(relay: DerpRelay):
    values = relay_values(relay)
    r = yield One("SELECT * FROM derp_relays WHERE region_id = ? AND name = ?", values["region_id"], values["name"])
    if r is not None:
        old = relay_values(relay_from_row(r))
        changed = sorted(c for c in RELAY_COLUMNS if c != "heartbeat_at" and old[c] != values[c])
        if not changed:
            if old["heartbeat_at"] != values["heartbeat_at"]:
                yield Exec(
                    "UPDATE derp_relays SET heartbeat_at = ? WHERE region_id = ? AND name = ?",
                    values["heartbeat_at"],
                    values["region_id"],
                    values["name"],
                )
            return relay_from_row({**values})
        sets = ", ".join(f"{c} = ?" for c in RELAY_COLUMNS[2:])
        yield Exec(
            f"UPDATE derp_relays SET {sets} WHERE region_id = ? AND name = ?",
            *(values[c] for c in RELAY_COLUMNS[2:]),
            values["region_id"],
            values["name"],
        )
    else:
        changed = ["new"]
        cols = ", ".join(RELAY_COLUMNS)
        marks = ", ".join("?" for _ in RELAY_COLUMNS)
        yield Exec(f"INSERT INTO derp_relays ({cols}) VALUES ({marks})", *values.values())
    yield Emit("relay.updated", {"region_id": values["region_id"], "name": values["name"], "fields": changed})
    return relay_from_row({**values})


def op_list_relays():
    return [relay_from_row(r) for r in (yield All("SELECT * FROM derp_relays ORDER BY region_id, name"))]


def op_delete_relay(region_id: int, name: str):
    r = yield One(
        "DELETE FROM derp_relays WHERE region_id = ? AND name = ? RETURNING region_id", int(region_id), name
    )
    if r is None:
        raise NotFound(f'relay "{name}" in region {region_id} not found')
    yield Emit("relay.deleted", {"region_id": int(region_id), "name": name})


# -- shares --------------------------------------------------------------------------------------


def op_add_share(node_id: int, user_id: int, now: datetime):
    node = yield from _need_node(node_id)
    user = yield from _need_user(user_id)
    if node.user_id == user.id and not node.is_tagged:
        raise Conflict(f'node "{node.given_name}" already belongs to user "{user.name}"')
    if (yield One("SELECT 1 AS x FROM shares WHERE node_id = ? AND user_id = ?", node.id, user.id)) is not None:
        raise Conflict(f'node "{node.given_name}" is already shared with user "{user.name}"')
    r = yield One(
        "INSERT INTO shares (node_id, user_id, created_at) VALUES (?, ?, ?) RETURNING *", node.id, user.id, now
    )
    yield Emit("share.created", {"node_id": node.id, "user_id": user.id})
    return share_from_row(r)


def op_remove_share(node_id: int, user_id: int):
    r = yield One(
        "DELETE FROM shares WHERE node_id = ? AND user_id = ? RETURNING node_id", int(node_id), int(user_id)
    )
    if r is None:
        raise NotFound(f"node {node_id} is not shared with user {user_id}")
    yield Emit("share.deleted", {"node_id": int(node_id), "user_id": int(user_id)})


def op_list_shares(node_id: int | None):
    if node_id is None:
        rows = yield All("SELECT * FROM shares ORDER BY node_id, user_id")
    else:
        rows = yield All("SELECT * FROM shares WHERE node_id = ? ORDER BY user_id", int(node_id))
    return [share_from_row(r) for r in rows]


# -- presence ------------------------------------------------------------------------------------
#
# A node is online while it has at least one presence row. Changes are recorded only on the
# transitions (first row inserted: presence.online; last row deleted: presence.offline), never for
# a lease renewal, so heartbeats cost no change-log rows.


def presence_from_row(r: Mapping[str, Any]) -> Presence:
    return Presence(
        node_id=int(r["node_id"]), replica_id=r["replica_id"], lease_expires=read_time(r["lease_expires"])
    )


def _presence_add(replica_id: str, node_id: int, lease_expires: datetime):
    node_id = int(node_id)
    mine = yield One("SELECT node_id FROM presence WHERE node_id = ? AND replica_id = ?", node_id, replica_id)
    if mine is not None:
        yield Exec(
            "UPDATE presence SET lease_expires = ? WHERE node_id = ? AND replica_id = ?",
            lease_expires,
            node_id,
            replica_id,
        )
        return False
    others = yield One("SELECT count(*) AS n FROM presence WHERE node_id = ?", node_id)
    yield Exec(
        "INSERT INTO presence (node_id, replica_id, lease_expires) VALUES (?, ?, ?)", node_id, replica_id, lease_expires
    )
    if int(others["n"]):
        return False
    yield Emit("presence.online", {"node_id": node_id, "replica_id": replica_id})
    return True


def _presence_remove(replica_id: str, node_id: int, now: datetime, reason: str):
    node_id = int(node_id)
    r = yield One(
        "DELETE FROM presence WHERE node_id = ? AND replica_id = ? RETURNING node_id", node_id, replica_id
    )
    if r is None:
        return False
    left = yield One("SELECT count(*) AS n FROM presence WHERE node_id = ?", node_id)
    if int(left["n"]):
        return False
    yield Exec("UPDATE nodes SET last_seen = ? WHERE id = ?", now, node_id)
    yield Emit(
        "presence.offline",
        {"node_id": node_id, "replica_id": replica_id, "last_seen": time_text(now), "reason": reason},
    )
    return True


def op_update_presence(replica_id: str, add: Sequence[int], remove: Sequence[int], lease_expires: datetime, now: datetime):
    lease_expires, now = utc(lease_expires), utc(now)
    for node_id in add:
        yield from _presence_add(replica_id, node_id, lease_expires)
    for node_id in remove:
        yield from _presence_remove(replica_id, node_id, now, "closed")


def op_renew_presence(replica_id: str, node_ids: Sequence[int], lease_expires: datetime, now: datetime):
    lease_expires, now = utc(lease_expires), utc(now)
    yield Exec("UPDATE presence SET lease_expires = ? WHERE replica_id = ?", lease_expires, replica_id)
    have = {int(r["node_id"]) for r in (yield All("SELECT node_id FROM presence WHERE replica_id = ?", replica_id))}
    want = {int(n) for n in node_ids}
    for node_id in sorted(want - have):
        yield from _presence_add(replica_id, node_id, lease_expires)
    for node_id in sorted(have - want):
        yield from _presence_remove(replica_id, node_id, now, "closed")


def op_reap_presence(now: datetime):
    now = utc(now)
    rows = yield All(
        "SELECT node_id, replica_id FROM presence WHERE lease_expires < ? ORDER BY node_id, replica_id", now
    )
    offline: list[int] = []
    for r in rows:
        if (yield from _presence_remove(r["replica_id"], int(r["node_id"]), now, "expired")):
            offline.append(int(r["node_id"]))
    return offline


def op_list_presence():
    rows = yield All("SELECT * FROM presence ORDER BY node_id, replica_id")
    return [presence_from_row(r) for r in rows]


# -- TXT records (ACME DNS-01 through /machine/set-dns) ------------------------------------------


def _txt_name(name: str) -> str:
    key = str(name).strip().rstrip(".").lower()
    if not key:
        raise ValueError("TXT record name is empty")
    return key


def op_set_dns_txt(name: str, values: Sequence[str], expires_at: datetime):
    key, vals = _txt_name(name), str_tuple(values)
    if vals:
        yield Exec("DELETE FROM dns_txt WHERE name = ?", key)
        yield Exec("INSERT INTO dns_txt (name, vals, expires_at) VALUES (?, ?, ?)", key, vals, utc(expires_at))
    else:
        yield Exec("DELETE FROM dns_txt WHERE name = ?", key)
    yield Emit("dnstxt.set", {"name": key})


def op_get_dns_txt(name: str, now: datetime):
    r = yield One("SELECT * FROM dns_txt WHERE name = ? AND expires_at > ?", _txt_name(name), utc(now))
    return None if r is None else (read_tuple(r["vals"]), read_time(r["expires_at"]))


def op_list_dns_txt(now: datetime):
    rows = yield All("SELECT * FROM dns_txt WHERE expires_at > ? ORDER BY name", utc(now))
    return [(r["name"], read_tuple(r["vals"]), read_time(r["expires_at"])) for r in rows]


def op_purge_dns_txt(now: datetime):
    rows = yield All("DELETE FROM dns_txt WHERE expires_at <= ? RETURNING name", utc(now))
    return len(rows)


# -- SSH check mode ------------------------------------------------------------------------------

SSH_DECISIONS = ("approved", "rejected")


def ssh_check_from_row(r: Mapping[str, Any]) -> SSHCheck:
    return SSHCheck(id=r["id"], src_node_id=int(r["src_node_id"]), dst_node_id=int(r["dst_node_id"]),
                    local_user=r["local_user"], decision=r["decision"], created_at=read_time(r["created_at"]),
                    expires_at=read_time(r["expires_at"]))


def op_create_ssh_check(check: SSHCheck):
    r = yield One("SELECT count(*) AS n FROM ssh_checks WHERE decision = '' AND expires_at > ?",
                  utc(check.created_at))
    if int(r["n"]) >= base.MAX_PENDING_SSH_CHECKS:
        raise StoreFull("too many SSH sessions are waiting for approval; try again later")
    yield Exec("INSERT INTO ssh_checks (id, src_node_id, dst_node_id, local_user, decision, created_at, expires_at)"
               " VALUES (?, ?, ?, ?, '', ?, ?)", check.id, int(check.src_node_id), int(check.dst_node_id),
               check.local_user, utc(check.created_at), utc(check.expires_at))
    return check


def op_get_ssh_check(check_id: str, now: datetime):
    r = yield One("SELECT * FROM ssh_checks WHERE id = ? AND expires_at > ?", str(check_id), utc(now))
    return None if r is None else ssh_check_from_row(r)


def op_decide_ssh_check(check_id: str, decision: str, now: datetime):
    if decision not in SSH_DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(SSH_DECISIONS)}")
    r = yield One("SELECT * FROM ssh_checks WHERE id = ? AND expires_at > ?", str(check_id), utc(now))
    if r is None:
        raise NotFound(f"no SSH session is waiting with auth id {check_id}")
    if r["decision"] and r["decision"] != decision:
        raise Conflict(f"SSH session {check_id} was already {r['decision']}")
    yield Exec("UPDATE ssh_checks SET decision = ? WHERE id = ?", decision, str(check_id))
    yield Emit("sshcheck.decided", {"id": str(check_id), "decision": decision})
    return dataclasses.replace(ssh_check_from_row(r), decision=decision)


def op_purge_ssh_checks(now: datetime):
    rows = yield All("DELETE FROM ssh_checks WHERE expires_at <= ? RETURNING id", utc(now))
    return len(rows)


# -- change log ----------------------------------------------------------------------------------


def op_latest_seq():
    r = yield One("SELECT coalesce(max(seq), 0) AS s FROM changes")
    return int(r["s"])


def op_changes_since(seq: int, limit: int):
    rows = yield All("SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", int(seq), int(limit))
    return [change_from_row(r) for r in rows]


# Subscriber positions (no change rows: a position is bookkeeping, not tailnet state).


def op_record_position(subscriber_id: str, seq: int, lease_expires: datetime):
    yield Exec("DELETE FROM change_subscribers WHERE id = ?", subscriber_id)
    yield Exec(
        "INSERT INTO change_subscribers (id, seq, lease_expires) VALUES (?, ?, ?)",
        subscriber_id,
        int(seq),
        utc(lease_expires),
    )


def op_drop_position(subscriber_id: str):
    yield Exec("DELETE FROM change_subscribers WHERE id = ?", subscriber_id)


def op_list_positions(now: datetime):
    rows = yield All("SELECT * FROM change_subscribers WHERE lease_expires >= ? ORDER BY id", utc(now))
    return [(r["id"], int(r["seq"]), read_time(r["lease_expires"])) for r in rows]


def op_trim_changes(now: datetime, max_rows: int):
    yield Exec("DELETE FROM change_subscribers WHERE lease_expires < ?", utc(now))
    r = yield One(
        "SELECT (SELECT min(seq) FROM change_subscribers) AS keep, (SELECT max(seq) FROM changes) AS newest,"
        " (SELECT min(seq) FROM changes) AS oldest"
    )
    if r["newest"] is None:
        return 0
    # everything a live subscriber has read (seq <= its position) may go, but never the newest
    # row: seqs are max(seq) + 1, and a gap is how a subscriber learns it was trimmed past
    upto = int(r["newest"]) - 1
    if r["keep"] is not None:
        upto = min(upto, int(r["keep"]))
    upto = min(upto, int(r["oldest"]) + int(max_rows) - 1)
    if upto < int(r["oldest"]):
        return 0
    rows = yield One("SELECT count(*) AS n FROM changes WHERE seq <= ?", upto)
    yield Exec("DELETE FROM changes WHERE seq <= ?", upto)
    return int(rows["n"])


# =================================================================================================
# The Store methods on top of the operations: a store implementation provides `_read(op, *args)`
# and `_write(op, *args)` (run the generator `op(*args)`, the latter in one write transaction) plus
# open/close/subscribe.
# =================================================================================================


class OpsStore(Store):
    #: how many pending registrations to keep; None means base.MAX_PENDING_REGISTRATIONS (read at
    #: call time, so tests may monkeypatch it)
    max_pending_registrations: int | None = None
    #: pending registrations older than this are dropped before counting (register.py's lifetime)
    pending_lifetime = timedelta(minutes=15)
    #: how long a subscriber's position holds the log back without being renewed (seconds)
    subscriber_lease: float = base.SUBSCRIBER_LEASE_SECONDS

    @abc.abstractmethod
    async def _read(self, op, *args: Any) -> Any:
        """Run the operation generator `op(*args)` (a store may call `op` again to retry)."""

    @abc.abstractmethod
    async def _write(self, op, *args: Any) -> Any:
        """Run `op(*args)` in one write transaction, with its change rows."""

    def _pending_limit(self) -> int:
        if self.max_pending_registrations is not None:
            return int(self.max_pending_registrations)
        from trioscale.shared.store import base

        return int(base.MAX_PENDING_REGISTRATIONS)

    # users
    async def create_user(self, name: str, display_name: str = "", email: str = "") -> User:
        return await self._write(op_create_user, name, display_name, email, utcnow())

    async def get_user(self, user_id: int) -> User | None:
        return await self._read(op_get_user, user_id)

    async def get_user_by_name(self, name: str) -> User | None:
        return await self._read(op_get_user_by_name, name)

    async def list_users(self) -> list[User]:
        return await self._read(op_list_users)

    async def rename_user(self, user_id: int, new_name: str) -> User:
        return await self._write(op_rename_user, user_id, new_name)

    async def delete_user(self, user_id: int) -> None:
        await self._write(op_delete_user, user_id)

    # nodes
    async def create_node(self, node: Node) -> Node:
        return await self._write(op_create_node, node, utcnow())

    async def get_node(self, node_id: int) -> Node | None:
        return await self._read(op_get_node, node_id)

    async def get_node_by_machine_key(self, machine_key: bytes) -> Node | None:
        return await self._read(op_get_node_by, "machine_key", machine_key)

    async def get_node_by_node_key(self, node_key: bytes) -> Node | None:
        return await self._read(op_get_node_by, "node_key", node_key)

    async def list_nodes(self, user_id: int | None = None) -> list[Node]:
        return await self._read(op_list_nodes, user_id)

    async def update_node(self, node_id: int, **fields: Any) -> Node:
        return await self._write(op_update_node, node_id, fields)

    async def delete_node(self, node_id: int) -> None:
        await self._write(op_delete_node, node_id)

    # pre-auth keys
    async def create_preauth_key(
        self,
        user_id: int,
        prefix: str,
        key_hash: bytes,
        *,
        reusable: bool = False,
        ephemeral: bool = False,
        tags: Sequence[str] = (),
        expiration: datetime | None = None,
    ) -> PreAuthKey:
        return await self._write(
            op_create_preauth_key, user_id, prefix, key_hash, reusable, ephemeral, tags, expiration, utcnow()
        )

    async def get_preauth_key(self, key_id: int) -> PreAuthKey | None:
        return await self._read(op_get_preauth_key, key_id)

    async def get_preauth_key_by_prefix(self, prefix: str) -> PreAuthKey | None:
        return await self._read(op_get_preauth_key_by_prefix, prefix)

    async def list_preauth_keys(self, user_id: int | None = None) -> list[PreAuthKey]:
        return await self._read(op_list_preauth_keys, user_id)

    async def expire_preauth_key(self, key_id: int, now: datetime) -> PreAuthKey:
        return await self._write(op_expire_preauth_key, key_id, utc(now))

    async def delete_preauth_key(self, key_id: int) -> None:
        await self._write(op_delete_preauth_key, key_id)

    # API keys
    async def create_api_key(self, prefix: str, key_hash: bytes, expiration: datetime | None = None) -> ApiKey:
        return await self._write(op_create_api_key, prefix, key_hash, expiration, utcnow())

    async def get_api_key(self, key_id: int) -> ApiKey | None:
        return await self._read(op_get_api_key, key_id)

    async def get_api_key_by_prefix(self, prefix: str) -> ApiKey | None:
        return await self._read(op_get_api_key_by_prefix, prefix)

    async def list_api_keys(self) -> list[ApiKey]:
        return await self._read(op_list_api_keys)

    async def expire_api_key(self, key_id: int, now: datetime) -> ApiKey:
        return await self._write(op_expire_api_key, key_id, utc(now))

    async def delete_api_key(self, key_id: int) -> None:
        await self._write(op_delete_api_key, key_id)

    async def touch_api_key(self, key_id: int, now: datetime) -> None:
        await self._write(op_touch_api_key, key_id, utc(now))

    # policy
    async def get_policy(self) -> Policy | None:
        return await self._read(op_get_policy)

    async def set_policy(self, text: str) -> Policy:
        return await self._write(op_set_policy, text, utcnow())

    # pending registrations
    async def put_pending_registration(self, reg: PendingRegistration) -> PendingRegistration:
        return await self._write(
            op_put_pending_registration,
            reg,
            self._pending_limit(),
            int(base.MAX_PENDING_BYTES),
            int(base.MAX_PENDING_PER_SOURCE),
            utc(reg.created_at) - self.pending_lifetime,
        )

    async def get_pending_registration(self, reg_id: str) -> PendingRegistration | None:
        return await self._read(op_get_pending_registration, reg_id)

    async def complete_pending_registration(self, reg_id: str, node_id: int, user_id: int) -> PendingRegistration:
        return await self._write(op_complete_pending_registration, reg_id, node_id, user_id)

    async def delete_pending_registration(self, reg_id: str) -> None:
        await self._write(op_delete_pending_registration, reg_id)

    async def delete_pending_registrations_before(self, before: datetime) -> int:
        return await self._write(op_delete_pending_registrations_before, before)

    # relays
    async def upsert_relay(self, relay: DerpRelay) -> DerpRelay:
        return await self._write(op_upsert_relay, relay)

    async def list_relays(self) -> list[DerpRelay]:
        return await self._read(op_list_relays)

    async def delete_relay(self, region_id: int, name: str) -> None:
        await self._write(op_delete_relay, region_id, name)

    # shares
    async def add_share(self, node_id: int, user_id: int) -> Share:
        return await self._write(op_add_share, node_id, user_id, utcnow())

    async def remove_share(self, node_id: int, user_id: int) -> None:
        await self._write(op_remove_share, node_id, user_id)

    async def list_shares(self, node_id: int | None = None) -> list[Share]:
        return await self._read(op_list_shares, node_id)

    # presence
    async def update_presence(
        self,
        replica_id: str,
        add: Sequence[int] = (),
        remove: Sequence[int] = (),
        *,
        lease_expires: datetime,
        now: datetime | None = None,
    ) -> None:
        await self._write(op_update_presence, replica_id, tuple(add), tuple(remove), lease_expires, now or utcnow())

    async def renew_presence(
        self, replica_id: str, node_ids: Sequence[int], *, lease_expires: datetime, now: datetime | None = None
    ) -> None:
        await self._write(op_renew_presence, replica_id, tuple(node_ids), lease_expires, now or utcnow())

    async def reap_presence(self, now: datetime) -> list[int]:
        return await self._write(op_reap_presence, now)

    async def list_presence(self) -> list[Presence]:
        return await self._read(op_list_presence)

    # change log
    # TXT records
    async def set_dns_txt(self, name: str, values: Sequence[str], expires_at: datetime) -> None:
        await self._write(op_set_dns_txt, name, values, expires_at)

    async def get_dns_txt(self, name: str, now: datetime) -> tuple[tuple[str, ...], datetime] | None:
        return await self._read(op_get_dns_txt, name, now)

    async def list_dns_txt(self, now: datetime) -> list[tuple[str, tuple[str, ...], datetime]]:
        return await self._read(op_list_dns_txt, now)

    async def purge_dns_txt(self, now: datetime) -> int:
        return await self._write(op_purge_dns_txt, now)

    async def create_ssh_check(self, check: SSHCheck) -> SSHCheck:
        return await self._write(op_create_ssh_check, check)

    async def get_ssh_check(self, check_id: str, now: datetime) -> SSHCheck | None:
        return await self._read(op_get_ssh_check, check_id, now)

    async def decide_ssh_check(self, check_id: str, decision: str, now: datetime) -> SSHCheck:
        return await self._write(op_decide_ssh_check, check_id, decision, now)

    async def purge_ssh_checks(self, now: datetime) -> int:
        return await self._write(op_purge_ssh_checks, now)

    async def latest_seq(self) -> int:
        return await self._read(op_latest_seq)

    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        return await self._read(op_changes_since, seq, limit)

    async def record_position(self, subscriber_id: str, seq: int, lease_expires: datetime) -> None:
        await self._write(op_record_position, subscriber_id, seq, lease_expires)

    async def drop_position(self, subscriber_id: str) -> None:
        await self._write(op_drop_position, subscriber_id)

    async def list_positions(self, now: datetime) -> list[tuple[str, int, datetime]]:
        return await self._read(op_list_positions, now)

    async def trim_changes(self, now: datetime, max_rows: int = 10000) -> int:
        return await self._write(op_trim_changes, now, max_rows)
