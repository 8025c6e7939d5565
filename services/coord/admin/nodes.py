"""Nodes: list, show, delete, expire, rename (the DNS name, unique in the tailnet)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.domain.names import validate_label
from trioscale.shared.model import utcnow
from trioscale.shared.store.base import Conflict

from .api import admin, json_body
from .fields import parse_timestamp
from .lookups import find_node, find_user, users_by_id
from .shapes import node_json

blueprint = Blueprint("nodes", __name__)


@blueprint.get("/api/v1/node")
async def list_nodes() -> Any:
    handles = admin()
    ref = request.args.get("user")
    user_id = (await find_user(ref)).id if ref else None
    now = utcnow()
    users = await users_by_id()
    return {"nodes": [node_json(n, users, now, handles.is_online(n.id))
                      for n in await handles.store.list_nodes(user_id)]}


@blueprint.get("/api/v1/node/<ref>")
async def get_node(ref: str) -> Any:
    node = await find_node(ref)
    return {"node": node_json(node, await users_by_id(), utcnow(), admin().is_online(node.id))}


@blueprint.delete("/api/v1/node/<ref>")
async def delete_node(ref: str) -> Any:
    node = await find_node(ref)
    await admin().store.delete_node(node.id)
    admin().log.info("node deleted: %s (id %d)", node.given_name, node.id)
    return {}


@blueprint.post("/api/v1/node/<ref>/expire")
async def expire_node(ref: str) -> Any:
    now = utcnow()
    data = await json_body()
    when = now
    if data.get("expiry"):
        when = parse_timestamp(data["expiry"], "expiry", now)
    node = await find_node(ref)
    node = await admin().store.update_node(node.id, expiry=when)
    admin().log.info("node expired: %s (id %d)", node.given_name, node.id)
    return {"node": node_json(node, await users_by_id(), now)}


@blueprint.post("/api/v1/node/<ref>/rename/<path:new_name>")
async def rename_node(ref: str, new_name: str) -> Any:
    store = admin().store
    node = await find_node(ref)
    validate_label(new_name)
    if new_name != node.given_name:
        for other in await store.list_nodes():
            if other.given_name == new_name and other.id != node.id:
                raise Conflict(f"node name {new_name!r} is taken")
        node = await store.update_node(node.id, given_name=new_name)
    admin().log.info("node renamed: id %d -> %s", node.id, node.given_name)
    return {"node": node_json(node, await users_by_id(), utcnow())}
