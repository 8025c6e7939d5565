"""Tailscale's API v2 in process (issue #17): OAuth clients' tokens (client credentials, form or
HTTP Basic), scopes on every route (401 without credentials, 403 for a token lacking the scope, a
scoped token refused on /api/v1), and devices, auth keys, the policy file, DNS and users in
Tailscale's shapes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from trioscale.config import config_from_dict
from trioscale.options import admin_options
from trioscale.services.coord import dnssettings
from trioscale.services.coord.admin import create_admin_app
from trioscale.services.coord.admin.apiv2 import scopes as sc
from trioscale.shared.domain import secrets
from trioscale.shared.model import Node
from trioscale.shared.store import open_store_url
from trioscale.shared.store.base import Store

OPTIONS = admin_options(config_from_dict({"policy": {"mode": "database"},
                                          "dns": {"base_domain": "ts.example", "nameservers": {"global": ["9.9.9.9"]}}}))
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with open_store_url("sqlite://:memory:") as s:
        yield s


@pytest.fixture
def app(store: Store) -> Any:
    return create_admin_app(OPTIONS, store, coordinator=None, require_auth=True)


async def a_client(store: Store, scopes=("devices:core", "devices:routes", "auth_keys", "policy_file", "dns",
                                         "users:read"), tags=("tag:ci",)) -> tuple[str, str]:
    new = secrets.generate_key(secrets.KIND_CLIENT)
    await store.create_oauth_client(new.prefix, new.key_hash, scopes=scopes, tags=tags)
    return new.prefix, new.text


async def a_token(app: Any, client_id: str, secret: str, scope: str = "") -> str:
    form = f"grant_type=client_credentials&client_id={client_id}&client_secret={secret}"
    if scope:
        form += f"&scope={scope}"
    resp = await app.test_client().post("/api/v2/oauth/token", data=form, headers={"Content-Type": FORM})
    assert resp.status_code == 200, await resp.get_data()
    data = await resp.get_json()
    assert data["token_type"] == "Bearer" and data["expires_in"] == 3600
    return data["access_token"]


async def a_node(store: Store, user_id: int, name: str, **fields: Any) -> Node:
    n = len(await store.list_nodes()) + 1
    return await store.create_node(Node(
        id=0, machine_key=bytes([n]) * 32, node_key=bytes([n + 100]) * 32, user_id=user_id, hostname=name,
        given_name=name, ipv4=f"100.64.0.{n}", ipv6=f"fd7a:115c:a1e0::{n}",
        hostinfo={"RoutableIPs": ["10.9.0.0/24"], "OS": "linux", "IPNVersion": "1.80.3"},
        register_method="authkey", **fields))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the token endpoint --------------------------------------------------------------------------


async def test_client_credentials_by_form_and_basic(app, store) -> None:
    client_id, secret = await a_client(store)
    token = await a_token(app, client_id, secret)
    assert token.startswith("tskey-api-")
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    resp = await app.test_client().post("/api/v2/oauth/token", data="grant_type=client_credentials",
                                        headers={"Content-Type": FORM, "Authorization": f"Basic {basic}"})
    assert resp.status_code == 200
    data = await resp.get_json()
    assert data["scope"].split() == ["devices:core", "devices:routes", "auth_keys", "policy_file", "dns", "users:read"]
    # a narrower token when asked for
    narrow = await a_token(app, client_id, secret, scope="dns:read")
    key = await store.get_api_key_by_prefix(secrets.split_key(narrow)[1])
    assert key.scopes == ("dns:read",) and key.tags == ("tag:ci",)


@pytest.mark.parametrize("form, status, error", [
    ("grant_type=client_credentials&client_id={id}&client_secret={bad}", 401, "invalid_client"),
    ("grant_type=client_credentials", 401, "invalid_client"),
    ("grant_type=password&client_id={id}&client_secret={secret}", 400, "unsupported_grant_type"),
    ("grant_type=client_credentials&client_id={id}&client_secret={secret}&scope=webhooks", 400, "invalid_scope"),
    ("grant_type=client_credentials&client_id={id}&client_secret={secret}&scope=nonsense", 400, "invalid_scope"),
    ("grant_type=client_credentials&client_id={id}&client_secret={secret}&tags=tag:other", 400, "invalid_scope"),
])
async def test_token_refusals(app, store, form, status, error) -> None:
    client_id, secret = await a_client(store)
    bad = secrets.generate_key(secrets.KIND_CLIENT).text.replace(secrets.split_key(secret)[1], client_id)
    resp = await app.test_client().post("/api/v2/oauth/token", headers={"Content-Type": FORM},
                                        data=form.format(id=client_id, secret=secret, bad=bad))
    assert resp.status_code == status
    assert (await resp.get_json())["error"] == error
    assert await store.list_api_keys() == []


async def test_a_deleted_client_s_tokens_stop_working(app, store) -> None:
    client_id, secret = await a_client(store)
    token = await a_token(app, client_id, secret)
    c = app.test_client()
    assert (await c.get("/api/v2/tailnet/-/devices", headers=bearer(token))).status_code == 200
    await store.delete_oauth_client((await store.get_oauth_client_by_client_id(client_id)).id)
    assert (await c.get("/api/v2/tailnet/-/devices", headers=bearer(token))).status_code == 401


# -- scopes on every route -------------------------------------------------------------------------

#: every v2 route, with a path to call it by and the scope it needs
ROUTES = [
    ("GET", "/api/v2/tailnet/-/devices", "devices:core:read"),
    ("GET", "/api/v2/device/{node}", "devices:core:read"),
    ("DELETE", "/api/v2/device/{node}", "devices:core"),
    ("POST", "/api/v2/device/{node}/authorized", "devices:core"),
    ("GET", "/api/v2/device/{node}/routes", "devices:routes:read"),
    ("POST", "/api/v2/device/{node}/routes", "devices:routes"),
    ("POST", "/api/v2/device/{node}/tags", "devices:core"),
    ("POST", "/api/v2/device/{node}/key", "devices:core"),
    ("POST", "/api/v2/device/{node}/name", "devices:core"),
    ("GET", "/api/v2/tailnet/-/keys", "auth_keys:read"),
    ("POST", "/api/v2/tailnet/-/keys", "auth_keys"),
    ("GET", "/api/v2/tailnet/-/keys/{key}", "auth_keys:read"),
    ("DELETE", "/api/v2/tailnet/-/keys/{key}", "auth_keys"),
    ("GET", "/api/v2/tailnet/-/acl", "policy_file:read"),
    ("POST", "/api/v2/tailnet/-/acl", "policy_file"),
    ("POST", "/api/v2/tailnet/-/acl/validate", "policy_file:read"),
    ("GET", "/api/v2/tailnet/-/dns/nameservers", "dns:read"),
    ("POST", "/api/v2/tailnet/-/dns/nameservers", "dns"),
    ("GET", "/api/v2/tailnet/-/dns/searchpaths", "dns:read"),
    ("POST", "/api/v2/tailnet/-/dns/searchpaths", "dns"),
    ("GET", "/api/v2/tailnet/-/dns/split-dns", "dns:read"),
    ("PUT", "/api/v2/tailnet/-/dns/split-dns", "dns"),
    ("PATCH", "/api/v2/tailnet/-/dns/split-dns", "dns"),
    ("GET", "/api/v2/tailnet/-/dns/preferences", "dns:read"),
    ("POST", "/api/v2/tailnet/-/dns/preferences", "dns"),
    ("GET", "/api/v2/tailnet/-/users", "users:read"),
    ("GET", "/api/v2/users/{user}", "users:read"),
]


def test_the_table_is_every_route() -> None:
    app = create_admin_app(OPTIONS, None, coordinator=None)  # type: ignore[arg-type]
    served = {(m, r.rule) for r in app.url_map.iter_rules() if r.rule.startswith("/api/v2/")
              for m in r.methods if m not in ("HEAD", "OPTIONS")}
    served.discard(("POST", "/api/v2/oauth/token"))
    named = {(verb, path.replace("{node}", "<deviceId>").replace("{key}", "<keyId>").replace("{user}", "<userId>")
              .replace("/-/", "/<tailnet>/")) for verb, path, _ in ROUTES}
    assert named == served


async def _fixture_ids(store: Store) -> dict[str, str]:
    user = await store.create_user("alice")
    node = await a_node(store, user.id, "web")
    pk = await store.create_preauth_key(user.id, "keyprefix001", b"h" * 32, tags=("tag:ci",))
    return {"node": str(node.id), "key": pk.prefix, "user": str(user.id)}


@pytest.mark.parametrize("verb, path, scope", ROUTES)
async def test_every_route_needs_its_scope(app, store, verb, path, scope) -> None:
    ids = await _fixture_ids(store)
    url = path.format(**ids)
    client_id, secret = await a_client(store, scopes=("webhooks", "oauth_keys:read"), tags=())
    other = await a_token(app, client_id, secret)
    c = app.test_client()
    resp = await c.open(url, method=verb, json={})
    assert resp.status_code == 401
    assert "message" in await resp.get_json()
    resp = await c.open(url, method=verb, json={}, headers=bearer(other))
    assert resp.status_code == 403, (url, await resp.get_data())
    assert scope in (await resp.get_json())["message"]
    # a read scope never lets a write through, and the scope itself does
    if not scope.endswith(":read"):
        client_id, secret = await a_client(store, scopes=(scope + ":read",), tags=())
        resp = await c.open(url, method=verb, json={}, headers=bearer(await a_token(app, client_id, secret)))
        assert resp.status_code == 403
    client_id, secret = await a_client(store, scopes=(scope,), tags=("tag:ci",) if sc.needs_tags([scope]) else ())
    resp = await c.open(url, method=verb, json={}, headers=bearer(await a_token(app, client_id, secret)))
    assert resp.status_code not in (401, 403), (url, await resp.get_data())
    # the legacy 'all' covers it
    client_id, secret = await a_client(store, scopes=("all",), tags=("tag:ci",))
    resp = await c.open(url, method=verb, json={}, headers=bearer(await a_token(app, client_id, secret)))
    assert resp.status_code not in (401, 403)


async def test_unscoped_api_keys_do_everything_scoped_ones_only_v2(app, store) -> None:
    plain = secrets.generate_api_key()
    await store.create_api_key(plain.prefix, plain.key_hash)
    scoped = secrets.generate_api_key()
    await store.create_api_key(scoped.prefix, scoped.key_hash, scopes=("dns:read",))
    c = app.test_client()
    basic = base64.b64encode(f"{plain.text}:".encode()).decode()
    assert (await c.get("/api/v2/tailnet/-/devices", headers={"Authorization": f"Basic {basic}"})).status_code == 200
    assert (await c.get("/api/v1/node", headers=bearer(plain.text))).status_code == 200
    assert (await c.get("/api/v2/tailnet/-/dns/nameservers", headers=bearer(scoped.text))).status_code == 200
    assert (await c.get("/api/v2/tailnet/-/devices", headers=bearer(scoped.text))).status_code == 403
    assert (await c.get("/api/v1/node", headers=bearer(scoped.text))).status_code == 401
    assert (await c.get("/api/v2/nonsense", headers={})).status_code == 401


async def test_the_unix_socket_needs_no_credentials(store) -> None:
    app = create_admin_app(OPTIONS, store, coordinator=None, require_auth=False)
    assert (await app.test_client().get("/api/v2/tailnet/-/devices")).status_code == 200


# -- the resources ---------------------------------------------------------------------------------


async def test_devices(app, store) -> None:
    ids = await _fixture_ids(store)
    client_id, secret = await a_client(store)
    h = bearer(await a_token(app, client_id, secret))
    c = app.test_client()
    devices = (await (await c.get("/api/v2/tailnet/-/devices", headers=h)).get_json())["devices"]
    [d] = devices
    assert (d["id"], d["nodeId"], d["name"], d["hostname"], d["os"], d["clientVersion"], d["user"]) == \
        (ids["node"], ids["node"], "web.ts.example", "web", "linux", "1.80.3", "alice")
    assert d["addresses"] == ["100.64.0.1", "fd7a:115c:a1e0::1"] and d["authorized"] is True
    assert "advertisedRoutes" not in d
    full = await (await c.get(f"/api/v2/device/{ids['node']}?fields=all", headers=h)).get_json()
    assert full["advertisedRoutes"] == ["10.9.0.0/24"] and full["enabledRoutes"] == []
    resp = await c.post(f"/api/v2/device/{ids['node']}/routes", json={"routes": ["10.9.0.0/24"]}, headers=h)
    assert await resp.get_json() == {"advertisedRoutes": ["10.9.0.0/24"], "enabledRoutes": ["10.9.0.0/24"]}
    assert (await store.get_node(int(ids["node"]))).approved_routes == ("10.9.0.0/24",)
    assert (await c.post(f"/api/v2/device/{ids['node']}/routes", json={"routes": ["nope"]},
                         headers=h)).status_code == 400
    # tags: only the client's own
    resp = await c.post(f"/api/v2/device/{ids['node']}/tags", json={"tags": ["tag:other"]}, headers=h)
    assert resp.status_code == 400 and "tag:other" in (await resp.get_json())["message"]
    assert (await c.post(f"/api/v2/device/{ids['node']}/tags", json={"tags": ["tag:ci"]}, headers=h)).status_code == 200
    node = await store.get_node(int(ids["node"]))
    assert node.tags == ("tag:ci",) and node.expiry is None
    assert (await c.post(f"/api/v2/device/{ids['node']}/key", json={"keyExpiryDisabled": False},
                         headers=h)).status_code == 200
    assert (await store.get_node(int(ids["node"]))).expiry is not None
    assert (await c.post(f"/api/v2/device/{ids['node']}/name", json={"name": "www.ts.example"},
                         headers=h)).status_code == 200
    assert (await store.get_node(int(ids["node"]))).given_name == "www"
    assert (await c.post(f"/api/v2/device/{ids['node']}/name", json={"name": "Not A Label"},
                         headers=h)).status_code == 400
    assert (await c.post(f"/api/v2/device/{ids['node']}/authorized", json={"authorized": True},
                         headers=h)).status_code == 200
    assert (await c.get("/api/v2/device/999", headers=h)).status_code == 404
    assert (await c.get("/api/v2/tailnet/other.example/devices", headers=h)).status_code == 404
    assert (await c.get("/api/v2/tailnet/ts.example/devices", headers=h)).status_code == 200
    assert (await c.delete(f"/api/v2/device/{ids['node']}", headers=h)).status_code == 200
    assert await store.list_nodes() == []


async def test_auth_keys(app, store) -> None:
    client_id, secret = await a_client(store)
    h = bearer(await a_token(app, client_id, secret))
    c = app.test_client()
    body = {"capabilities": {"devices": {"create": {"reusable": True, "ephemeral": False, "preauthorized": True,
                                                    "tags": ["tag:ci"]}}},
            "expirySeconds": 3600, "description": "ci runners"}
    resp = await c.post("/api/v2/tailnet/-/keys", json=body, headers=h)
    assert resp.status_code == 200
    key = await resp.get_json()
    assert key["key"].startswith(f"tskey-auth-{key['id']}-") and key["description"] == "ci runners"
    assert key["capabilities"]["devices"]["create"]["tags"] == ["tag:ci"]
    assert key["capabilities"]["devices"]["create"]["reusable"] is True
    pk = await store.get_preauth_key_by_prefix(key["id"])
    assert pk.tags == ("tag:ci",) and (await store.get_user(pk.user_id)).name == "tagged-devices"
    listed = (await (await c.get("/api/v2/tailnet/-/keys", headers=h)).get_json())["keys"]
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    got = await (await c.get(f"/api/v2/tailnet/-/keys/{key['id']}", headers=h)).get_json()
    assert got["description"] == "ci runners" and got["expirySeconds"] == 3600
    for bad in ({**body, "capabilities": {"devices": {"create": {"tags": []}}}},
                {**body, "capabilities": {"devices": {"create": {"tags": ["tag:other"]}}}},
                {**body, "expirySeconds": 91 * 86400},
                {**body, "description": "x" * 51}):
        assert (await c.post("/api/v2/tailnet/-/keys", json=bad, headers=h)).status_code == 400
    assert (await c.delete(f"/api/v2/tailnet/-/keys/{key['id']}", headers=h)).status_code == 200
    assert await store.get_preauth_key_by_prefix(key["id"]) is None
    assert (await c.get(f"/api/v2/tailnet/-/keys/{key['id']}", headers=h)).status_code == 404
    # every token may read its own key
    narrow = await a_token(app, client_id, secret, scope="dns:read")
    own = secrets.split_key(narrow)[1]
    assert (await c.get(f"/api/v2/tailnet/-/keys/{own}", headers=bearer(narrow))).status_code == 200


async def test_oauth_clients_through_the_keys_route(app, store) -> None:
    client_id, secret = await a_client(store, scopes=("oauth_keys", "dns"), tags=())
    h = bearer(await a_token(app, client_id, secret))
    c = app.test_client()
    resp = await c.post("/api/v2/tailnet/-/keys", headers=h,
                        json={"keyType": "client", "scopes": ["dns:read"], "description": "reader"})
    assert resp.status_code == 200
    made = await resp.get_json()
    assert made["key"].startswith(f"tskey-client-{made['id']}-") and made["scopes"] == ["dns:read"]
    assert await a_token(app, made["id"], made["key"])
    # more than its creator holds
    resp = await c.post("/api/v2/tailnet/-/keys", headers=h, json={"keyType": "client", "scopes": ["users"]})
    assert resp.status_code == 400


async def test_the_policy_file(app, store) -> None:
    await store.create_user("alice")
    client_id, secret = await a_client(store)
    h = bearer(await a_token(app, client_id, secret))
    c = app.test_client()
    resp = await c.get("/api/v2/tailnet/-/acl", headers={**h, "Accept": "application/hujson"})
    default_etag = resp.headers["ETag"]
    assert resp.status_code == 200 and "accept" in (await resp.get_data(as_text=True))
    text = '{\n  // CI\n  "tagOwners": {"tag:ci": ["alice"]},\n  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],\n}\n'
    resp = await c.post("/api/v2/tailnet/-/acl", data=text,
                        headers={**h, "Content-Type": "application/hujson", "If-Match": '"ts-default"'})
    assert resp.status_code == 200, await resp.get_data()
    etag = resp.headers["ETag"]
    assert etag != default_etag
    resp = await c.get("/api/v2/tailnet/-/acl", headers={**h, "Accept": "application/hujson"})
    assert await resp.get_data(as_text=True) == text and resp.headers["ETag"] == etag
    as_json = await (await c.get("/api/v2/tailnet/-/acl", headers=h)).get_json()
    assert as_json["tagOwners"] == {"tag:ci": ["alice"]}
    # a stale ETag is refused, the current one accepted
    resp = await c.post("/api/v2/tailnet/-/acl", data=text, headers={**h, "If-Match": default_etag})
    assert resp.status_code == 412
    assert (await c.post("/api/v2/tailnet/-/acl", data=text, headers={**h, "If-Match": etag})).status_code == 200
    assert (await c.post("/api/v2/tailnet/-/acl", data='{"acls": [', headers=h)).status_code == 400
    assert await (await c.post("/api/v2/tailnet/-/acl/validate", data=text, headers=h)).get_json() == {}
    bad = await (await c.post("/api/v2/tailnet/-/acl/validate", data='{"acls": [{"action": "accept", '
                              '"src": ["group:nobody"], "dst": ["*:*"]}]}', headers=h)).get_json()
    assert "group:nobody" in bad["message"]
    assert (await store.get_policy()).text == text


async def test_dns(app, store) -> None:
    client_id, secret = await a_client(store)
    h = bearer(await a_token(app, client_id, secret))
    c = app.test_client()
    assert await (await c.get("/api/v2/tailnet/-/dns/nameservers", headers=h)).get_json() == {"dns": ["9.9.9.9"]}
    resp = await c.post("/api/v2/tailnet/-/dns/nameservers", json={"dns": ["1.1.1.1", "8.8.8.8"]}, headers=h)
    assert await resp.get_json() == {"dns": ["1.1.1.1", "8.8.8.8"], "magicDNS": True}
    assert (await c.post("/api/v2/tailnet/-/dns/nameservers", json={"dns": ["not an ip"]}, headers=h)).status_code == 400
    await c.post("/api/v2/tailnet/-/dns/searchpaths", json={"searchPaths": ["corp.example"]}, headers=h)
    assert await (await c.get("/api/v2/tailnet/-/dns/searchpaths", headers=h)).get_json() == \
        {"searchPaths": ["corp.example"]}
    await c.put("/api/v2/tailnet/-/dns/split-dns", json={"corp.example": ["10.0.0.53"], "lab.example": ["10.1.0.53"]},
                headers=h)
    resp = await c.patch("/api/v2/tailnet/-/dns/split-dns", json={"lab.example": None, "dev.example": ["10.2.0.53"]},
                         headers=h)
    assert await resp.get_json() == {"corp.example": ["10.0.0.53"], "dev.example": ["10.2.0.53"]}
    await c.post("/api/v2/tailnet/-/dns/preferences", json={"magicDNS": False}, headers=h)
    assert await (await c.get("/api/v2/tailnet/-/dns/preferences", headers=h)).get_json() == {"magicDNS": False}
    stored = await dnssettings.load(store)
    applied = dnssettings.apply(OPTIONS.dns, stored)
    assert applied.nameservers == ("1.1.1.1", "8.8.8.8") and applied.search_domains == ("corp.example",)
    assert applied.split_nameservers == {"corp.example": ("10.0.0.53",), "dev.example": ("10.2.0.53",)}
    assert applied.magic_dns is False and applied.base_domain == "ts.example"


async def test_users(app, store) -> None:
    alice = await store.create_user("alice", email="alice@example.com")
    await a_node(store, alice.id, "web")
    await store.create_user("tagged-devices")
    client_id, secret = await a_client(store)
    h = bearer(await a_token(app, client_id, secret))
    c = app.test_client()
    users = (await (await c.get("/api/v2/tailnet/-/users", headers=h)).get_json())["users"]
    assert [(u["id"], u["loginName"], u["deviceCount"], u["role"]) for u in users] == \
        [(str(alice.id), "alice@example.com", 1, "member")]
    assert (await (await c.get(f"/api/v2/users/{alice.id}", headers=h)).get_json())["loginName"] == "alice@example.com"
    assert (await c.get("/api/v2/users/999", headers=h)).status_code == 404


async def test_dns_kinds_set_at_once_keep_each_other(app, store) -> None:
    """Terraform applies its DNS resources in parallel: each kind is written alone, so none undoes
    another (a read-modify-write of one record lost all but the last)."""
    import trio

    client_id, secret = await a_client(store)
    h = bearer(await a_token(app, client_id, secret))
    c = app.test_client()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: c.post("/api/v2/tailnet/-/dns/nameservers", json={"dns": ["1.1.1.1"]}, headers=h))
        nursery.start_soon(lambda: c.post("/api/v2/tailnet/-/dns/searchpaths", json={"searchPaths": ["a.example"]},
                                          headers=h))
        nursery.start_soon(lambda: c.put("/api/v2/tailnet/-/dns/split-dns", json={"b.example": ["10.0.0.53"]},
                                         headers=h))
        nursery.start_soon(lambda: c.post("/api/v2/tailnet/-/dns/preferences", json={"magicDNS": False}, headers=h))
    assert await dnssettings.load(store) == {"nameservers": ["1.1.1.1"], "searchPaths": ["a.example"],
                                             "splitDNS": {"b.example": ["10.0.0.53"]}, "magicDNS": False}
