"""`trioscale oauth-clients create|list|delete` against a running `trioscale serve`: the secret is
shown once, a token issued for it reaches /api/v2 on the TCP admin listener within its scopes, and
deleting the client ends its tokens at once."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from util import TrioscaleServer, free_ports_config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrioscaleServer]:
    workdir = tmp_path_factory.mktemp("oauth")
    srv = TrioscaleServer(workdir, free_ports_config(workdir / "data"))
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.stderr()[-4000:]


def http_request(server: TrioscaleServer, method: str, path: str, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> tuple[int, dict]:
    host, port = server.config["admin"]["listen_addr"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, json.loads(raw) if raw else {}


def test_oauth_clients_lifecycle(server: TrioscaleServer) -> None:
    made = server.cli_json("oauth-clients", "create", "--scope", "devices:core:read", "--scope", "dns:read",
                           "-d", "reader")
    assert made["key"].startswith(f"tskey-client-{made['id']}-") and made["scopes"] == ["devices:core:read", "dns:read"]
    text = server.cli_ok("oauth-clients", "list")
    assert made["id"] in text and "reader" in text and made["key"] not in text
    listed = server.cli_json("oauth-clients", "list")
    assert [c["id"] for c in listed] == [made["id"]] and "key" not in listed[0]
    # tags are needed where the client would create devices or keys
    proc = server.cli("oauth-clients", "create", "--scope", "auth_keys")
    assert proc.returncode != 0 and "tags" in proc.stderr and "Traceback" not in proc.stderr
    proc = server.cli("oauth-clients", "create", "--scope", "nonsense")
    assert proc.returncode != 0 and "nonsense" in proc.stderr

    form = urlencode({"grant_type": "client_credentials", "client_id": made["id"], "client_secret": made["key"]})
    status, token = http_request(server, "POST", "/api/v2/oauth/token", form.encode(),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and token["scope"] == "devices:core:read dns:read"
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert http_request(server, "GET", "/api/v2/tailnet/-/devices", headers=auth) == (200, {"devices": []})
    status, data = http_request(server, "GET", "/api/v2/tailnet/-/users", headers=auth)
    assert status == 403 and "users:read" in data["message"]
    assert http_request(server, "GET", "/api/v1/node", headers=auth)[0] == 401  # /api/v1 takes no scoped token
    assert token["access_token"].split("-")[2] not in server.cli_ok("apikeys", "list")

    assert made["id"] in server.cli_ok("oauth-clients", "delete", made["id"])
    assert http_request(server, "GET", "/api/v2/tailnet/-/devices", headers=auth)[0] == 401
    assert server.cli_json("oauth-clients", "list") == []
    proc = server.cli("oauth-clients", "delete", made["id"])
    assert proc.returncode != 0 and "no OAuth client" in proc.stderr
    assert made["key"].split("-", 3)[3] not in server.stderr()
    assert token["access_token"].split("-", 3)[3] not in server.stderr()


def test_api_v2_on_the_control_listener(server: TrioscaleServer) -> None:
    """Tailscale's API clients take one base URL: server_url serves /api/v2 as the admin listener does."""
    from urllib.parse import urlsplit

    made = server.cli_json("oauth-clients", "create", "--scope", "users:read")
    parts = urlsplit(server.config["server_url"])

    def control(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        return resp.status, json.loads(raw) if raw else {}

    form = urlencode({"grant_type": "client_credentials", "client_id": made["id"], "client_secret": made["key"]})
    status, token = control("POST", "/api/v2/oauth/token", form.encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, token
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert control("GET", "/api/v2/tailnet/-/users", headers=auth)[0] == 200
    assert control("GET", "/api/v2/tailnet/-/devices", headers=auth)[0] == 403
    assert control("GET", "/api/v2/tailnet/-/devices")[0] == 401


def test_scoped_api_keys(server: TrioscaleServer) -> None:
    """`apikeys create --scope`: the key may do what its scopes allow, on /api/v2 only; a key made
    without scopes still does everything."""
    scoped = server.cli_ok("apikeys", "create", "--scope", "dns:read").strip()
    record = next(k for k in server.cli_json("apikeys", "list") if k["prefix"] == scoped.split("-")[2])
    assert record["scopes"] == ["dns:read"]
    auth = {"Authorization": f"Bearer {scoped}"}
    assert http_request(server, "GET", "/api/v2/tailnet/-/dns/searchpaths", headers=auth)[0] == 200
    assert http_request(server, "POST", "/api/v2/tailnet/-/dns/searchpaths", b'{"searchPaths": []}',
                        {**auth, "Content-Type": "application/json"})[0] == 403
    assert http_request(server, "GET", "/api/v1/user", headers=auth)[0] == 401
    plain = server.cli_ok("apikeys", "create").strip()
    assert http_request(server, "GET", "/api/v1/user", headers={"Authorization": f"Bearer {plain}"})[0] == 200
    proc = server.cli("apikeys", "create", "--scope", "nonsense")
    assert proc.returncode != 0 and "nonsense" in proc.stderr
