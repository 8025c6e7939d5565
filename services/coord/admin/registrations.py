"""Completing a pending interactive login for a user, and Headscale's debug node:

    POST /api/v1/auth/register {"user", "authId"}    complete a pending login (`auth register`)
    POST /api/v1/node/register ?user=&key=           the same, Headscale's older route (`nodes register`)
    POST /api/v1/debug/node {"user","key","name","routes"}  a pending login made up by the admin (no
                                                     client behind it), for trying policies and routes
"""

from __future__ import annotations

import os
import re
from typing import Any

from quart import Blueprint, request

from trioscale.services.coord.registration import approve_registration
from trioscale.shared.domain import names
from trioscale.shared.domain.routes import RouteError, normalize_routes
from trioscale.shared.model import Node, PendingRegistration, User, utcnow
from trioscale.shared.store.base import Conflict

from .api import InvalidRequest, admin, json_body
from .fields import known_fields, known_query, short
from .lookups import find_user
from .nodeview import node_view
from .shapes import id_text, registration_json, ts, user_json

_REG_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

blueprint = Blueprint("registrations", __name__)


def _registration_id(value: Any) -> str:
    if not value:
        raise InvalidRequest("a registration id (authId) is required")
    if not isinstance(value, str) or not _REG_ID.match(value):
        raise InvalidRequest(f"invalid registration id {short(value)}")
    return value


async def _register(reg_id: str, user_ref: Any) -> dict[str, Any]:
    handles = admin()
    user = await find_user(user_ref)
    result = await approve_registration(handles.store, reg_id, user, utcnow(), policy=handles.options.registration)
    handles.log.info("registration %s completed for user %s", reg_id, user.name)
    if isinstance(result, Node):
        await handles.caught_up()
        return {"node": await node_view(result)}
    return {"node": None, "registration": registration_json(result)}


@blueprint.post("/api/v1/auth/register")
async def auth_register() -> Any:
    known_query(request.args, ())
    data = known_fields(await json_body(), ("user", "authId"))
    return await _register(_registration_id(data.get("authId")), data.get("user"))


@blueprint.post("/api/v1/node/register")
async def register_node() -> Any:
    query = known_query(request.args, ("user", "key"))
    known_fields(await json_body(), ())
    return await _register(_registration_id(query.get("key")), query.get("user"))


@blueprint.post("/api/v1/debug/node")
async def debug_node() -> Any:
    """A pending login for a made-up machine, named `name` and advertising `routes`; `auth register`
    with `key` turns it into a node. Answers the node as it will be (it has no id yet)."""
    handles = admin()
    known_query(request.args, ())
    data = known_fields(await json_body(), ("user", "key", "name", "routes"))
    reg_id = _registration_id(data.get("key"))
    user = await find_user(data.get("user"))
    name = data.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("name must be a string")
    names.validate_label(name)
    routes_in = data.get("routes") or []
    if not isinstance(routes_in, list):
        raise InvalidRequest("routes must be a list of prefixes")
    try:
        routes = normalize_routes(routes_in)
    except RouteError as exc:
        raise InvalidRequest(str(exc)) from None
    if await handles.store.get_pending_registration(reg_id) is not None:
        raise Conflict(f"registration {reg_id!r} exists already")
    now = utcnow()
    # keys nobody holds: no client can log in as this machine, only an admin's register completes it
    machine_key, node_key = os.urandom(32), os.urandom(32)
    hostinfo = {"Hostname": name, "RoutableIPs": list(routes)}
    await handles.store.put_pending_registration(PendingRegistration(
        id=reg_id, machine_key=machine_key, node_key=node_key, hostinfo=hostinfo, created_at=now))
    handles.log.info("debug node %s pending as registration %s for user %s", name, reg_id, user.name)
    return {"node": _pending_node(name, user, machine_key, node_key, routes, now)}


def _pending_node(name: str, user: User, machine_key: bytes, node_key: bytes, routes: tuple[str, ...], now: Any) -> dict[str, Any]:
    return {
        "id": id_text(0), "machineKey": "mkey:" + machine_key.hex(), "nodeKey": "nodekey:" + node_key.hex(),
        "discoKey": "", "ipAddresses": [], "name": name, "user": user_json(user), "lastSeen": None,
        "expiry": None, "preAuthKey": None, "createdAt": ts(now), "registerMethod": "REGISTER_METHOD_CLI",
        "givenName": name, "online": False, "approvedRoutes": [], "availableRoutes": list(routes),
        "subnetRoutes": [], "tags": [], "ephemeral": False, "expired": False,
    }
