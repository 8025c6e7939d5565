"""The admin API against Headscale's v0.29.2 API document (issue #13, item 1), route by route, in
process: every Headscale path and verb is served; a request made the way Headscale's document says is
accepted with Headscale's meaning (200, not 201); every answer carries every field of Headscale's
response message with its JSON type (string ids, enum names, RFC 3339 times); errors are
`application/problem+json`; and the input that used to be silently misread (`aclTags`,
`?expiry=<future>`, `displayName`, `?email=`) now means what it says, while an unknown field is
refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from trioscale.config import config_from_dict
from trioscale.options import admin_options
from trioscale.services.coord.admin import create_admin_app
from trioscale.services.coord.admin.app import route_table
from trioscale.shared.domain import secrets
from trioscale.shared.model import Node, PendingRegistration, SSHCheck, utcnow
from trioscale.shared.store import open_store_url
from trioscale.shared.store.base import Store

DOC = json.loads((Path(__file__).parents[2] / "cli" / "data" / "headscale-v0.29.2.swagger.json").read_text())
DEFS = DOC["definitions"]
OPTIONS = admin_options(config_from_dict({}))


def operations() -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operationId -> (verb, path, operation) for every route of Headscale's document."""
    return {op["operationId"]: (verb.upper(), path, op)
            for path, ops in DOC["paths"].items() for verb, op in ops.items()}


def test_every_headscale_route_is_served() -> None:
    app = create_admin_app(OPTIONS, None, coordinator=None)  # type: ignore[arg-type]
    served = set(route_table(app))
    wanted = {(verb, path) for verb, path, _ in operations().values()}
    assert len(wanted) == 29
    assert wanted - served == set()


# -- the shapes ------------------------------------------------------------------------------------


def _schema(ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    return DEFS[ref.rsplit("/", 1)[1]] if ref else ref_or_schema


def conforms(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    """Where `value` differs from `schema` as protobuf JSON writes it (every field present: unset
    messages and times are null). Fields beyond the schema's are ours and allowed."""
    schema = _schema(schema)
    if "enum" in schema:
        return [] if value in schema["enum"] else [f"{where}: {value!r} is not one of {schema['enum']}"]
    kind, fmt = schema.get("type"), schema.get("format")
    if kind == "object" or "properties" in schema:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {value!r}"]
        out = []
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value:
                out.append(f"{where}.{name}: missing")
            elif value[name] is None and (sub.get("$ref") or sub.get("format") == "date-time"):
                continue
            else:
                out += conforms(value[name], sub, f"{where}.{name}")
        return out
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r}"]
        return [e for i, item in enumerate(value) for e in conforms(item, schema["items"], f"{where}[{i}]")]
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{where}: expected a boolean, got {value!r}"]
    if kind == "integer":
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{where}: expected an integer"]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where}: expected a string, got {value!r}"]
        if fmt in ("uint64", "int64") and not value.isdigit():
            return [f"{where}: expected a 64-bit id as a string of digits, got {value!r}"]
        if fmt == "date-time":
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return [f"{where}: {value!r} is not RFC 3339"]
            if not value.endswith("Z") or when.tzinfo is None:
                return [f"{where}: {value!r} is not in UTC"]
        return []
    return [f"{where}: schema {schema} not understood by this test"]


def test_the_shape_check_finds_what_differs() -> None:
    node = DEFS["v1Node"]
    assert conforms({"id": 1}, DEFS["v1ApiKey"], "k") and conforms({}, node, "n")
    assert conforms({"registerMethod": "authkey"}, node["properties"]["registerMethod"], "n.registerMethod")
    assert conforms("2026-01-01 00:00", {"type": "string", "format": "date-time"}, "t")


# -- the requests ----------------------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with open_store_url("sqlite://:memory:") as s:
        yield s


class Api:
    def __init__(self, app: Any):
        self.client = app.test_client()

    async def __call__(self, verb: str, path: str, body: Any = None, **query: Any) -> tuple[int, Any, str]:
        if query:
            path += "?" + "&".join(f"{k}={quote(str(v))}" for k, v in query.items())
        kw: dict[str, Any] = {}
        if body is not None:
            kw["json"] = body
        resp = await self.client.open(path, method=verb, **kw)
        data = await resp.get_json()
        return resp.status_code, data, resp.mimetype

    async def ok(self, verb: str, path: str, body: Any = None, **query: Any) -> Any:
        status, data, _ = await self(verb, path, body, **query)
        assert status == 200, (verb, path, body, query, status, data)
        return data

    async def refused(self, status: int, verb: str, path: str, body: Any = None, **query: Any) -> str:
        got, data, mimetype = await self(verb, path, body, **query)
        assert got == status, (verb, path, body, query, got, data)
        assert mimetype == "application/problem+json"
        assert data["status"] == status and data["type"] == "about:blank" and data["title"], data
        return data["detail"]


