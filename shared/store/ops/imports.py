"""Records brought from another server (Headscale's database) inserted as they were: their ids, so
scripts that stored them keep working, and their times (created, last seen, expiry).

The same checks as a record made here (unique names, keys and addresses; the owner exists), plus
the id: one already taken is a Conflict (the caller then lets the store choose). Later ids
continue above the highest: SQLite's AUTOINCREMENT follows an explicit id by itself; a PostgreSQL
identity column does not, so there the sequence is moved up in the same transaction.
"""

from __future__ import annotations

from typing import Any

from trioscale.shared.model import ApiKey, Node, PreAuthKey, User
from trioscale.shared.store.base import Conflict
from trioscale.shared.store.ops.limits import check_node_sizes
from trioscale.shared.store.ops.nodes import NODE_UNIQUE, _check_node_unique, _hex, _node_value
from trioscale.shared.store.ops.preauth_keys import emit_key_used, use_auth_key
from trioscale.shared.store.ops.query import Emit, One
from trioscale.shared.store.ops.users import need_user
from trioscale.shared.store.rows import (
    NODE_FIELDS,
    api_key_from_row,
    node_from_row,
    opt_utc,
    preauth_key_from_row,
    str_tuple,
    user_from_row,
    utc,
)

__all__ = ["op_import_record", "IMPORTED_TABLES"]

#: the tables whose ids an import keeps
IMPORTED_TABLES = ("users", "nodes", "preauth_keys", "api_keys")


def op_import_record(record: Any, sync_sequence: bool):
    """Insert `record` (a User, Node, PreAuthKey or ApiKey) with its id and times.
    `sync_sequence`: the database's id sequence must be moved past an explicit id (PostgreSQL)."""
    if isinstance(record, User):
        table, made = "users", (yield from _user(record))
    elif isinstance(record, Node):
        table, made = "nodes", (yield from _node(record))
    elif isinstance(record, PreAuthKey):
        table, made = "preauth_keys", (yield from _preauth_key(record))
    elif isinstance(record, ApiKey):
        table, made = "api_keys", (yield from _api_key(record))
    else:
        raise TypeError(f"cannot import a {type(record).__name__}")
    if sync_sequence:
        yield One(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    return made


def _id_free(table: str, record_id: int, what: str):
    if int(record_id) <= 0:
        raise ValueError(f"an imported {what} needs its id")
    if (yield One(f"SELECT id FROM {table} WHERE id = ?", int(record_id))) is not None:
        raise Conflict(f"{what} id {record_id} is taken")


def _user(u: User):
    yield from _id_free("users", u.id, "user")
    if (yield One("SELECT id FROM users WHERE name = ?", u.name)) is not None:
        raise Conflict(f'user "{u.name}" already exists')
    if u.provider_id and (yield One("SELECT id FROM users WHERE provider_id = ?", u.provider_id)) is not None:
        raise Conflict(f'another user has the login identity "{u.provider_id}"')
    r = yield One(
        "INSERT INTO users (id, name, display_name, email, created_at, provider, provider_id, profile_pic_url)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        int(u.id), u.name, u.display_name or "", u.email or "", utc(u.created_at), u.provider or "",
        u.provider_id or "", u.profile_pic_url or "",
    )
    user = user_from_row(r)
    yield Emit("user.created", {"id": user.id, "name": user.name})
    return user


def _node(node: Node):
    yield from _id_free("nodes", node.id, "node")
    values = {name: _node_value(name, getattr(node, name)) for name in NODE_FIELDS}
    check_node_sizes(values)
    yield from need_user(values["user_id"])
    key = None
    if values["auth_key_id"] is not None:
        key = yield from use_auth_key(values["auth_key_id"])
    yield from _check_node_unique(values, NODE_UNIQUE, None)
    cols = ", ".join(("id", *NODE_FIELDS))
    marks = ", ".join("?" for _ in range(len(NODE_FIELDS) + 1))
    r = yield One(f"INSERT INTO nodes ({cols}) VALUES ({marks}) RETURNING *", int(node.id), *values.values())
    created = node_from_row(r)
    yield Emit("node.created", {"id": created.id, "user_id": created.user_id, "node_key": _hex(created.node_key)})
    yield from emit_key_used(key)
    return created


def _preauth_key(k: PreAuthKey):
    yield from _id_free("preauth_keys", k.id, "pre-auth key")
    yield from need_user(k.user_id)
    if (yield One("SELECT id FROM preauth_keys WHERE prefix = ?", k.prefix)) is not None:
        raise Conflict(f'a pre-auth key with prefix "{k.prefix}" already exists')
    r = yield One(
        "INSERT INTO preauth_keys (id, prefix, key_hash, user_id, reusable, ephemeral, used, tags,"
        " expiration, created_at, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        int(k.id), k.prefix, bytes(k.key_hash), int(k.user_id), bool(k.reusable), bool(k.ephemeral),
        bool(k.used), str_tuple(k.tags), opt_utc(k.expiration), utc(k.created_at), str(k.description),
    )
    key = preauth_key_from_row(r)
    yield Emit("preauthkey.created", {"id": key.id, "user_id": key.user_id, "prefix": key.prefix})
    return key


def _api_key(k: ApiKey):
    yield from _id_free("api_keys", k.id, "API key")
    if (yield One("SELECT id FROM api_keys WHERE prefix = ?", k.prefix)) is not None:
        raise Conflict(f'an API key with prefix "{k.prefix}" already exists')
    r = yield One(
        "INSERT INTO api_keys (id, prefix, key_hash, expiration, created_at, last_seen, scopes)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
        int(k.id), k.prefix, bytes(k.key_hash), opt_utc(k.expiration), utc(k.created_at), opt_utc(k.last_seen),
        str_tuple(k.scopes),
    )
    key = api_key_from_row(r)
    yield Emit("apikey.created", {"id": key.id, "prefix": key.prefix})
    return key
