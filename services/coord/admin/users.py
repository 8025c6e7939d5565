"""Users: list, create, rename, delete (one that still owns nodes cannot be deleted)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.store.base import Conflict

from .api import InvalidRequest, admin, json_body
from .fields import int_id, text_field, validate_user_name
from .lookups import find_user
from .shapes import user_json

blueprint = Blueprint("users", __name__)


@blueprint.get("/api/v1/user")
async def list_users() -> Any:
    name = request.args.get("name")
    uid = request.args.get("id")
    uid = int_id(uid, "user") if uid else None
    users = await admin().store.list_users()
    if name:
        users = [u for u in users if u.name == name]
    if uid is not None:
        users = [u for u in users if u.id == uid]
    return {"users": [user_json(u) for u in users]}


@blueprint.post("/api/v1/user")
async def create_user() -> Any:
    store, log = admin().store, admin().log
    data = await json_body()
    name = validate_user_name(data.get("name"))
    display = text_field(data, "display_name")
    email = text_field(data, "email")
    if len(display) > 256 or len(email) > 256:
        raise InvalidRequest("display_name and email are limited to 256 characters")
    if email and "@" not in email:
        raise InvalidRequest(f"invalid email {email!r}")
    if await store.get_user_by_name(name) is not None:
        raise Conflict(f"user {name!r} already exists")
    user = await store.create_user(name, display_name=display, email=email)
    log.info("user created: %s (id %d)", user.name, user.id)
    return {"user": user_json(user)}, 201


@blueprint.post("/api/v1/user/<ref>/rename/<path:new_name>")
async def rename_user(ref: str, new_name: str) -> Any:
    store, log = admin().store, admin().log
    user = await find_user(ref)
    validate_user_name(new_name)
    other = await store.get_user_by_name(new_name)
    if other is not None and other.id != user.id:
        raise Conflict(f"user {new_name!r} already exists")
    renamed = await store.rename_user(user.id, new_name)
    log.info("user renamed: %s -> %s", user.name, renamed.name)
    return {"user": user_json(renamed)}


@blueprint.delete("/api/v1/user/<ref>")
async def delete_user(ref: str) -> Any:
    store, log = admin().store, admin().log
    user = await find_user(ref)
    if await store.list_nodes(user.id):
        raise Conflict(f"user {user.name!r} still owns nodes; delete them first")
    await store.delete_user(user.id)
    log.info("user deleted: %s", user.name)
    return {}
