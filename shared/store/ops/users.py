"""Users: create, rename, look up, and delete (with the shares and pre-auth keys that name them).

A user who still owns nodes cannot be deleted (the admin deletes the nodes, or gives them to
another user, first); the shares and pre-auth keys that name the user go with it, each recording
its own change.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from trioscale.shared.store.base import Conflict, NotFound
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.rows import user_from_row


def op_get_user(user_id: int):
    r = yield One("SELECT * FROM users WHERE id = ?", int(user_id))
    return None if r is None else user_from_row(r)


def op_get_user_by_name(name: str):
    r = yield One("SELECT * FROM users WHERE name = ?", name)
    return None if r is None else user_from_row(r)


def op_list_users():
    rows = yield All("SELECT * FROM users ORDER BY id")
    return [user_from_row(r) for r in rows]


def need_user(user_id: int):
    """The user `user_id`, or NotFound (for operations on records that name a user)."""
    r = yield One("SELECT * FROM users WHERE id = ?", int(user_id))
    if r is None:
        raise NotFound(f"user {user_id} not found")
    return user_from_row(r)


def op_create_user(name: str, display_name: str, email: str, now: datetime, identity=("", "", "")):
    """`identity`: (provider, provider_id, profile_pic_url), as a login provider knows the user."""
    provider, provider_id, profile_pic_url = (v or "" for v in identity)
    if (yield One("SELECT id FROM users WHERE name = ?", name)) is not None:
        raise Conflict(f'user "{name}" already exists')
    if provider_id and (yield One("SELECT id FROM users WHERE provider_id = ?", provider_id)) is not None:
        raise Conflict(f'another user has the login identity "{provider_id}"')
    r = yield One(
        "INSERT INTO users (name, display_name, email, created_at, provider, provider_id, profile_pic_url)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
        name,
        display_name or "",
        email or "",
        now,
        provider,
        provider_id,
        profile_pic_url,
    )
    user = user_from_row(r)
    yield Emit("user.created", {"id": user.id, "name": user.name})
    return user


def op_login_user(name: str, display_name: str, email: str, provider: str, provider_id: str,
                  profile_pic_url: str, now: datetime):
    """The user a login provider knows as `provider_id`, its profile set to what the provider says
    now; created when first seen. Returns (user, created). `name` is kept when another user has it
    (an existing user keeps its name, a new one gets the first free `name-2`, `name-3`, …)."""
    r = yield One("SELECT * FROM users WHERE provider_id = ?", provider_id)
    if r is None:
        free = yield from _free_name(name, None)
        user = yield from op_create_user(free, display_name, email, now, (provider, provider_id, profile_pic_url))
        return user, True
    user = user_from_row(r)
    wanted = {"display_name": display_name, "email": email, "profile_pic_url": profile_pic_url, "provider": provider}
    if name != user.name and (yield One("SELECT id FROM users WHERE name = ?", name)) is None:
        wanted["name"] = name
    changed = {k: v for k, v in wanted.items() if getattr(user, k) != v}
    if not changed:
        return user, False
    columns = sorted(changed)
    yield Exec(f"UPDATE users SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
               *(changed[c] for c in columns), user.id)
    event = {"id": user.id, "name": changed.get("name", user.name), "fields": columns}
    if "name" in changed:
        event["old_name"] = user.name
    yield Emit("user.updated", event)
    return dataclasses.replace(user, **changed), False


def _free_name(name: str, own_id: int | None):
    for candidate in (name, *(f"{name}-{i}" for i in range(2, 100))):
        r = yield One("SELECT id FROM users WHERE name = ?", candidate)
        if r is None or int(r["id"]) == own_id:
            return candidate
    raise Conflict(f'no free user name like "{name}"')


def op_get_user_by_provider_id(provider_id: str):
    r = yield One("SELECT * FROM users WHERE provider_id = ?", provider_id)
    return None if r is None else user_from_row(r)


def op_rename_user(user_id: int, new_name: str):
    user = yield from need_user(user_id)
    if user.name == new_name:
        return user
    if (yield One("SELECT id FROM users WHERE name = ?", new_name)) is not None:
        raise Conflict(f'user "{new_name}" already exists')
    yield Exec("UPDATE users SET name = ? WHERE id = ?", new_name, user.id)
    yield Emit("user.updated", {"id": user.id, "name": new_name, "old_name": user.name, "fields": ["name"]})
    return dataclasses.replace(user, name=new_name)


def op_delete_user(user_id: int):
    user = yield from need_user(user_id)
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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
