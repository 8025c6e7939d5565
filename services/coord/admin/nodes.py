"""Nodes: list, show, delete, expire (now, at a time, or never), rename (the DNS name, unique in the
tailnet), and bring nodes' addresses in line with the configured prefixes (backfillips)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.domain import ipalloc
from trioscale.shared.domain.names import validate_label
from trioscale.shared.model import utcnow
from trioscale.shared.store.base import Conflict

from .api import InvalidRequest, admin, json_body
from .fields import known_fields, known_query, parse_timestamp, query_flag
from .lookups import find_node, find_user
from .nodeview import node_view, node_views

blueprint = Blueprint("nodes", __name__)


@blueprint.get("/api/v1/node")
async def list_nodes() -> Any:
    handles = admin()
    ref = known_query(request.args, ("user",)).get("user")
    user_id = (await find_user(ref)).id if ref else None
    nodes = sorted(await handles.store.list_nodes(user_id), key=lambda n: n.id)
    return {"nodes": await node_views(nodes)}


@blueprint.get("/api/v1/node/<nodeId>")
async def get_node(nodeId: str) -> Any:
    known_query(request.args, ())
    return {"node": await node_view(await find_node(nodeId))}


@blueprint.delete("/api/v1/node/<nodeId>")
async def delete_node(nodeId: str) -> Any:
    known_query(request.args, ())
    node = await find_node(nodeId)
    await admin().store.delete_node(node.id)
    admin().log.info("node deleted: %s (id %d)", node.given_name, node.id)
    return {}


@blueprint.post("/api/v1/node/<nodeId>/expire")
async def expire_node(nodeId: str) -> Any:
    """Headscale's meaning: no `expiry` expires the node now, an `expiry` (RFC 3339, past or
    future) is when it expires, `disableExpiry=true` makes it never expire."""
    now = utcnow()
    query = known_query(request.args, ("expiry", "disableExpiry"))
    known_fields(await json_body(), ())
    never = query_flag(query, "disableExpiry")
    expiry = query.get("expiry")
    if expiry == "":  # Headscale's gateway reads an empty time as no time at all: refused
        raise InvalidRequest("expiry is empty: give an RFC 3339 time, or leave it out to expire the node now")
    if never and expiry:
        raise InvalidRequest("give expiry or disableExpiry, not both")
    when = None if never else parse_timestamp(expiry, "expiry", now) if expiry else now
    node = await find_node(nodeId)
    node = await admin().store.update_node(node.id, expiry=when)
    if never:
        admin().log.info("node expiry disabled: %s (id %d)", node.given_name, node.id)
    else:
        admin().log.info("node expiry set: %s (id %d) at %s", node.given_name, node.id, when)
    await admin().caught_up()
    return {"node": await node_view(node)}


@blueprint.post("/api/v1/node/<nodeId>/rename/<path:newName>")
async def rename_node(nodeId: str, newName: str) -> Any:
    store = admin().store
    known_query(request.args, ())
    node = await find_node(nodeId)
    validate_label(newName)
    if newName != node.given_name:
        for other in await store.list_nodes():
            if other.given_name == newName and other.id != node.id:
                raise Conflict(f"node name {newName!r} is taken")
        node = await store.update_node(node.id, given_name=newName)
    admin().log.info("node renamed: id %d -> %s", node.id, node.given_name)
    return {"node": await node_view(node)}


@blueprint.post("/api/v1/node/backfillips")
async def backfill_ips() -> Any:
    """Give every node an address from each configured prefix it has none from (after a prefix was
    added to the configuration), and take back the addresses of a family no longer configured, as
    Headscale's backfill does. Needs `confirmed=true`, as in Headscale."""
    handles = admin()
    query = known_query(request.args, ("confirmed",))
    if not query_flag(query, "confirmed"):
        raise InvalidRequest("not confirmed: give confirmed=true to change nodes' addresses")
    policy = handles.options.registration
    nodes = sorted(await handles.store.list_nodes(), key=lambda n: n.id)
    taken = {a for n in nodes for a in (n.ipv4, n.ipv6) if a}
    changes: list[str] = []
    for node in nodes:
        fields: dict[str, str | None] = {}
        for column, prefix in (("ipv4", policy.prefix_v4), ("ipv6", policy.prefix_v6)):
            held = getattr(node, column)
            if prefix and not held:
                try:
                    addr = ipalloc.allocate(prefix, taken, strategy=policy.allocation)
                except ipalloc.PrefixExhausted as exc:
                    raise Conflict(f"cannot give node {node.id} an address: {exc}") from None
                taken.add(addr)
                fields[column] = addr
                changes.append(f"assigned {column} {addr} to node {node.given_name}")
            elif held and not prefix:
                fields[column] = None
                changes.append(f"removed {column} {held} from node {node.given_name}")
        if fields:
            await handles.store.update_node(node.id, **fields)
    if changes:
        handles.log.info("backfillips: %s", "; ".join(changes))
        await handles.caught_up()
    return {"changes": changes}
