"""Users: GET /api/v2/tailnet/{tailnet}/users (users:read; `{"users": [User]}`, ?type= and ?role=
filter as Tailscale's do: every user here is an active member) and GET /api/v2/users/{id}."""

from __future__ import annotations

from typing import Any

from quart import request

from trioscale.shared.model import User
from trioscale.shared.store.base import NotFound

from ..api import admin
from ..shapes import TAGGED_DEVICES
from .auth import needs
from .common import PREFIX, blueprint, check_tailnet
from .shapes import user_json


async def _views(users: list[User]) -> list[dict[str, Any]]:
    handles = admin()
    nodes = await handles.store.list_nodes()
    out = []
    for u in users:
        mine = [n for n in nodes if n.user_id == u.id and not n.tags]
        seen = [n.last_seen for n in mine if n.last_seen is not None]
        out.append(user_json(u, device_count=len(mine), connected=any(handles.is_online(n.id) for n in mine),
                             last_seen=max(seen) if seen else None))
    return out


def _people(users: list[User]) -> list[User]:
    return [u for u in users if u.name != TAGGED_DEVICES["name"]]


@blueprint.get(PREFIX + "/tailnet/<tailnet>/users")
@needs("users", write=False)
async def list_users(tailnet: str) -> Any:
    check_tailnet(tailnet)
    users = sorted(_people(await admin().store.list_users()), key=lambda u: u.id)
    if request.args.get("type", "member") != "member" or request.args.get("role", "member") != "member":
        users = []
    return {"users": await _views(users)}


@blueprint.get(PREFIX + "/users/<userId>")
@needs("users", write=False)
async def get_user(userId: str) -> Any:
    user = await admin().store.get_user(int(userId)) if userId.isdigit() and len(userId) < 19 else None
    if user is None or not _people([user]):
        raise NotFound(f"user {userId!r} not found")
    return (await _views([user]))[0]
