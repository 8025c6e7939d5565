"""Users: list (by id, name or email), create, rename, delete (one that still owns nodes cannot be
deleted). The path's user is an id as in Headscale, or a name (names are never all digits)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.store.base import Conflict

from .api import InvalidRequest, admin, json_body
from .fields import int_id, known_fields, known_query, text_field, validate_user_name
from .lookups import find_user
from .shapes import TAGGED_DEVICES, user_json

blueprint = Blueprint("users", __name__)


@blueprint.get("/api/v1/user")
async def list_users() -> Any:
    query = known_query(request.args, ("id", "name", "email"))
    name, email, uid = query.get("name"), query.get("email"), query.get("id")
    uid = int_id(uid, "user") if uid not in (None, "", "0") else None
    # the holder of what tags own is no one's account: Headscale lists no such user
    users = sorted((u for u in await admin().store.list_users() if u.name != TAGGED_DEVICES["name"]),
                   key=lambda u: u.id)
    if name:
        users = [u for u in users if u.name == name]
    if email:
        users = [u for u in users if u.email == email]
    if uid is not None:
        users = [u for u in users if u.id == uid]
    return {"users": [user_json(u) for u in users]}


@blueprint.post("/api/v1/user")
async def create_user() -> Any:
    store, log = admin().store, admin().log
    data = known_fields(await json_body(), ("name", "displayName", "email", "pictureUrl"))
    name = validate_user_name(data.get("name"))
    display = text_field(data, "displayName")
    email = text_field(data, "email")
    picture = text_field(data, "pictureUrl")
    if len(display) > 256 or len(email) > 256:
        raise InvalidRequest("displayName and email are limited to 256 characters")
    if len(picture) > 2048 or (picture and not picture.startswith(("https://", "http://"))):
        raise InvalidRequest("pictureUrl must be an http(s) URL of at most 2048 characters")
    if email and "@" not in email:
        raise InvalidRequest(f"invalid email {email!r}")
    _not_reserved(name)
    if await store.get_user_by_name(name) is not None:
        raise Conflict(f"user {name!r} already exists")
    user = await store.create_user(name, display_name=display, email=email, profile_pic_url=picture)
    log.info("user created: %s (id %d)", user.name, user.id)
    return {"user": user_json(user)}


@blueprint.post("/api/v1/user/<oldId>/rename/<path:newName>")
async def rename_user(oldId: str, newName: str) -> Any:
    store, log = admin().store, admin().log
    known_query(request.args, ())
    user = await find_user(oldId)
    validate_user_name(newName)
    _not_reserved(newName)
    _not_reserved(user.name)
    other = await store.get_user_by_name(newName)
    if other is not None and other.id != user.id:
        raise Conflict(f"user {newName!r} already exists")
    renamed = await store.rename_user(user.id, newName)
    log.info("user renamed: %s -> %s", user.name, renamed.name)
    return {"user": user_json(renamed)}


@blueprint.delete("/api/v1/user/<id>")
async def delete_user(id: str) -> Any:
    store, log = admin().store, admin().log
    known_query(request.args, ())
    user = await find_user(id)
    if await store.list_nodes(user.id):
        raise Conflict(f"user {user.name!r} still owns nodes; delete them first")
    await store.delete_user(user.id)
    log.info("user deleted: %s", user.name)
    return {}


def _not_reserved(name: str) -> None:
    """tagged-devices holds what tags own (pre-auth keys made without a user): no person takes the
    name, and it keeps it."""
    if name == TAGGED_DEVICES["name"]:
        raise Conflict(f"the user name {name!r} is reserved for keys and nodes owned by tags")
