"""Pre-auth keys: create, look up, expire, delete, and spend one on a registration.

A single-use key is marked used inside the registering node's own transaction, so two registrations
racing with one key cannot both succeed.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from trioscale.shared.store.base import Conflict, NotFound
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.ops.users import need_user
from trioscale.shared.store.rows import opt_utc, preauth_key_from_row, str_tuple


def op_create_preauth_key(user_id, prefix, key_hash, reusable, ephemeral, tags, expiration, now, description=""):
    yield from need_user(user_id)
    if (yield One("SELECT id FROM preauth_keys WHERE prefix = ?", prefix)) is not None:
        raise Conflict(f'a pre-auth key with prefix "{prefix}" already exists')
    r = yield One(
        "INSERT INTO preauth_keys (prefix, key_hash, user_id, reusable, ephemeral, used, tags,"
        " expiration, created_at, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        prefix,
        bytes(key_hash),
        int(user_id),
        bool(reusable),
        bool(ephemeral),
        False,
        str_tuple(tags),
        opt_utc(expiration),
        now,
        str(description),
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


def use_auth_key(key_id: int):
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


def emit_key_used(key) -> Any:
    """The change for a key `use_auth_key` spent: none for a reusable key, which it leaves as it was."""
    if key is not None and not key.reusable:
        yield Emit("preauthkey.updated", {"id": key.id, "user_id": key.user_id, "fields": ["used"]})
