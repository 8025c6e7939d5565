"""POST /api/v1/node/register: complete a pending interactive login for a user (`nodes register`)."""

from __future__ import annotations

import re
from typing import Any

from quart import Blueprint, request

from trioscale.services.coord.registration import approve_registration
from trioscale.shared.model import Node, utcnow

from .api import InvalidRequest, admin, json_body
from .fields import short
from .lookups import find_user, users_by_id
from .shapes import node_json, registration_json

_REG_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

blueprint = Blueprint("registrations", __name__)


@blueprint.post("/api/v1/node/register")
async def register_node() -> Any:
    handles = admin()
    data = await json_body()
    user_ref = request.args.get("user") or data.get("user")
    reg_id = request.args.get("key") or data.get("key")
    if not reg_id:
        raise InvalidRequest("a registration id (key) is required")
    if not isinstance(reg_id, str) or not _REG_ID.match(reg_id):
        raise InvalidRequest(f"invalid registration id {short(reg_id)}")
    user = await find_user(user_ref)
    result = await approve_registration(handles.store, reg_id, user, utcnow(), policy=handles.options.registration)
    out: dict[str, Any] = {}
    if isinstance(result, Node):
        out["node"] = node_json(result, await users_by_id(), utcnow())
        out["registration"] = {"id": reg_id, "node_id": result.id, "user_id": user.id}
    else:
        out["registration"] = registration_json(result)
    handles.log.info("registration %s completed for user %s", reg_id, user.name)
    return out
