"""Sharing a node with another user:

    POST   /api/v1/node/{id}/share         {"user": "bob"}   share a node with a user: {"share"}
    DELETE /api/v1/node/{id}/share/{user}                     stop sharing it: {}
    GET    /api/v1/shares[?node=ID]                           {"shares": [...]}

In Headscale's conventions (camelCase, string ids, 200 on create); the user is a name or an id.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.store.base import Conflict, NotFound

from .api import admin, json_body
from .fields import known_fields, known_query
from .lookups import find_node, find_user, users_by_id
from .shapes import share_json

blueprint = Blueprint("sharing", __name__)


@blueprint.post("/api/v1/node/<nodeId>/share")
async def share_node(nodeId: str) -> Any:
    handles = admin()
    node = await find_node(nodeId)
    known_query(request.args, ())
    data = known_fields(await json_body(), ("user",))
    user = await find_user(data.get("user"))
    if node.user_id == user.id and not node.tags:
        raise Conflict(f"node {node.id} already belongs to user {user.name!r}")
    share = await handles.store.add_share(node.id, user.id)
    handles.log.info("node %d shared with user %s", node.id, user.name)
    await handles.caught_up()
    return {"share": share_json(share, {node.id: node}, {user.id: user})}


@blueprint.delete("/api/v1/node/<nodeId>/share/<user>")
async def unshare_node(nodeId: str, user: str) -> Any:
    handles = admin()
    node = await find_node(nodeId)
    user = await find_user(user)
    try:
        await handles.store.remove_share(node.id, user.id)
    except NotFound:
        raise NotFound(f"node {node.id} is not shared with user {user.name!r}") from None
    handles.log.info("node %d no longer shared with user %s", node.id, user.name)
    await handles.caught_up()
    return {}


@blueprint.get("/api/v1/shares")
async def list_shares() -> Any:
    store = admin().store
    ref = known_query(request.args, ("node",)).get("node")
    node_id = (await find_node(ref)).id if ref else None
    shares = await store.list_shares(node_id)
    nodes = {n.id: n for n in await store.list_nodes()}
    users = await users_by_id()
    return {"shares": [share_json(s, nodes, users) for s in shares]}
