"""The access control policy:

    GET  /api/v1/policy                       the policy in force ({"policy", "updatedAt"}; ours: "mode",
                                              "version" or "path")
    PUT  /api/v1/policy        {"policy": T}  check and store a new version (database mode)
    POST /api/v1/policy/check  {"policy": T}  check only: {} or 400 with the reason

A policy is checked against the current tailnet (users and nodes): syntax (line and column),
structure, unknown groups / tags, and its `tests` / `sshTests`. A refused policy changes nothing.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from trioscale.shared.domain.policy import PolicyError
from trioscale.shared.store.base import NotFound

from trioscale.shared.domain.policy.host import parse_and_check
from .api import InvalidRequest, admin, json_body
from .fields import known_fields, known_query
from .shapes import id_text, ts

blueprint = Blueprint("policy", __name__)


def _policy_text(body: dict[str, Any]) -> str:
    known_query(request.args, ())
    text = known_fields(body, ("policy",)).get("policy")
    if not isinstance(text, str):
        raise InvalidRequest("give the policy text in \"policy\"")
    if not text.strip():
        raise InvalidRequest("invalid policy: the policy is empty")
    return text


async def _check(text: str) -> Any:
    store = admin().store
    try:
        return parse_and_check(text, await store.list_users(), await store.list_nodes())
    except PolicyError as exc:
        raise InvalidRequest(f"invalid policy: {exc}") from None


@blueprint.get("/api/v1/policy")
async def get_policy() -> Any:
    handles = admin()
    settings = handles.options.policy
    if settings.mode == "file":
        c = handles.coordinator
        text = c.policy.text if c is not None else None
        if text is None:
            path = settings.path
            try:
                text = open(path, encoding="utf-8").read() if path else None
            except OSError as exc:
                raise InvalidRequest(f"policy file {path}: {exc.strerror}") from None
        return {"policy": text or "", "updatedAt": None, "mode": "file",
                "path": str(settings.path) if settings.path else None}
    record = await handles.store.get_policy()
    if record is None:
        raise NotFound("no policy is set: all traffic is allowed (set one with `trioscale policy set -f FILE`)")
    return {"policy": record.text, "updatedAt": ts(record.created_at), "mode": "database",
            "version": id_text(record.version)}


@blueprint.put("/api/v1/policy")
async def set_policy() -> Any:
    handles = admin()
    data = await json_body()
    text = _policy_text(data)
    if handles.options.policy.mode == "file":
        path = handles.options.policy.path
        if path is None:  # Headscale's file mode without a file: no policy, and none to set
            raise InvalidRequest("policy.mode is file and no policy.path is set: name a policy file in the "
                                 "configuration (or use policy.mode: database) to set one")
        raise InvalidRequest(f"policy.mode is file: edit {path} instead "
                             "(it is reloaded when it changes and on SIGHUP)")
    await _check(text)
    record = await handles.store.set_policy(text)
    handles.log.info("policy version %d stored", record.version)
    await handles.caught_up()
    return {"policy": record.text, "updatedAt": ts(record.created_at), "mode": "database",
            "version": id_text(record.version)}


@blueprint.post("/api/v1/policy/check")
async def check_policy() -> Any:
    data = await json_body()
    await _check(_policy_text(data))
    return {}
