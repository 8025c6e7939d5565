"""SSH check mode: Headscale's auth approve / reject, where authId names a held SSH session."""

from __future__ import annotations

import re
from typing import Any

from quart import Blueprint, request

from trioscale.shared.model import utcnow

from .api import InvalidRequest, admin, json_body
from .fields import known_fields, known_query, short

_AUTH_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

blueprint = Blueprint("sshcheck", __name__)


async def decide_ssh_check(decision: str) -> Any:
    known_query(request.args, ())
    auth_id = known_fields(await json_body(), ("authId",)).get("authId")
    if not isinstance(auth_id, str) or not _AUTH_ID.match(auth_id):
        raise InvalidRequest(f"give the authId of a held SSH session, not {short(auth_id)}")
    check = await admin().store.decide_ssh_check(auth_id, decision, utcnow())
    admin().log.info("SSH session %s %s (node %d to node %d as %s)", auth_id, decision, check.src_node_id,
                     check.dst_node_id, check.local_user or "?")
    return {}


@blueprint.post("/api/v1/auth/approve")
async def auth_approve() -> Any:
    return await decide_ssh_check("approved")


@blueprint.post("/api/v1/auth/reject")
async def auth_reject() -> Any:
    return await decide_ssh_check("rejected")
