"""Devices: list, get, delete, authorize, subnet routes, tags, key expiry, name.

    GET    /api/v2/tailnet/{tailnet}/devices   devices:core:read   {"devices": [Device]}
    GET    /api/v2/device/{id}                 devices:core:read   Device (?fields=all: routes too)
    DELETE /api/v2/device/{id}                 devices:core
    POST   /api/v2/device/{id}/authorized      devices:core        {"authorized": true} (every node here is)
    GET    /api/v2/device/{id}/routes          devices:routes:read {"advertisedRoutes", "enabledRoutes"}
    POST   /api/v2/device/{id}/routes          devices:routes      {"routes": [...]}: the enabled (approved) routes
    POST   /api/v2/device/{id}/tags            devices:core        {"tags": [...]}
    POST   /api/v2/device/{id}/key             devices:core        {"keyExpiryDisabled": bool}
    POST   /api/v2/device/{id}/name            devices:core        {"name": "web"}
A device's id is its node id (which clients see as its StableID); an OAuth client's token may only
give tags the client holds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from quart import request

from trioscale.shared.domain.names import sanitize_label, validate_label
from trioscale.shared.domain.routes import advertised_routes
from trioscale.shared.model import Node, utcnow
from trioscale.shared.store.base import Conflict, NotFound

from ..api import InvalidRequest, admin
from ..routes import set_approved_routes
from ..tags import set_node_tags
from .auth import caller, needs
from .common import PREFIX, blueprint, body, check_tailnet
from .shapes import device_json

#: how long a node key lives again once its expiry is turned back on
KEY_EXPIRY_AGAIN = timedelta(days=180)


def _base_domain() -> str:
    handles = admin()
    if handles.coordinator is not None:
        return handles.coordinator.tailnet.settings.base_domain
    dns = handles.options.dns
    return dns.base_domain if dns is not None else ""


async def _device(device_id: str) -> Node:
    node = await admin().store.get_node(int(device_id)) if device_id.isdigit() and len(device_id) < 19 else None
    if node is None:
        raise NotFound(f"device {device_id!r} not found")
    return node


async def _views(nodes: list[Node]) -> list[dict[str, Any]]:
    handles = admin()
    all_fields = request.args.get("fields", "default") == "all"
    users = {u.id: u for u in await handles.store.list_users()}
    return [device_json(n, users, _base_domain(), online=bool(handles.is_online(n.id)), all_fields=all_fields,
                        enabled_routes=list(n.approved_routes)) for n in nodes]


def _routes(node: Node) -> dict[str, Any]:
    return {"advertisedRoutes": list(advertised_routes(node.hostinfo)), "enabledRoutes": list(node.approved_routes)}


@blueprint.get(PREFIX + "/tailnet/<tailnet>/devices")
@needs("devices:core", write=False)
async def list_devices(tailnet: str) -> Any:
    check_tailnet(tailnet)
    nodes = sorted(await admin().store.list_nodes(), key=lambda n: n.id)
    return {"devices": await _views(nodes)}


@blueprint.get(PREFIX + "/device/<deviceId>")
@needs("devices:core", write=False)
async def get_device(deviceId: str) -> Any:
    return (await _views([await _device(deviceId)]))[0]


@blueprint.delete(PREFIX + "/device/<deviceId>")
@needs("devices:core", write=True)
async def delete_device(deviceId: str) -> Any:
    node = await _device(deviceId)
    await admin().store.delete_node(node.id)
    admin().log.info("API v2: device deleted: %s (id %d)", node.given_name, node.id)
    return {}


@blueprint.post(PREFIX + "/device/<deviceId>/authorized")
@needs("devices:core", write=True)
async def authorize_device(deviceId: str) -> Any:
    await _device(deviceId)
    authorized = (await body()).get("authorized")
    if authorized is not True:
        raise InvalidRequest("every device here is authorized when it registers; "
                             "de-authorizing is not supported (delete the device or expire its key)")
    return {}


@blueprint.get(PREFIX + "/device/<deviceId>/routes")
@needs("devices:routes", write=False)
async def get_routes(deviceId: str) -> Any:
    return _routes(await _device(deviceId))


@blueprint.post(PREFIX + "/device/<deviceId>/routes")
@needs("devices:routes", write=True)
async def set_routes(deviceId: str) -> Any:
    node = await _device(deviceId)
    routes_in = (await body()).get("routes")
    if isinstance(routes_in, list) and not all(isinstance(r, str) for r in routes_in):
        raise InvalidRequest("routes must be a list of prefixes")
    return _routes(await set_approved_routes(node, routes_in, via="API v2: "))


@blueprint.post(PREFIX + "/device/<deviceId>/tags")
@needs("devices:core", write=True)
async def set_tags(deviceId: str) -> Any:
    node = await _device(deviceId)
    who = caller()
    allowed = who.tags if who is not None and who.is_oauth else None
    await set_node_tags(node, (await body()).get("tags") or [], allowed=allowed,
                        via="API v2: ")
    return {}


@blueprint.post(PREFIX + "/device/<deviceId>/key")
@needs("devices:core", write=True)
async def set_key(deviceId: str) -> Any:
    handles = admin()
    node = await _device(deviceId)
    disabled = (await body()).get("keyExpiryDisabled")
    if not isinstance(disabled, bool):
        raise InvalidRequest("keyExpiryDisabled must be true or false")
    if disabled:
        node = await handles.store.update_node(node.id, expiry=None)
    elif node.expiry is None:
        node = await handles.store.update_node(node.id, expiry=utcnow() + KEY_EXPIRY_AGAIN)
    handles.log.info("API v2: device %d key expiry %s", node.id, "disabled" if disabled else "enabled")
    await handles.caught_up()
    return {}


@blueprint.post(PREFIX + "/device/<deviceId>/name")
@needs("devices:core", write=True)
async def set_name(deviceId: str) -> Any:
    handles = admin()
    node = await _device(deviceId)
    name = (await body()).get("name", "")
    if not isinstance(name, str):
        raise InvalidRequest("name must be text")
    base = _base_domain().strip(".").lower()
    label = name.strip().rstrip(".")
    if base and label.lower().endswith("." + base):
        label = label[: -len(base) - 1]
    label = validate_label(label) if label else sanitize_label(node.hostname)
    if label != node.given_name:
        if any(o.given_name == label and o.id != node.id for o in await handles.store.list_nodes()):
            raise Conflict(f"device name {label!r} is taken")
        node = await handles.store.update_node(node.id, given_name=label)
    handles.log.info("API v2: device %d renamed to %s", node.id, node.given_name)
    await handles.caught_up()
    return {}
