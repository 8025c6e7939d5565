"""Subnet routes and exit nodes:

    POST /api/v1/node/{id}/approve_routes  {"routes": ["10.0.0.0/8"]}  set approved routes ([] clears):
                                            {"node"} as in Headscale, and ours: {"routes"}
    GET  /api/v1/routes[?node=ID]           {"routes": [...]}: advertised (availableRoutes), approved,
                                            serving (advertised and approved) and primary routes
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.domain.routes import RouteError, advertised_routes, normalize_routes
from trioscale.shared.model import Node

from .api import InvalidRequest, admin, json_body
from .fields import known_fields, known_query
from .lookups import find_node
from .nodeview import EXIT_ROUTES, node_view, serving_routes
from .shapes import id_text

blueprint = Blueprint("routes", __name__)


def routes_json(node: Node) -> dict[str, Any]:
    handles = admin()
    c = handles.coordinator
    serving = serving_routes(handles, node.id)
    primary = sorted(c.policy.primary_routes(node.id)) if c is not None else []
    return {
        "id": id_text(node.id),
        "givenName": node.given_name,
        "availableRoutes": list(advertised_routes(node.hostinfo)),
        "approvedRoutes": list(node.approved_routes),
        "servingRoutes": serving,
        "primaryRoutes": primary,
        "exitNode": all(r in serving for r in EXIT_ROUTES),
        "online": bool(handles.is_online(node.id)),
    }


@blueprint.post("/api/v1/node/<nodeId>/approve_routes")
async def approve_routes(nodeId: str) -> Any:
    handles = admin()
    known_query(request.args, ())
    node = await find_node(nodeId)
    data = known_fields(await json_body(), ("routes",))
    node = await set_approved_routes(node, data.get("routes"))
    node = await handles.store.get_node(node.id) or node
    return {"node": await node_view(node), "routes": routes_json(node)}


async def set_approved_routes(node: Node, routes_in: Any, *, via: str = "") -> Node:
    """Approve exactly `routes_in` for `node` (API v1 and v2); returns the node once this process
    has applied the change."""
    handles = admin()
    if routes_in is None:  # absent or null: none, as Headscale reads an unset repeated field
        routes_in = []
    if not isinstance(routes_in, list):  # as in Headscale, a list: {} or "10.0.0.0/8" is refused
        raise InvalidRequest("routes must be a list of prefixes")
    try:
        routes = normalize_routes(routes_in)
    except RouteError as exc:
        raise InvalidRequest(str(exc)) from None
    node = await handles.store.update_node(node.id, approved_routes=routes)
    handles.log.info("%snode %d approved routes: %s", via, node.id, ",".join(routes) or "(none)")
    await handles.caught_up()
    return node


@blueprint.get("/api/v1/routes")
async def list_routes() -> Any:
    ref = known_query(request.args, ("node",)).get("node")
    nodes = [await find_node(ref)] if ref else sorted(await admin().store.list_nodes(), key=lambda n: n.id)
    return {"routes": [routes_json(n) for n in nodes
                       if ref or n.approved_routes or advertised_routes(n.hostinfo)]}
