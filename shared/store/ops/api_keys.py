"""API keys: create, look up, expire, delete, and note when one was last used.

Touching a key (last_seen) records no change: it happens on every admin request and no other
replica acts on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from trioscale.shared.store.base import Conflict, NotFound
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.rows import api_key_from_row, opt_utc, str_tuple


def op_create_api_key(prefix: str, key_hash: bytes, expiration: datetime | None, now: datetime,
                      scopes: Sequence[str] = ()):
    if (yield One("SELECT id FROM api_keys WHERE prefix = ?", prefix)) is not None:
        raise Conflict(f'an API key with prefix "{prefix}" already exists')
    r = yield One(
        "INSERT INTO api_keys (prefix, key_hash, expiration, created_at, scopes) VALUES (?, ?, ?, ?, ?) RETURNING *",
        prefix,
        bytes(key_hash),
        opt_utc(expiration),
        now,
        str_tuple(scopes),
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
    """The keys people made: an OAuth client's access tokens are not listed (they live an hour)."""
    rows = yield All("SELECT * FROM api_keys WHERE oauth_client_id IS NULL ORDER BY id")
    return [api_key_from_row(r) for r in rows]


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
