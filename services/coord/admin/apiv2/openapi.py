"""The /api/v2 part of the admin API's OpenAPI document (admin/openapi.py merges it in): Tailscale's
API as served here, its shapes written as JSON Schema 2020-12. Errors are Tailscale's `{"message"}`
(with the problem fields beside it) as application/json; the token endpoint's are RFC 6749's."""

from __future__ import annotations

from typing import Any

from .scopes import RESOURCES

__all__ = ["paths", "schemas", "security_schemes", "TAGS"]

TAGS = ("v2 oauth", "v2 devices", "v2 keys", "v2 policy", "v2 dns", "v2 users")

_TEXT = {"type": "string"}
_TEXTS = {"type": "array", "items": _TEXT}
_BOOL = {"type": "boolean"}
_TIME = {"type": "string", "description": "RFC 3339; 0001-01-01T00:00:00Z when unset"}
_EMPTY = {"type": "object"}
_SCOPES = sorted(["all", "all:read", *RESOURCES, *(f"{r}:read" for r in RESOURCES)])


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def schemas() -> dict[str, Any]:
    caps = _obj({"devices": _obj({"create": _obj({
        "reusable": _BOOL, "ephemeral": _BOOL, "preauthorized": _BOOL,
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^tag:[A-Za-z][A-Za-z0-9_-]{0,62}$"}}})})})
    return {
        "V2Error": _obj({"message": _TEXT}, ("message",)),
        "V2Device": _obj({
            "id": _TEXT, "nodeId": _TEXT, "name": _TEXT, "hostname": _TEXT, "user": _TEXT, "addresses": _TEXTS,
            "tags": _TEXTS, "authorized": _BOOL, "os": _TEXT, "clientVersion": _TEXT, "created": _TIME,
            "expires": _TIME, "lastSeen": _TIME, "keyExpiryDisabled": _BOOL, "isEphemeral": _BOOL,
            "connectedToControl": _BOOL, "machineKey": _TEXT, "nodeKey": _TEXT,
            "advertisedRoutes": _TEXTS, "enabledRoutes": _TEXTS},
            ("id", "nodeId", "name", "hostname", "addresses", "tags", "authorized")),
        "V2Routes": _obj({"advertisedRoutes": _TEXTS, "enabledRoutes": _TEXTS}, ("advertisedRoutes", "enabledRoutes")),
        "V2KeyCapabilities": caps,
        "V2Key": _obj({
            "id": _TEXT, "keyType": {"type": "string", "enum": ["auth", "client", "api"]},
            "key": {**_TEXT, "description": "the key's text (or an OAuth client's secret), in the answer that creates it"},
            "description": _TEXT, "created": _TIME, "expires": _TIME, "expirySeconds": {"type": "integer"},
            "invalid": _BOOL, "capabilities": _ref("V2KeyCapabilities"), "scopes": _TEXTS, "tags": _TEXTS,
            "userId": _TEXT}, ("id", "keyType", "created")),
        "V2User": _obj({
            "id": _TEXT, "displayName": _TEXT, "loginName": _TEXT, "profilePicUrl": _TEXT, "tailnetId": _TEXT,
            "created": _TIME, "type": _TEXT, "role": _TEXT, "status": _TEXT, "deviceCount": {"type": "integer"},
            "lastSeen": _TIME, "currentlyConnected": _BOOL}, ("id", "loginName")),
        "V2Token": _obj({"access_token": _TEXT, "token_type": {"type": "string", "enum": ["Bearer"]},
                         "expires_in": {"type": "integer"}, "scope": _TEXT},
                        ("access_token", "token_type", "expires_in")),
        "V2TokenError": _obj({"error": _TEXT, "error_description": _TEXT}, ("error",)),
    }


def security_schemes() -> dict[str, Any]:
    return {
        "oauth2": {"type": "oauth2", "description": "an OAuth client's access token (`trioscale oauth-clients create`)",
                   "flows": {"clientCredentials": {"tokenUrl": "/api/v2/oauth/token",
                                                   "scopes": {s: s for s in _SCOPES}}}},
        "basic": {"type": "http", "scheme": "basic", "description": "an API key as the user name, no password"},
    }


_ERRORS = {
    "400": "the request is refused (the message says why)",
    "401": "no valid access token or API key",
    "403": "the token's scopes do not allow this",
    "404": "no such record, tailnet or endpoint",
    "409": "a conflict with what is stored",
    "413": "the request body is larger than 64 KiB",
    "503": "the database is unavailable",
}

_TAILNET = {"name": "tailnet", "in": "path", "required": True, "description": "`-`: this tailnet",
            "schema": {"type": "string", "enum": ["-"]}}
_DEVICE = {"name": "deviceId", "in": "path", "required": True, "description": "the device's id (node id)",
           "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}
_KEY = {"name": "keyId", "in": "path", "required": True, "description": "a key's id (prefix) or OAuth client id",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"}}
_USER = {"name": "userId", "in": "path", "required": True, "description": "the user's id",
         "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(op_id: str, summary: str, tag: str, scope: str, response: dict[str, Any], *,
        params: tuple[dict[str, Any], ...] = (), body: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None, content: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "done", "content": content or _json(response)}
    if headers:
        ok["headers"] = headers
    responses = {"200": ok, **{code: {"description": text, "content": _json(_ref("V2Error"))}
                               for code, text in {**_ERRORS, **(extra or {})}.items()}}
    out: dict[str, Any] = {"operationId": op_id, "summary": f"{summary} (scope {scope})", "tags": [tag],
                           "security": [{"oauth2": [scope]}, {"apiKey": []}, {"basic": []}],
                           "responses": responses}
    if params:
        out["parameters"] = list(params)
    if body is not None:
        out["requestBody"] = {"required": True, "content": _json(body)}
    return out


def _list(name: str, item: str) -> dict[str, Any]:
    return _obj({name: {"type": "array", "items": _ref(item)}}, (name,))


def paths() -> dict[str, Any]:
    device, dev = _ref("V2Device"), (_DEVICE,)
    tnet = (_TAILNET,)
    names = _obj({"dns": _TEXTS}, ("dns",))
    split = {"type": "object", "additionalProperties": {"type": ["array", "null"], "items": _TEXT}}
    policy_text = {"type": "string", "description": "the policy (HuJSON)"}
    etag = {"ETag": {"description": "the policy's version, for If-Match", "schema": _TEXT}}
    token_form = {"application/x-www-form-urlencoded": {"schema": _obj({
        "grant_type": {"type": "string", "enum": ["client_credentials"]}, "client_id": _TEXT,
        "client_secret": _TEXT, "scope": _TEXT, "tags": _TEXT}, ("grant_type",))}}
    token_errors = {code: {"description": text, "content": _json(_ref("V2TokenError"))}
                    for code, text in (("400", "a bad request, grant type or scope"),
                                       ("401", "the client did not authenticate"),
                                       ("503", "the database is unavailable"))}
    return {
        "/api/v2/oauth/token": {"post": {
            "operationId": "v2OAuthToken", "summary": "An access token for an OAuth client (client credentials; "
                                                      "its id and secret in the form or as HTTP Basic)",
            "tags": ["v2 oauth"], "security": [], "requestBody": {"required": True, "content": token_form},
            "responses": {"200": {"description": "a token that lives an hour", "content": _json(_ref("V2Token"))},
                          **token_errors}}},
        "/api/v2/tailnet/{tailnet}/devices": {"get": _op(
            "v2ListDevices", "The tailnet's devices", "v2 devices", "devices:core:read", _list("devices", "V2Device"),
            params=(_TAILNET, {"name": "fields", "in": "query", "required": False,
                               "schema": {"type": "string", "enum": ["default", "all"]}}))},
        "/api/v2/device/{deviceId}": {
            "get": _op("v2GetDevice", "A device", "v2 devices", "devices:core:read", device,
                       params=(_DEVICE, {"name": "fields", "in": "query", "required": False,
                                         "schema": {"type": "string", "enum": ["default", "all"]}})),
            "delete": _op("v2DeleteDevice", "Delete a device", "v2 devices", "devices:core", _EMPTY, params=dev),
        },
        "/api/v2/device/{deviceId}/authorized": {"post": _op(
            "v2AuthorizeDevice", "Authorize a device (every device here is)", "v2 devices", "devices:core", _EMPTY,
            params=dev, body=_obj({"authorized": _BOOL}, ("authorized",)))},
        "/api/v2/device/{deviceId}/routes": {
            "get": _op("v2GetRoutes", "A device's advertised and enabled routes", "v2 devices",
                       "devices:routes:read", _ref("V2Routes"), params=dev),
            "post": _op("v2SetRoutes", "Set a device's enabled routes", "v2 devices", "devices:routes",
                        _ref("V2Routes"), params=dev, body=_obj({"routes": _TEXTS}, ("routes",))),
        },
        "/api/v2/device/{deviceId}/tags": {"post": _op(
            "v2SetTags", "Set a device's tags", "v2 devices", "devices:core", _EMPTY, params=dev,
            body=_obj({"tags": _TEXTS}, ("tags",)))},
        "/api/v2/device/{deviceId}/key": {"post": _op(
            "v2SetKeyExpiry", "Turn a device's key expiry off or on", "v2 devices", "devices:core", _EMPTY,
            params=dev, body=_obj({"keyExpiryDisabled": _BOOL}, ("keyExpiryDisabled",)))},
        "/api/v2/device/{deviceId}/name": {"post": _op(
            "v2SetName", "Rename a device (its MagicDNS name)", "v2 devices", "devices:core", _EMPTY, params=dev,
            body=_obj({"name": _TEXT}, ("name",)))},
        "/api/v2/tailnet/{tailnet}/keys": {
            "get": _op("v2ListKeys", "The tailnet's auth keys (all=true: OAuth clients and API keys too)",
                       "v2 keys", "auth_keys:read", _list("keys", "V2Key"),
                       params=(_TAILNET, {"name": "all", "in": "query", "required": False,
                                          "schema": {"type": "string", "enum": ["true", "false"]}})),
            "post": _op("v2CreateKey", "Create an auth key (or, keyType client, an OAuth client: scope oauth_keys)",
                        "v2 keys", "auth_keys", _ref("V2Key"), params=tnet, body=_obj({
                            "keyType": {"type": "string", "enum": ["auth", "client"]},
                            "capabilities": _ref("V2KeyCapabilities"),
                            "expirySeconds": {"type": "integer", "minimum": 1, "maximum": 7776000},
                            "description": {"type": "string", "maxLength": 50},
                            "scopes": _TEXTS, "tags": _TEXTS})),
        },
        "/api/v2/tailnet/{tailnet}/keys/{keyId}": {
            "get": _op("v2GetKey", "A key (any scope reads the caller's own)", "v2 keys", "auth_keys:read",
                       _ref("V2Key"), params=(_TAILNET, _KEY)),
            "delete": _op("v2DeleteKey", "Delete a key or OAuth client", "v2 keys", "auth_keys", _EMPTY,
                          params=(_TAILNET, _KEY)),
        },
        "/api/v2/tailnet/{tailnet}/acl": {
            "get": _op("v2GetPolicy", "The policy file (JSON; HuJSON as stored with Accept: application/hujson)",
                       "v2 policy", "policy_file:read", _EMPTY, params=tnet, headers=etag,
                       content={"application/json": {"schema": _EMPTY}, "application/hujson": {"schema": policy_text}}),
            "post": {**_op("v2SetPolicy", "Set the policy file (If-Match: an ETag, or ts-default)", "v2 policy",
                           "policy_file", _EMPTY, params=(_TAILNET, {
                               "name": "If-Match", "in": "header", "required": False, "schema": _TEXT}),
                           extra={"412": "the policy changed since the ETag given"}, headers=etag),
                     "requestBody": {"required": True, "content": {"application/hujson": {"schema": policy_text},
                                                                   "application/json": {"schema": _EMPTY}}}},
        },
        "/api/v2/tailnet/{tailnet}/acl/validate": {"post": {
            **_op("v2ValidatePolicy", "Check a policy file: {} or {message}", "v2 policy", "policy_file:read",
                  _obj({"message": _TEXT}), params=tnet),
            "requestBody": {"required": True, "content": {"application/hujson": {"schema": policy_text},
                                                          "application/json": {"schema": _EMPTY}}}}},
        "/api/v2/tailnet/{tailnet}/dns/nameservers": {
            "get": _op("v2GetNameservers", "Global nameservers", "v2 dns", "dns:read", names, params=tnet),
            "post": _op("v2SetNameservers", "Set the global nameservers", "v2 dns", "dns",
                        _obj({"dns": _TEXTS, "magicDNS": _BOOL}, ("dns",)), params=tnet,
                        body=_obj({"dns": _TEXTS}, ("dns",))),
        },
        "/api/v2/tailnet/{tailnet}/dns/searchpaths": {
            "get": _op("v2GetSearchPaths", "Search paths", "v2 dns", "dns:read",
                       _obj({"searchPaths": _TEXTS}, ("searchPaths",)), params=tnet),
            "post": _op("v2SetSearchPaths", "Set the search paths", "v2 dns", "dns",
                        _obj({"searchPaths": _TEXTS}, ("searchPaths",)), params=tnet,
                        body=_obj({"searchPaths": _TEXTS}, ("searchPaths",))),
        },
        "/api/v2/tailnet/{tailnet}/dns/split-dns": {
            "get": _op("v2GetSplitDNS", "Split DNS: domain -> nameservers", "v2 dns", "dns:read", split, params=tnet),
            "put": _op("v2SetSplitDNS", "Replace split DNS", "v2 dns", "dns", split, params=tnet, body=split),
            "patch": _op("v2UpdateSplitDNS", "Merge into split DNS (null drops a domain)", "v2 dns", "dns", split,
                         params=tnet, body=split),
        },
        "/api/v2/tailnet/{tailnet}/dns/preferences": {
            "get": _op("v2GetDNSPreferences", "MagicDNS on or off", "v2 dns", "dns:read",
                       _obj({"magicDNS": _BOOL}, ("magicDNS",)), params=tnet),
            "post": _op("v2SetDNSPreferences", "Turn MagicDNS on or off", "v2 dns", "dns",
                        _obj({"magicDNS": _BOOL}, ("magicDNS",)), params=tnet,
                        body=_obj({"magicDNS": _BOOL}, ("magicDNS",))),
        },
        "/api/v2/tailnet/{tailnet}/users": {"get": _op(
            "v2ListUsers", "The tailnet's users", "v2 users", "users:read", _list("users", "V2User"),
            params=(_TAILNET, {"name": "type", "in": "query", "required": False, "schema": _TEXT},
                    {"name": "role", "in": "query", "required": False, "schema": _TEXT}))},
        "/api/v2/users/{userId}": {"get": _op("v2GetUser", "A user", "v2 users", "users:read", _ref("V2User"),
                                              params=(_USER,))},
    }