@pytest.fixture
async def api(store: Store) -> Api:
    return Api(create_admin_app(OPTIONS, store, coordinator=None, require_auth=False))


async def a_node(store: Store, user_id: int, name: str, **fields: Any) -> Node:
    n = len(await store.list_nodes()) + 1
    return await store.create_node(Node(
        id=0, machine_key=bytes([n]) * 32, node_key=bytes([n + 100]) * 32, user_id=user_id, hostname=name,
        given_name=name, ipv4=f"100.64.0.{n}", ipv6=f"fd7a:115c:a1e0::{n}",
        hostinfo={"RoutableIPs": ["10.9.0.0/24"]}, register_method="authkey", **fields))


def check(op_id: str, data: Any) -> None:
    """`data` is Headscale's 200 answer for `op_id`, every field there and of its type."""
    schema = operations()[op_id][2]["responses"]["200"]["schema"]
    problems = conforms(data, schema, op_id)
    assert not problems, "\n".join(problems)


async def test_every_headscale_operation_answers_headscales_shape(api: Api, store: Store) -> None:
    """Each of the 29 operations once, with the parameters Headscale's document gives it."""
    done: set[str] = set()

    async def call(op_id: str, verb: str, path: str, body: Any = None, **query: Any) -> Any:
        data = await api.ok(verb, path, body, **query)
        check(op_id, data)
        done.add(op_id)
        return data

    await call("HeadscaleService_Health", "GET", "/api/v1/health")
    alice = (await call("HeadscaleService_CreateUser", "POST", "/api/v1/user",
                        {"name": "alice", "displayName": "Alice A", "email": "alice@example.com"}))["user"]
    bob = (await api.ok("POST", "/api/v1/user", {"name": "bob"}))["user"]
    await call("HeadscaleService_ListUsers", "GET", "/api/v1/user")
    renamed = await call("HeadscaleService_RenameUser", "POST", f"/api/v1/user/{bob['id']}/rename/bobby")
    assert renamed["user"]["name"] == "bobby"

    expiration = (utcnow() + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    pak = (await call("HeadscaleService_CreatePreAuthKey", "POST", "/api/v1/preauthkey",
                      {"user": alice["id"], "reusable": True, "ephemeral": False, "expiration": expiration,
                       "aclTags": ["tag:ci"]}))["preAuthKey"]
    assert pak["key"].startswith("tskey-auth-") and pak["aclTags"] == ["tag:ci"]
    await call("HeadscaleService_ListPreAuthKeys", "GET", "/api/v1/preauthkey")
    await call("HeadscaleService_ExpirePreAuthKey", "POST", "/api/v1/preauthkey/expire", {"id": pak["id"]})
    await call("HeadscaleService_DeletePreAuthKey", "DELETE", "/api/v1/preauthkey", id=pak["id"])

    api_key = (await call("HeadscaleService_CreateApiKey", "POST", "/api/v1/apikey", {"expiration": expiration}))
    prefix = secrets.prefix_of(api_key["apiKey"], secrets.KIND_API)
    listed = await call("HeadscaleService_ListApiKeys", "GET", "/api/v1/apikey")
    (record,) = [k for k in listed["apiKeys"] if k["prefix"] == prefix]
    await call("HeadscaleService_ExpireApiKey", "POST", "/api/v1/apikey/expire", {"prefix": prefix})
    await call("HeadscaleService_DeleteApiKey", "DELETE", f"/api/v1/apikey/{prefix}")
    assert record["id"] not in {k["id"] for k in (await api.ok("GET", "/api/v1/apikey"))["apiKeys"]}

    node = await a_node(store, int(alice["id"]), "web")
    nid = str(node.id)
    await call("HeadscaleService_ListNodes", "GET", "/api/v1/node", user="alice")
    shown = (await call("HeadscaleService_GetNode", "GET", f"/api/v1/node/{nid}"))["node"]
    assert shown["registerMethod"] == "REGISTER_METHOD_AUTH_KEY" and shown["availableRoutes"] == ["10.9.0.0/24"]
    await call("HeadscaleService_RenameNode", "POST", f"/api/v1/node/{nid}/rename/web2")
    await call("HeadscaleService_SetTags", "POST", f"/api/v1/node/{nid}/tags", {"tags": ["tag:web"]})
    routed = await call("HeadscaleService_SetApprovedRoutes", "POST", f"/api/v1/node/{nid}/approve_routes",
                        {"routes": ["10.9.0.0/24"]})
    assert routed["node"]["approvedRoutes"] == ["10.9.0.0/24"]
    await call("HeadscaleService_ExpireNode", "POST", f"/api/v1/node/{nid}/expire")

    debug = await call("HeadscaleService_DebugCreateNode", "POST", "/api/v1/debug/node",
                       {"user": "alice", "key": "debugkey0001", "name": "made-up", "routes": ["10.1.0.0/16"]})
    assert debug["node"]["availableRoutes"] == ["10.1.0.0/16"]
    joined = await call("HeadscaleService_AuthRegister", "POST", "/api/v1/auth/register",
                        {"user": "alice", "authId": "debugkey0001"})
    assert joined["node"]["name"] == "made-up" and joined["node"]["availableRoutes"] == ["10.1.0.0/16"]
    assert joined["node"]["registerMethod"] == "REGISTER_METHOD_CLI" and joined["node"]["ipAddresses"]

    now = utcnow()
    await store.put_pending_registration(PendingRegistration(id="pendinglogin1", machine_key=b"\x07" * 32,
                                                             node_key=b"\x08" * 32, hostinfo={"Hostname": "laptop"},
                                                             created_at=now))
    registered = await call("HeadscaleService_RegisterNode", "POST", "/api/v1/node/register",
                            user="alice", key="pendinglogin1")
    assert registered["node"]["givenName"] == "laptop"

    for auth_id, op in (("sshcheck-aaaa", "AuthApprove"), ("sshcheck-bbbb", "AuthReject")):
        await store.create_ssh_check(SSHCheck(id=auth_id, src_node_id=node.id, dst_node_id=node.id, local_user="root",
                                              created_at=now, expires_at=now + timedelta(minutes=5)))
        await call(f"HeadscaleService_{op}", "POST", f"/api/v1/auth/{op[4:].lower()}", {"authId": auth_id})

    policy = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
    await call("HeadscaleService_CheckPolicy", "POST", "/api/v1/policy/check", {"policy": policy})
    stored = await call("HeadscaleService_SetPolicy", "PUT", "/api/v1/policy", {"policy": policy})
    got = await call("HeadscaleService_GetPolicy", "GET", "/api/v1/policy")
    assert got["policy"] == stored["policy"] == policy and got["updatedAt"]

    await call("HeadscaleService_BackfillNodeIPs", "POST", "/api/v1/node/backfillips", confirmed="true")
    await call("HeadscaleService_DeleteNode", "DELETE", f"/api/v1/node/{nid}")
    await call("HeadscaleService_DeleteUser", "DELETE", f"/api/v1/user/{bob['id']}")
    assert done == set(operations())


# -- what was misread ------------------------------------------------------------------------------


async def test_acl_tags_make_a_tagged_key(api: Api) -> None:
    user = (await api.ok("POST", "/api/v1/user", {"name": "carol"}))["user"]
    for field in ("aclTags", "acl_tags"):  # the JSON name and the proto name, as Headscale's gateway reads both
        key = (await api.ok("POST", "/api/v1/preauthkey", {"user": user["id"], field: ["tag:a", "tag:b"]}))["preAuthKey"]
        assert key["aclTags"] == ["tag:a", "tag:b"]
    listed = (await api.ok("GET", "/api/v1/preauthkey"))["preAuthKeys"]
    assert [k["aclTags"] for k in listed] == [["tag:a", "tag:b"]] * 2
    assert "tags" in await api.refused(400, "POST", "/api/v1/preauthkey", {"user": user["id"], "tags": ["tag:a"]})
    assert "twice" in await api.refused(400, "POST", "/api/v1/preauthkey",
                                        {"user": user["id"], "aclTags": [], "acl_tags": ["tag:a"]})
    assert len((await api.ok("GET", "/api/v1/preauthkey"))["preAuthKeys"]) == 2


async def test_a_key_owned_by_its_tags_alone(api: Api, store: Store) -> None:
    # Headscale 0.29: no user, or user 0, with aclTags: the key belongs to its tags
    for body in ({"aclTags": ["tag:b", "tag:a", "tag:b"]}, {"user": "0", "aclTags": ["tag:a"]},
                 {"user": 0, "acl_tags": ["tag:a"]}):
        key = (await api.ok("POST", "/api/v1/preauthkey", body))["preAuthKey"]
        check("HeadscaleService_CreatePreAuthKey", {"preAuthKey": key})
        assert key["user"] is None and key["aclTags"] in (["tag:a", "tag:b"], ["tag:a"]), key
    listed = (await api.ok("GET", "/api/v1/preauthkey"))["preAuthKeys"]
    assert [k["user"] for k in listed] == [None] * 3
    # neither a user nor tags: refused, as Headscale's "must be tagged or owned"
    for body in ({}, {"user": "0"}, {"user": 0, "aclTags": []}, {"reusable": True}):
        assert "aclTags" in await api.refused(400, "POST", "/api/v1/preauthkey", body)
    # the user that holds them in the store is not a name anyone can take
    assert "reserved" in await api.refused(409, "POST", "/api/v1/user", {"name": "tagged-devices"})
    assert (await api.ok("GET", "/api/v1/user"))["users"] == []  # Headscale lists no such user
    assert len((await api.ok("GET", "/api/v1/preauthkey"))["preAuthKeys"]) == 3


async def test_expire_at_a_future_time_is_not_expiring_now(api: Api, store: Store) -> None:
    user = (await api.ok("POST", "/api/v1/user", {"name": "dave"}))["user"]
    node = await a_node(store, int(user["id"]), "box")
    later = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    text = later.isoformat().replace("+00:00", "Z")
    shown = (await api.ok("POST", f"/api/v1/node/{node.id}/expire", expiry=text))["node"]
    assert shown["expiry"] == text and shown["expired"] is False
    assert (await store.get_node(node.id)).expiry == later  # type: ignore[union-attr]
    past = (await api.ok("POST", f"/api/v1/node/{node.id}/expire", expiry="2001-02-03T04:05:06Z"))["node"]
    assert past["expiry"] == "2001-02-03T04:05:06Z" and past["expired"] is True
    never = (await api.ok("POST", f"/api/v1/node/{node.id}/expire", disableExpiry="true"))["node"]
    assert never["expiry"] is None and never["expired"] is False
    now = (await api.ok("POST", f"/api/v1/node/{node.id}/expire"))["node"]
    assert now["expired"] is True
    assert "not both" in await api.refused(400, "POST", f"/api/v1/node/{node.id}/expire", expiry=text,
                                           disableExpiry="true")
    # the old body form is refused, not read as "now"
    assert "expiry" in await api.refused(400, "POST", f"/api/v1/node/{node.id}/expire", {"expiry": text})


async def test_display_name_and_email(api: Api) -> None:
    erin = (await api.ok("POST", "/api/v1/user", {"name": "erin", "displayName": "Erin E", "email": "erin@x.org"}))["user"]
    assert (erin["displayName"], erin["email"]) == ("Erin E", "erin@x.org")
    await api.ok("POST", "/api/v1/user", {"name": "frank", "display_name": "Frank F", "email": "frank@x.org"})
    by_email = (await api.ok("GET", "/api/v1/user", email="frank@x.org"))["users"]
    assert [(u["name"], u["displayName"]) for u in by_email] == [("frank", "Frank F")]
    assert (await api.ok("GET", "/api/v1/user", email="nobody@x.org"))["users"] == []
    assert [u["name"] for u in (await api.ok("GET", "/api/v1/user", id=erin["id"]))["users"]] == ["erin"]
    assert "display" in (await api.refused(400, "POST", "/api/v1/user", {"name": "gina", "display": "G"}))
    gina = (await api.ok("POST", "/api/v1/user", {"name": "gina", "pictureUrl": "https://pic.example/g.png"}))["user"]
    assert gina["profilePicUrl"] == "https://pic.example/g.png" and (gina["provider"], gina["providerId"]) == ("", "")
    assert "pictureUrl" in await api.refused(400, "POST", "/api/v1/user", {"name": "hugo", "pictureUrl": "file:///x"})
    assert "frobnicate" in await api.refused(400, "GET", "/api/v1/user", frobnicate="1")
    assert [u["name"] for u in (await api.ok("GET", "/api/v1/user"))["users"]] == ["erin", "frank", "gina"]


async def test_unknown_fields_are_refused_everywhere(api: Api, store: Store) -> None:
    user = (await api.ok("POST", "/api/v1/user", {"name": "hank"}))["user"]
    node = await a_node(store, int(user["id"]), "hbox")
    n = f"/api/v1/node/{node.id}"
    for verb, path, body in [
        ("POST", "/api/v1/apikey", {"expiration": "1h", "name": "x"}),
        ("POST", "/api/v1/apikey/expire", {"prefix": "abc", "force": True}),
        ("POST", "/api/v1/preauthkey/expire", {"id": "1", "user": "1"}),
        ("POST", f"{n}/tags", {"tags": [], "user": "x"}),
        ("POST", f"{n}/approve_routes", {"routes": [], "exit": True}),
        ("POST", "/api/v1/auth/approve", {"authId": "abcdefgh", "why": "x"}),
        ("POST", "/api/v1/auth/register", {"authId": "abcdefgh", "user": "hank", "node": "x"}),
        ("POST", "/api/v1/policy/check", {"policy": "{}", "mode": "file"}),
        ("PUT", "/api/v1/policy", {"policy": "{}", "version": 3}),
        ("POST", f"{n}/share", {"user": "hank", "until": "x"}),
        ("POST", "/api/v1/debug/node", {"user": "hank", "key": "abcdefgh", "name": "d", "tags": []}),
    ]:
        assert "unknown field" in await api.refused(400, verb, path, body), (verb, path)
    assert "unknown field" in await api.refused(400, "GET", "/api/v1/node", users="hank")
    assert "unknown field" in await api.refused(400, "POST", "/api/v1/node/backfillips", confirm="true")
    assert (await store.get_node(node.id)) == node


async def test_backfill_needs_confirmation_and_fills_what_is_missing(api: Api, store: Store) -> None:
    user = (await api.ok("POST", "/api/v1/user", {"name": "ivy"}))["user"]
    node = await a_node(store, int(user["id"]), "ivybox")
    await store.update_node(node.id, ipv6=None)
    assert "confirmed" in await api.refused(400, "POST", "/api/v1/node/backfillips")
    assert (await store.get_node(node.id)).ipv6 is None  # type: ignore[union-attr]
    changes = (await api.ok("POST", "/api/v1/node/backfillips", confirmed="true"))["changes"]
    filled = (await store.get_node(node.id)).ipv6  # type: ignore[union-attr]
    assert filled and changes == [f"assigned ipv6 {filled} to node ivybox"]
    assert (await api.ok("POST", "/api/v1/node/backfillips", confirmed="true"))["changes"] == []


async def test_errors_are_problem_documents(api: Api) -> None:
    assert "not found" in await api.refused(404, "GET", "/api/v1/node/99")
    assert "not found" in await api.refused(404, "DELETE", "/api/v1/user/99")
    await api.ok("POST", "/api/v1/user", {"name": "jack"})
    assert "already exists" in await api.refused(409, "POST", "/api/v1/user", {"name": "jack"})
    assert "no such API endpoint" in await api.refused(404, "GET", "/api/v1/nodes")
    assert "invalid user name" in await api.refused(400, "POST", "/api/v1/user", {})


async def test_times_are_utc_rfc3339(api: Api) -> None:
    user = (await api.ok("POST", "/api/v1/user", {"name": "kate"}))["user"]
    created = datetime.fromisoformat(user["createdAt"].replace("Z", "+00:00"))
    assert created.tzinfo == timezone.utc and abs(created - utcnow()) < timedelta(minutes=1)
    key = (await api.ok("POST", "/api/v1/preauthkey",
                        {"user": user["id"], "expiration": "2031-05-06T07:08:09+02:00"}))["preAuthKey"]
    assert key["expiration"] == "2031-05-06T05:08:09Z"


async def test_backfill_takes_back_addresses_of_a_family_no_longer_configured(store: Store) -> None:
    v4_only = admin_options(config_from_dict({"prefixes": {"v6": ""}}))
    api = Api(create_admin_app(v4_only, store, coordinator=None, require_auth=False))
    user = (await api.ok("POST", "/api/v1/user", {"name": "lena"}))["user"]
    node = await a_node(store, int(user["id"]), "lenabox")
    changes = (await api.ok("POST", "/api/v1/node/backfillips", confirmed="true"))["changes"]
    assert changes == [f"removed ipv6 {node.ipv6} from node lenabox"]
    kept = await store.get_node(node.id)
    assert kept is not None and (kept.ipv4, kept.ipv6) == (node.ipv4, None)


async def test_a_tagged_node_shows_the_tagged_devices_user(api: Api, store: Store) -> None:
    user = (await api.ok("POST", "/api/v1/user", {"name": "mia"}))["user"]
    node = await a_node(store, int(user["id"]), "miabox")
    assert (await api.ok("GET", f"/api/v1/node/{node.id}"))["node"]["user"] == user
    tagged = (await api.ok("POST", f"/api/v1/node/{node.id}/tags", {"tags": ["tag:srv"]}))["node"]
    assert (tagged["user"]["id"], tagged["user"]["name"]) == ("2147455555", "tagged-devices")
    assert [n["id"] for n in (await api.ok("GET", "/api/v1/node", user="mia"))["nodes"]] == [tagged["id"]]


async def test_allow_names_what_a_path_serves(api: Api, store: Store) -> None:
    # a fixed route beside a templated one (/node/backfillips, /node/{nodeId}) serves its own verbs:
    # OPTIONS and a 405 name them alone, and the templated route's verbs do not reach it
    for path, allowed in (("/api/v1/node/backfillips", "OPTIONS, POST"), ("/api/v1/node/register", "OPTIONS, POST"),
                          ("/api/v1/node/7", "DELETE, GET, HEAD, OPTIONS"),
                          ("/api/v1/apikey", "DELETE, GET, HEAD, OPTIONS, POST")):
        resp = await api.client.open(path, method="OPTIONS")
        assert (resp.status_code, resp.headers["Allow"]) == (200, allowed), path
    for verb in ("GET", "DELETE", "PUT"):
        resp = await api.client.open("/api/v1/node/backfillips?confirmed=true", method=verb)
        assert (resp.status_code, resp.headers["Allow"]) == (405, "OPTIONS, POST"), verb
        assert resp.mimetype == "application/problem+json"
    assert "invalid node" in await api.refused(400, "GET", "/api/v1/node/abc")  # no fixed route: the id is read
    assert (await api.client.open("/api/v1/nope", method="OPTIONS")).status_code == 404


async def test_input_headscale_refuses_is_refused(api: Api, store: Store) -> None:
    user = (await api.ok("POST", "/api/v1/user", {"name": "nora"}))["user"]
    node = await a_node(store, int(user["id"]), "norabox")
    # a repeated field is a list (Headscale's gateway refuses anything else); absent or null: none
    for routes in ({}, "10.9.0.0/24", 5):
        assert "list" in await api.refused(400, "POST", f"/api/v1/node/{node.id}/approve_routes", {"routes": routes})
    assert (await api.ok("POST", f"/api/v1/node/{node.id}/approve_routes", {"routes": None}))["node"]["approvedRoutes"] == []
    # an empty time or user is no time or user
    assert "empty" in await api.refused(400, "POST", f"/api/v1/node/{node.id}/expire", expiry="")
    assert "empty" in await api.refused(400, "POST", "/api/v1/preauthkey", {"user": "", "aclTags": ["tag:a"]})
    # 3.0 is the integer 3 in JSON, as in Headscale's protobuf JSON
    key = (await api.ok("POST", "/api/v1/preauthkey", {"user": float(user["id"])}))["preAuthKey"]
    assert key["user"]["name"] == "nora"
    assert (await api.ok("POST", "/api/v1/preauthkey/expire", {"id": float(key["id"])}))["preAuthKey"]["expired"]
    assert "invalid" in await api.refused(400, "POST", "/api/v1/preauthkey/expire", {"id": 2.5})


async def test_a_key_id_of_zero_is_none(api: Api) -> None:
    # Headscale's getAPIKey: id 0 is unset, so the prefix names the key; both set is refused
    created = await api.ok("POST", "/api/v1/apikey", {})
    prefix = created["apiKeyRecord"]["prefix"]
    expired = await api.ok("POST", "/api/v1/apikey/expire", {"id": "0", "prefix": prefix})
    assert expired["apiKeyRecord"]["expired"] is True
    assert "not both" in await api.refused(400, "DELETE", f"/api/v1/apikey/{prefix}",
                                           id=created["apiKeyRecord"]["id"])
    assert (await api.ok("DELETE", f"/api/v1/apikey/{prefix}", id="0"))["apiKeyRecord"]["prefix"] == prefix
