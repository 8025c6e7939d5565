"""Subnet routes and exit nodes:

    POST /api/v1/node/{id}/approve_routes  {"routes": ["10.0.0.0/8"]} set approved routes ([] clears)
    GET  /api/v1/routes[?node=ID]             advertised / approved / serving / primary routes
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.domain.routes import RouteError, advertised_routes, normalize_routes
from trioscale.shared.model import Node, utcnow

from .api import InvalidRequest, admin, json_body
from .lookups import find_node, users_by_id
from .shapes import node_json

blueprint = Blueprint("routes", __name__)


def routes_json(node: Node) -> dict[str, Any]:
    handles = admin()
    c = handles.coordinator
    serving = c.policy.effective_routes(node.id) if c is not None else []
    primary = c.policy.primary_routes(node.id) if c is not None else []
    return {
        "id": node.id,
        "given_name": node.given_name,
        "available_routes": list(advertised_routes(node.hostinfo)),
        "approved_routes": list(node.approved_routes),
        "serving_routes": sorted(serving),
        "primary_routes": sorted(primary),
        "exit_node": "0.0.0.0/0" in serving and "::/0" in serving,
        "online": handles.is_online(node.id),
    }


@blueprint.post("/api/v1/node/<ref>/approve_routes")
async def approve_routes(ref: str) -> Any:
    handles = admin()
    node = await find_node(ref)
    data = await json_body()
    routes_in = data.get("routes", [])
    if isinstance(routes_in, str):
        routes_in = [r for r in routes_in.split(",")]
    if not isinstance(routes_in, list):
        raise InvalidRequest("routes must be a list of prefixes")
    try:
        routes = normalize_routes(routes_in)
    except RouteError as exc:
        raise InvalidRequest(str(exc)) from None
    node = await handles.store.update_node(node.id, approved_routes=routes)
    handles.log.info("node %d approved routes: %s", node.id, ",".join(routes) or "(none)")
    await handles.caught_up()
    node = await handles.store.get_node(node.id) or node
    return {"node": node_json(node, await users_by_id(), utcnow(), handles.is_online(node.id)),
            "routes": routes_json(node)}


@blueprint.get("/api/v1/routes")
async def list_routes() -> Any:
    ref = request.args.get("node")
    nodes = [await find_node(ref)] if ref else await admin().store.list_nodes()
    return {"routes": [routes_json(n) for n in nodes
                       if ref or n.approved_routes or advertised_routes(n.hostinfo)]}
