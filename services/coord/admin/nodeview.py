"""A node as the API shows it: its record, and what this process's coordinator knows of it (whether
it is online, which routes it serves)."""

from __future__ import annotations

from typing import Any

from trioscale.shared.domain.routes import advertised_routes
from trioscale.shared.model import Node, PreAuthKey, User, utcnow

from .api import Admin, admin
from .shapes import node_json

__all__ = ["EXIT_ROUTES", "serving_routes", "subnet_routes", "node_views", "node_view"]

EXIT_ROUTES = ("0.0.0.0/0", "::/0")


def serving_routes(handles: Admin, node_id: int) -> list[str]:
    c = handles.coordinator
    return sorted(c.policy.effective_routes(node_id)) if c is not None else []


def subnet_routes(handles: Admin, node_id: int) -> list[str]:
    """Headscale's subnetRoutes: the routes the node is primary for, and its exit routes in use."""
    c = handles.coordinator
    if c is None:
        return []
    serving = set(c.policy.effective_routes(node_id))
    return sorted(set(c.policy.primary_routes(node_id)) | (serving & set(EXIT_ROUTES)))


async def node_views(nodes: list[Node], users: dict[int, User] | None = None) -> list[dict[str, Any]]:
    handles = admin()
    if users is None:
        users = {u.id: u for u in await handles.store.list_users()}
    keys: dict[int, PreAuthKey] = {}
    if any(n.auth_key_id for n in nodes):
        keys = {k.id: k for k in await handles.store.list_preauth_keys()}
    now = utcnow()
    return [node_json(n, users, now, online=handles.is_online(n.id),
                      available_routes=advertised_routes(n.hostinfo),
                      subnet_routes=subnet_routes(handles, n.id), preauth_keys=keys) for n in nodes]


async def node_view(node: Node) -> dict[str, Any]:
    return (await node_views([node]))[0]
