"""The admin API's OpenAPI 3.1 document (`/api/v1/openapi.yaml`, `.json`) and a page to read and
try it (`/api/v1/docs`).

The document is built here, next to the routes it describes, and a test holds it to `route_table`
(nothing missing, nothing extra) and runs Schemathesis against a live server. Its shapes are
Headscale's (shapes.py), written as JSON Schema 2020-12: a field that may be unset is
`["string", "null"]`, ids are decimal strings, every error is a problem document.

The three routes answer without an API key: the document is the same for every server and holds
nothing of the tailnet (as Headscale's /swagger), and the page has to load in a browser, which cannot
send the key on a navigation; the page sends the key it is given with each request it tries.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import yaml
from quart import Blueprint, Response

from .apiv2 import openapi as v2
from .docspage import PAGE

__all__ = ["blueprint", "document", "PUBLIC_PATHS"]

DOC_PATHS = ("/api/v1/openapi.yaml", "/api/v1/openapi.json", "/api/v1/docs")
#: the paths the TCP listener serves without an API key (see the module's doc)
PUBLIC_PATHS = frozenset(DOC_PATHS)

blueprint = Blueprint("openapi", __name__)


# -- schemas ----------------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"oneOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _object(props: dict[str, Any], *, required: tuple[str, ...] | None = None, **extra: Any) -> dict[str, Any]:
    """An object with `props`, all required unless `required` says which (every field of a record
    is present, as protobuf JSON writes it)."""
    return {"type": "object", "properties": props,
            "required": list(props if required is None else required), **extra}


_ID = {"type": "string", "pattern": "^[0-9]+$", "description": "a 64-bit id, as a decimal string"}
_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = _nullable(_TIME)
_TEXT = {"type": "string"}
_TEXT_OR_NULL = {"type": ["string", "null"]}
_BOOL = {"type": "boolean"}
_TEXTS = {"type": "array", "items": _TEXT}
_PREFIXES = {"type": "array", "items": _TEXT, "description": "IP prefixes, e.g. 10.0.0.0/8 or ::/0"}
_EMPTY = {"type": "object", "maxProperties": 0}

SCHEMAS: dict[str, Any] = {
    "Problem": _object(
        {"type": _TEXT, "title": _TEXT, "status": {"type": "integer"}, "detail": _TEXT},
        description="An RFC 7807 problem document: detail is the line to show a user."),
    "User": _object({
        "id": _ID, "name": _TEXT, "createdAt": _TIME_OR_NULL, "displayName": _TEXT_OR_NULL,
        "email": _TEXT_OR_NULL, "providerId": _TEXT_OR_NULL, "provider": _TEXT_OR_NULL,
        "profilePicUrl": _TEXT_OR_NULL}),
    "PreAuthKey": _object({
        "user": _nullable(_ref("User")), "id": _ID,
        "key": {**_TEXT, "description": "the key's text in the answer that creates it, masked after"},
        "reusable": _BOOL, "ephemeral": _BOOL, "used": _BOOL, "expiration": _TIME_OR_NULL,
        "createdAt": _TIME_OR_NULL, "aclTags": _TEXTS, "prefix": _TEXT, "expired": _BOOL}),
    "ApiKey": _object({
        "id": _ID, "prefix": _TEXT, "expiration": _TIME_OR_NULL, "createdAt": _TIME_OR_NULL,
        "lastSeen": _TIME_OR_NULL, "expired": _BOOL,
        "scopes": {**_TEXTS, "description": "API v2 scopes; none: all access"}}),
    "Node": _object({
        "id": _ID, "machineKey": _TEXT, "nodeKey": _TEXT, "discoKey": _TEXT, "ipAddresses": _TEXTS,
        "name": _TEXT, "user": _nullable(_ref("User")), "lastSeen": _TIME_OR_NULL, "expiry": _TIME_OR_NULL,
        "preAuthKey": _nullable(_ref("PreAuthKey")), "createdAt": _TIME_OR_NULL,
        "registerMethod": {"type": "string", "enum": [
            "REGISTER_METHOD_UNSPECIFIED", "REGISTER_METHOD_AUTH_KEY", "REGISTER_METHOD_CLI",
            "REGISTER_METHOD_OIDC"]},
        "givenName": _TEXT, "online": _BOOL, "approvedRoutes": _PREFIXES, "availableRoutes": _PREFIXES,
        "subnetRoutes": _PREFIXES, "tags": _TEXTS, "ephemeral": _BOOL, "expired": _BOOL}),
    "Registration": _object({
        "id": _TEXT, "hostname": _TEXT, "nodeId": _nullable(_ID), "userId": _nullable(_ID),
        "createdAt": _TIME_OR_NULL}, description="A pending interactive login."),
    "Routes": _object({
        "id": _ID, "givenName": _TEXT, "availableRoutes": _PREFIXES, "approvedRoutes": _PREFIXES,
        "servingRoutes": _PREFIXES, "primaryRoutes": _PREFIXES, "exitNode": _BOOL, "online": _BOOL},
        description="A node's subnet routes: advertised, approved, serving (both) and primary."),
    "Share": _object({
        "node": _object({"id": _ID, "givenName": _TEXT}), "user": _nullable(_ref("User")),
        "createdAt": _TIME_OR_NULL}),
    "Policy": _object({
        "policy": _TEXT, "updatedAt": _TIME_OR_NULL, "mode": {"type": "string", "enum": ["file", "database"]},
        "path": {**_TEXT_OR_NULL, "description": "file mode: the policy file"},
        "version": {**_ID, "description": "database mode: the stored version"}},
        required=("policy", "updatedAt", "mode")),
}

# -- parameters and bodies --------------------------------------------------------------------------

# an id is a 64-bit number: a longer run of digits is refused (400), never taken for a name
_NOT_A_LONG_NUMBER = {"not": {"pattern": "^ *[0-9]{19,} *$"}}
_USER_REF = {"type": "string", "minLength": 1, **_NOT_A_LONG_NUMBER, "description": "a user's id or name"}
_USER_REF_BODY = {"type": ["string", "integer"], "minLength": 1, "minimum": 1, "maximum": 2**63 - 1,
                  **_NOT_A_LONG_NUMBER, "description": "a user's id or name"}
_KEY_OWNER = {"type": ["string", "integer", "null"], "minLength": 1, "minimum": 0, "maximum": 2**63 - 1, **_NOT_A_LONG_NUMBER,
              "description": "a user's id or name; absent, null or 0: the key is owned by its aclTags alone"}
_NODE_REF = {"type": "string", "pattern": "^[0-9]{1,19}$", "description": "a node's id"}
# the forms fields.parse_expiration reads; whether a time lies in the future and within 10 years
# (a duration longer than zero, at most 10 years) is decided at the time of asking: 400 otherwise
_DURATION_RE = r"[0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w|y|MS|S|M|H|D|W|Y))+"
_RFC3339_RE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
_EXPIRATION = {"type": ["string", "null"], "pattern": f"^$|^({_DURATION_RE})$|^{_RFC3339_RE}$",
               "description": "a duration (30m, 24h, 90d, 1h30m) or an RFC 3339 time, longer than zero and at "
                              "most 10 years ahead (else 400); empty or null: the default"}
# what fields.py and the domain accept, so a client (and Schemathesis) knows before asking
_USER_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$", "not": {"pattern": "^[0-9]+$"},
              "description": "letters, digits and . _ @ + - (not all digits: those are ids)"}
_NODE_NAME = {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
              "not": {"pattern": "--"}, "description": "a DNS label"}
_TAG = {"type": "string", "pattern": "^tag:[A-Za-z][A-Za-z0-9_-]{0,62}$"}
_TAG_RE = "tag:[A-Za-z][A-Za-z0-9_-]{0,62}"
_TAGS = {"type": ["array", "string"], "items": _TAG, "pattern": f"^ *({_TAG_RE} *(, *{_TAG_RE} *)*)?$",
         "description": "a list of tags, or one string of comma-separated tags"}
_REGISTRATION_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$", "description": "a pending login's id"}
_SSH_AUTH_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$", "description": "a held SSH session's id"}
_POLICY_TEXT = {"type": "string", "pattern": "\\S", "description": "the policy (HuJSON)"}


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _body(props: dict[str, Any], required: tuple[str, ...] = (), *, body_required: bool | None = None,
          **extra: Any) -> dict[str, Any]:
    """A JSON body; fields also go by their snake_case names (as Headscale's gateway takes them), and
    any other field is refused."""
    schema = {"type": "object", "properties": props, "additionalProperties": False, **extra}
    if required:
        schema["required"] = list(required)
    needed = bool(required) if body_required is None else body_required
    return {"required": needed, "content": {"application/json": {"schema": schema}}}


_NODE_ID = _path("nodeId", _NODE_REF, "the node's id")
_KEY_ID = {"type": "string", "pattern": "^[0-9]{0,17}[1-9][0-9]{0,17}$", "maxLength": 18,
           "description": "a key's id; 0 is none, as in Headscale"}
# a key named by its id or its prefix (or whole key): one of them, the other absent, empty or null
# (an id of 0 is none, as in Headscale)
_ID_OR_PREFIX = _body(
    {"id": {"type": ["string", "integer", "null"], "pattern": "^([0-9]{1,18})?$", "minimum": 0,
            "maximum": 2**63 - 1},
     "prefix": {"type": ["string", "null"], "maxLength": 256, "description": "the key's prefix (or the whole key)"}},
    body_required=True, anyOf=[
        {"required": ["id"], "properties": {"id": {"type": ["string", "integer"], "minLength": 1,
                                                  "not": {"enum": [0, "0"]}},
                                           "prefix": {"enum": ["", None]}}},
        {"required": ["prefix"], "properties": {
            "id": {"enum": ["", None, 0, "0"]},
            "prefix": {"type": "string", "pattern": "[^ ]", "not": {"pattern": "^ *[th]skey-"}}}},
    ])

# -- responses --------------------------------------------------------------------------------------

_ERRORS = {
    "400": "the request is refused (the detail says why)",
    "401": "no valid API key (TCP listener)",
    "404": "no such record or endpoint",
    "409": "a conflict with what is stored",
    "413": "the request body is larger than 64 KiB",
    "503": "the database is unavailable",
}


def _ok(schema: dict[str, Any], description: str = "done") -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": description,
                                         "content": {"application/json": {"schema": schema}}}}
    for code, text in _ERRORS.items():
        responses[code] = {"$ref": f"#/components/responses/{code}"}
    return responses


def _operation(op_id: str, summary: str, tag: str, response: dict[str, Any], *,
               parameters: list[dict[str, Any]] = (), body: dict[str, Any] | None = None) -> dict[str, Any]:  # type: ignore[assignment]
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if parameters:
        out["parameters"] = list(parameters)
    if body is not None:
        out["requestBody"] = body
    out["responses"] = _ok(response)
    return out


def _wrap(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return _object({name: schema})


def _list_of(name: str, item: str) -> dict[str, Any]:
    return _wrap(name, {"type": "array", "items": _ref(item)})


def _paths() -> dict[str, Any]:
    user, node, key, apikey = _ref("User"), _ref("Node"), _ref("PreAuthKey"), _ref("ApiKey")
    return {
        "/api/v1/health": {"get": _operation(
            "health", "The server answers and reaches its database", "health",
            _wrap("databaseConnectivity", _BOOL))},
        "/api/v1/user": {
            "get": _operation("listUsers", "List users (all, or by id, name or email)", "users",
                              _list_of("users", "User"), parameters=[
                                  _query("id", {"type": "string", "pattern": "^([0-9]{1,18})?$"},
                                         "a user's id (empty or 0: every user)"),
                                  _query("name", _TEXT, "a user's name"),
                                  _query("email", _TEXT, "a user's email")]),
            "post": _operation("createUser", "Create a user", "users", _wrap("user", user), body=_body({
                "name": _USER_NAME, "displayName": {"type": ["string", "null"], "maxLength": 256},
                "email": {"type": ["string", "null"], "maxLength": 256, "pattern": "^$|@"},
                "pictureUrl": {"type": ["string", "null"], "maxLength": 2048, "pattern": "^$|^https?://"}},
                ("name",))),
        },
        "/api/v1/user/{oldId}/rename/{newName}": {"post": _operation(
            "renameUser", "Rename a user", "users", _wrap("user", user),
            parameters=[_path("oldId", _USER_REF, "the user's id or name"),
                        _path("newName", _USER_NAME, "the new name")])},
        "/api/v1/user/{id}": {"delete": _operation(
            "deleteUser", "Delete a user who owns no nodes", "users", _EMPTY,
            parameters=[_path("id", _USER_REF, "the user's id or name")])},
        "/api/v1/preauthkey": {
            "get": _operation("listPreAuthKeys", "List pre-auth keys (all, or a user's)", "preauthkeys",
                              _list_of("preAuthKeys", "PreAuthKey"),
                              parameters=[_query("user", _TEXT, "a user's id or name")]),
            "post": _operation("createPreAuthKey", "Create a pre-auth key (its text is in this answer only)",
                               "preauthkeys", _wrap("preAuthKey", key), body=_body({
                                   "user": _KEY_OWNER,
                                   "reusable": _BOOL, "ephemeral": _BOOL, "expiration": _EXPIRATION,
                                   "aclTags": _TAGS}, body_required=True, anyOf=[
                                   # a user's key, or (no user, or 0) a key owned by its tags alone
                                   {"required": ["user"], "properties": {"user": {"not": {"enum": [0, "0", None]}}}},
                                   {"required": ["aclTags"], "properties": {"aclTags": {"minItems": 1,
                                                                                        "minLength": 1}}}])),
            "delete": _operation("deletePreAuthKey", "Delete a pre-auth key", "preauthkeys",
                                 _wrap("preAuthKey", key),
                                 parameters=[_query("id", _KEY_ID, "the key's id (0 is none: 400)", required=True)]),
        },
        "/api/v1/preauthkey/expire": {"post": _operation(
            "expirePreAuthKey", "Expire a pre-auth key (by id or prefix)", "preauthkeys",
            _wrap("preAuthKey", key), body=_ID_OR_PREFIX)},
        "/api/v1/apikey": {
            "get": _operation("listApiKeys", "List API keys", "apikeys", _list_of("apiKeys", "ApiKey")),
            "post": _operation("createApiKey", "Create an API key (its text is in this answer only)", "apikeys",
                               _object({"apiKey": _TEXT, "apiKeyRecord": apikey}),
                               body=_body({"expiration": _EXPIRATION, "scopes": {
                                   **_TEXTS, "description": "API v2 scopes (e.g. devices:core:read); none: all access, "
                                                            "a key with scopes is for /api/v2 only"}})),
            "delete": _operation("deleteApiKeyById", "Delete an API key by id", "apikeys",
                                 _wrap("apiKeyRecord", apikey),
                                 parameters=[_query("id", _KEY_ID, "the key's id (0 is none: 400)", required=True)]),
        },
        "/api/v1/apikey/expire": {"post": _operation(
            "expireApiKey", "Expire an API key (by id or prefix)", "apikeys", _wrap("apiKeyRecord", apikey),
            body=_ID_OR_PREFIX)},
        "/api/v1/apikey/{prefix}": {"delete": _operation(
            "deleteApiKey", "Delete an API key by prefix", "apikeys", _wrap("apiKeyRecord", apikey),
            parameters=[_path("prefix", {"type": "string", "minLength": 1}, "the key's prefix"),
                        _query("id", {"type": "string", "pattern": "^0?$"},
                               "Headscale's: beside the path's prefix only empty or 0 (none), else 400")])},
        "/api/v1/node": {"get": _operation(
            "listNodes", "List nodes (all, or a user's)", "nodes", _list_of("nodes", "Node"),
            parameters=[_query("user", _TEXT, "a user's id or name")])},
        "/api/v1/node/{nodeId}": {
            "get": _operation("getNode", "Show a node", "nodes", _wrap("node", node), parameters=[_NODE_ID]),
            "delete": _operation("deleteNode", "Delete a node", "nodes", _EMPTY, parameters=[_NODE_ID]),
        },
        "/api/v1/node/{nodeId}/expire": {"post": _operation(
            "expireNode", "Expire a node now, at a time, or never", "nodes", _wrap("node", node), parameters=[
                _NODE_ID, _query("expiry", {**_TIME, "minLength": 1},
                                 "when it expires (RFC 3339, from 1970 to 10 years ahead, else 400); none: now"),
                _query("disableExpiry", _BOOL, "true: it never expires")])},
        "/api/v1/node/{nodeId}/rename/{newName}": {"post": _operation(
            "renameNode", "Rename a node (its DNS name, unique in the tailnet)", "nodes", _wrap("node", node),
            parameters=[_NODE_ID, _path("newName", _NODE_NAME, "the new name")])},
        "/api/v1/node/backfillips": {"post": _operation(
            "backfillNodeIps", "Give nodes addresses from every configured prefix", "nodes",
            _wrap("changes", _TEXTS),
            parameters=[_query("confirmed", {"type": "boolean", "const": True}, "must be true", required=True)])},
        "/api/v1/node/register": {"post": _operation(
            "registerNode", "Complete a pending login for a user (Headscale's older route)", "registrations",
            _object({"node": _nullable(node), "registration": _ref("Registration")}, required=("node",)),
            parameters=[_query("user", _USER_REF, "a user's id or name", required=True),
                        _query("key", _REGISTRATION_ID, "the registration id", required=True)])},
        "/api/v1/auth/register": {"post": _operation(
            "authRegister", "Complete a pending login for a user", "registrations",
            _object({"node": _nullable(node), "registration": _ref("Registration")}, required=("node",)),
            body=_body({"user": _USER_REF_BODY, "authId": _REGISTRATION_ID}, ("user", "authId")))},
        "/api/v1/debug/node": {"post": _operation(
            "debugCreateNode", "A pending login for a made-up machine (to try policies and routes)",
            "registrations", _wrap("node", node), body=_body({
                "user": _USER_REF_BODY, "key": _REGISTRATION_ID, "name": _NODE_NAME, "routes": _PREFIXES},
                ("user", "key", "name")))},
        "/api/v1/auth/approve": {"post": _operation(
            "authApprove", "Approve a held SSH session (check mode)", "sshcheck", _EMPTY,
            body=_body({"authId": _SSH_AUTH_ID}, ("authId",)))},
        "/api/v1/auth/reject": {"post": _operation(
            "authReject", "Reject a held SSH session (check mode)", "sshcheck", _EMPTY,
            body=_body({"authId": _SSH_AUTH_ID}, ("authId",)))},
        "/api/v1/node/{nodeId}/tags": {"post": _operation(
            "setTags", "Set a node's tags ([] clears them)", "nodes", _wrap("node", node),
            parameters=[_NODE_ID], body=_body({"tags": _TAGS}))},
        "/api/v1/node/{nodeId}/approve_routes": {"post": _operation(
            "approveRoutes", "Set a node's approved routes ([] clears them)", "routes",
            _object({"node": node, "routes": _ref("Routes")}),
            parameters=[_NODE_ID], body=_body({"routes": {"type": ["array", "null"], "items": _TEXT,
                                                           "description": "IP prefixes; absent or null: none"}}))},
        "/api/v1/routes": {"get": _operation(
            "listRoutes", "Nodes' subnet routes (all that have any, or one node's)", "routes",
            _list_of("routes", "Routes"), parameters=[_query("node", {"type": "string", "pattern": "^([0-9]{1,19})?$"}, "a node's id (empty: every node)")])},
        "/api/v1/node/{nodeId}/share": {"post": _operation(
            "shareNode", "Share a node with a user", "sharing", _wrap("share", _ref("Share")),
            parameters=[_NODE_ID], body=_body({"user": _USER_REF_BODY}, ("user",)))},
        "/api/v1/node/{nodeId}/share/{user}": {"delete": _operation(
            "unshareNode", "Stop sharing a node with a user", "sharing", _EMPTY,
            parameters=[_NODE_ID, _path("user", _USER_REF, "the user's id or name")])},
        "/api/v1/shares": {"get": _operation(
            "listShares", "Shares (all, or a node's)", "sharing", _list_of("shares", "Share"),
            parameters=[_query("node", {"type": "string", "pattern": "^([0-9]{1,19})?$"}, "a node's id (empty: every node)")])},
        "/api/v1/policy": {
            "get": _operation("getPolicy", "The policy in force", "policy", _ref("Policy")),
            "put": _operation("setPolicy", "Check and store a new policy (database mode)", "policy",
                              _ref("Policy"), body=_body({"policy": _POLICY_TEXT}, ("policy",))),
        },
        "/api/v1/policy/check": {"post": _operation(
            "checkPolicy", "Check a policy against the tailnet without storing it", "policy", _EMPTY,
            body=_body({"policy": _POLICY_TEXT}, ("policy",)))},
        **_doc_paths(),
    }


def _doc_paths() -> dict[str, Any]:
    def public(op_id: str, summary: str, media: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"operationId": op_id, "summary": summary, "tags": ["docs"], "security": [],
                        "responses": {"200": {"description": summary, "content": {media: {"schema": schema}}}}}}

    return {
        "/api/v1/openapi.yaml": public("openapiYaml", "This document (YAML)", "application/yaml", {"type": "object"}),
        "/api/v1/openapi.json": public("openapiJson", "This document (JSON)", "application/json", {"type": "object"}),
        "/api/v1/docs": public("docs", "A page to read this document and try its operations", "text/html",
                               {"type": "string"}),
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route the admin API serves."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "trioscale admin API",
            "version": "v1",
            "description": "Headscale's v1 REST API (its JSON shapes: camelCase, ids as strings, RFC 3339 "
                           "times) and trioscale's own routes. Errors are application/problem+json. On TCP "
                           "every request needs an API key (`trioscale apikeys create`); on the unix socket "
                           "none. Under /api/v2, Tailscale's API (its shapes, `{\"message\"}` errors): an "
                           "OAuth client's access token (`trioscale oauth-clients create`, then "
                           "/api/v2/oauth/token) or an API key, each route checking the token's scopes.",
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "tags": [{"name": n} for n in ("health", "users", "preauthkeys", "apikeys", "nodes", "registrations",
                                       "routes", "sharing", "policy", "sshcheck", "docs", *v2.TAGS)],
        "paths": {**_paths(), **v2.paths()},  # /api/v2: Tailscale's API (apiv2/openapi.py)
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "tskey-api-…"},
                                **v2.security_schemes()},
            "schemas": {**SCHEMAS, **v2.schemas()},
            "responses": {code: {"description": text,
                                 "content": {"application/problem+json": {"schema": _ref("Problem")}}}
                          for code, text in _ERRORS.items()},
        },
    }


@cache
def _yaml() -> str:
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True)


@cache
def _json() -> str:
    return json.dumps(document(), ensure_ascii=False, indent=1)


@blueprint.get("/api/v1/openapi.yaml")
async def openapi_yaml() -> Response:
    return Response(_yaml(), mimetype="application/yaml")


@blueprint.get("/api/v1/openapi.json")
async def openapi_json() -> Response:
    return Response(_json(), mimetype="application/json")


@blueprint.get("/api/v1/docs")
async def docs() -> Response:
    return Response(PAGE, mimetype="text/html")
