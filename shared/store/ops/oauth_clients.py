"""OAuth clients of Tailscale's API v2, and the access tokens they are issued.

An access token is an API key naming its client (`api_keys.oauth_client_id`), with the scopes and
tags it was issued with and a short life. Issuing one first drops the client's tokens that have
run out, and keeps at most MAX_TOKENS_PER_CLIENT live ones (the oldest go): a client asking for a
token in a loop cannot grow the table. Deleting a client deletes its tokens in the same
transaction, so they authenticate nothing from the commit on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from trioscale.shared.store.base import Conflict, NotFound
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.rows import api_key_from_row, oauth_client_from_row, str_tuple

#: live access tokens one client may hold; a new one beyond it replaces the oldest
MAX_TOKENS_PER_CLIENT = 32


def op_create_oauth_client(client_id: str, secret_hash: bytes, description: str, scopes: Sequence[str],
                           tags: Sequence[str], now: datetime):
    if (yield One("SELECT id FROM oauth_clients WHERE client_id = ?", client_id)) is not None:
        raise Conflict(f'an OAuth client with id "{client_id}" already exists')
    r = yield One(
        "INSERT INTO oauth_clients (client_id, secret_hash, description, scopes, tags, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
        client_id,
        bytes(secret_hash),
        str(description),
        str_tuple(scopes),
        str_tuple(tags),
        now,
    )
    client = oauth_client_from_row(r)
    yield Emit("oauthclient.created", {"id": client.id, "client_id": client.client_id})
    return client


def op_get_oauth_client(key_id: int):
    r = yield One("SELECT * FROM oauth_clients WHERE id = ?", int(key_id))
    return None if r is None else oauth_client_from_row(r)


def op_get_oauth_client_by_client_id(client_id: str):
    r = yield One("SELECT * FROM oauth_clients WHERE client_id = ?", client_id)
    return None if r is None else oauth_client_from_row(r)


def op_list_oauth_clients():
    return [oauth_client_from_row(r) for r in (yield All("SELECT * FROM oauth_clients ORDER BY id"))]


def op_delete_oauth_client(key_id: int):
    r = yield One("SELECT id, client_id FROM oauth_clients WHERE id = ?", int(key_id))
    if r is None:
        raise NotFound(f"OAuth client {key_id} not found")
    # explicit, not only ON DELETE CASCADE: the tokens must go even where foreign keys are off
    yield Exec("DELETE FROM api_keys WHERE oauth_client_id = ?", int(key_id))
    yield Exec("DELETE FROM oauth_clients WHERE id = ?", int(key_id))
    yield Emit("oauthclient.deleted", {"id": int(r["id"]), "client_id": r["client_id"]})


def op_issue_access_token(client_key_id: int, prefix: str, key_hash: bytes, scopes: Sequence[str],
                          tags: Sequence[str], expiration: datetime, now: datetime):
    if not scopes:
        raise ValueError("an access token needs at least one scope (no scopes would mean all access)")
    if (yield One("SELECT id FROM oauth_clients WHERE id = ?", int(client_key_id))) is None:
        raise NotFound(f"OAuth client {client_key_id} not found")
    yield Exec("DELETE FROM api_keys WHERE oauth_client_id = ? AND expiration <= ?", int(client_key_id), now)
    live = yield All("SELECT id FROM api_keys WHERE oauth_client_id = ? ORDER BY id", int(client_key_id))
    for row in live[: max(0, len(live) - MAX_TOKENS_PER_CLIENT + 1)]:
        yield Exec("DELETE FROM api_keys WHERE id = ?", int(row["id"]))
    if (yield One("SELECT id FROM api_keys WHERE prefix = ?", prefix)) is not None:
        raise Conflict(f'an API key with prefix "{prefix}" already exists')
    r = yield One(
        "INSERT INTO api_keys (prefix, key_hash, expiration, created_at, scopes, tags, oauth_client_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
        prefix,
        bytes(key_hash),
        expiration,
        now,
        str_tuple(scopes),
        str_tuple(tags),
        int(client_key_id),
    )
    yield Exec("UPDATE oauth_clients SET last_used = ? WHERE id = ?", now, int(client_key_id))
    # no change row: a token is looked up afresh on every request and no replica acts on it
    return api_key_from_row(r)
