"""The policy file, as Tailscale's API serves it.

    GET  /api/v2/tailnet/{tailnet}/acl           policy_file:read  the policy: HuJSON as stored with
                                                                   `Accept: application/hujson`, else JSON;
                                                                   `ETag` names the version
    POST /api/v2/tailnet/{tailnet}/acl           policy_file       set it (HuJSON or JSON body); `If-Match`
                                                                   with an ETag (or "ts-default" while none is
                                                                   set) refuses a change made meanwhile (412)
    POST /api/v2/tailnet/{tailnet}/acl/validate  policy_file:read  200 with {} or {"message": the problem}
A policy is checked against the tailnet (its users and nodes, its tests) before it is stored, as
`PUT /api/v1/policy` does. With `policy.mode: file` the file is the policy and the API cannot set it.
Without a stored policy every device may reach every other: GET shows that as DEFAULT_POLICY.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from quart import Response, request

from trioscale.shared.domain.policy import PolicyError
from trioscale.shared.domain.policy.hujson import loads as hujson_loads
from trioscale.shared.domain.policy.host import parse_and_check

from ..api import InvalidRequest, admin
from .auth import error, needs
from .common import PREFIX, blueprint, check_tailnet

#: what "no policy" means here (every device reaches every other), as a policy file
DEFAULT_POLICY = '{\n  "acls": [\n    {"action": "accept", "src": ["*"], "dst": ["*:*"]}\n  ]\n}\n'
HUJSON = "application/hujson"


def etag(text: str) -> str:
    return '"' + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] + '"'


async def _current() -> tuple[str, bool]:
    """(the policy text in force, whether it is the default)."""
    handles = admin()
    if handles.options.policy.mode == "file":
        c = handles.coordinator
        text = c.policy.text if c is not None else None
        if text is None and handles.options.policy.path is not None:
            try:
                text = handles.options.policy.path.read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidRequest(f"policy file {handles.options.policy.path}: {exc.strerror}") from None
        return (text, False) if text else (DEFAULT_POLICY, True)
    record = await handles.store.get_policy()
    return (record.text, False) if record is not None else (DEFAULT_POLICY, True)


def _answer(text: str) -> Response:
    if HUJSON in request.headers.get("Accept", ""):
        resp = Response(text, status=200, mimetype=HUJSON)
    else:
        try:
            resp = Response(json.dumps(hujson_loads(text), indent=2), status=200, mimetype="application/json")
        except PolicyError as exc:
            raise InvalidRequest(f"the stored policy does not parse: {exc}") from None
    resp.headers["ETag"] = etag(text)
    return resp


async def _text_from_body() -> str:
    raw = await request.get_data(as_text=False)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the policy is not valid UTF-8") from None
    if not text.strip():
        raise InvalidRequest("the policy is empty")
    return text


async def _check(text: str) -> str | None:
    store = admin().store
    try:
        if isinstance(hujson_loads(text), list):
            return "give a whole policy (validating a list of tests alone is not supported)"
        parse_and_check(text, await store.list_users(), await store.list_nodes())
    except PolicyError as exc:
        return f"invalid policy: {exc}"
    return None


@blueprint.get(PREFIX + "/tailnet/<tailnet>/acl")
@needs("policy_file", write=False)
async def get_acl(tailnet: str) -> Any:
    check_tailnet(tailnet)
    text, _ = await _current()
    return _answer(text)


@blueprint.post(PREFIX + "/tailnet/<tailnet>/acl")
@needs("policy_file", write=True)
async def set_acl(tailnet: str) -> Any:
    check_tailnet(tailnet)
    handles = admin()
    if handles.options.policy.mode == "file":
        raise InvalidRequest(f"policy.mode is file: edit {handles.options.policy.path or 'the policy file'} instead")
    text = await _text_from_body()
    wanted = request.headers.get("If-Match", "").strip()
    if wanted:
        current, default = await _current()
        matches = wanted == "*" or wanted == etag(current) or wanted.strip('"') == etag(current).strip('"') \
            or (default and wanted.strip('"') == "ts-default")
        if not matches:
            return error(412, "the policy changed since that ETag was read (precondition failed)")
    problem = await _check(text)
    if problem is not None:
        raise InvalidRequest(problem)
    record = await handles.store.set_policy(text)
    handles.log.info("API v2: policy version %d stored", record.version)
    await handles.caught_up()
    return _answer(record.text)


@blueprint.post(PREFIX + "/tailnet/<tailnet>/acl/validate")
@needs("policy_file", write=False)
async def validate_acl(tailnet: str) -> Any:
    check_tailnet(tailnet)
    problem = await _check(await _text_from_body())
    return {} if problem is None else {"message": problem}
