"""The admin API on the control listener (server_url/api/v1), as Headscale serves it on its main
listener: every request needs an API key (fail closed), the same shapes and limits as on
admin.listen_addr, and the control protocol's own paths are untouched."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from util import TrioscaleServer, free_ports_config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrioscaleServer]:
    workdir = tmp_path_factory.mktemp("oncontrol")
    # no admin TCP listener: the control URL alone must serve the API
    config = free_ports_config(workdir / "data")
    config["admin"].pop("listen_addr", None)
    srv = TrioscaleServer(workdir, config)
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.stderr()[-4000:]


def control(server: TrioscaleServer, method: str, path: str, key: str | None = None,
            body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(server.config["server_url"])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if body is not None:
        sent.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=sent)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw


def test_users_through_server_url_with_a_cli_key(server: TrioscaleServer) -> None:
    server.cli_ok("users", "create", "alice")
    key = server.cli_ok("apikeys", "create").strip()
    status, headers, raw = control(server, "GET", "/api/v1/user", key)
    assert status == 200, raw
    assert headers["content-type"].startswith("application/json")
    assert [u["name"] for u in json.loads(raw)["users"]] == ["alice"]
    # query parameters reach the app
    status, _, raw = control(server, "GET", "/api/v1/user?name=nobody", key)
    assert status == 200 and json.loads(raw)["users"] == []
    # a write, Headscale's shape and status
    status, _, raw = control(server, "POST", "/api/v1/user", key, json.dumps({"name": "bob"}).encode())
    assert status == 200 and json.loads(raw)["user"]["name"] == "bob"
    assert {u["name"] for u in server.cli_json("users", "list")} == {"alice", "bob"}


@pytest.mark.parametrize("authorization", [None, "", "Bearer ", "Bearer nonsense",
                                           f"Bearer tskey-api-{'Z' * 12}-{'B' * 43}"])
def test_refused_without_a_valid_key(server: TrioscaleServer, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("GET", "/api/v1/user"), ("POST", "/api/v1/apikey"), ("GET", "/api/v1/nope"),
                         ("DELETE", "/api/v1/node/1"), ("GET", "/api/v1")):
        status, got, raw = control(server, method, path, headers=headers, body=b"{}" if method == "POST" else None)
        assert status == 401, (method, path, status, raw)
        assert got["content-type"] == "application/problem+json"
        assert got["www-authenticate"] == "Bearer"
        assert json.loads(raw)["status"] == 401
    assert server.cli_json("apikeys", "list") is not None


def test_the_document_is_public_and_limits_hold(server: TrioscaleServer) -> None:
    status, _, raw = control(server, "GET", "/api/v1/openapi.json")
    assert status == 200 and json.loads(raw)["openapi"].startswith("3.1")
    key = server.cli_ok("apikeys", "create").strip()
    status, _, raw = control(server, "POST", "/api/v1/user", key, b"{" + b" " * (70 * 1024) + b"}")
    assert status == 413
    status, _, raw = control(server, "PUT", "/api/v1/user", key, b"{}")
    assert status == 405 and json.loads(raw)["status"] == 405


def test_control_paths_are_untouched(server: TrioscaleServer) -> None:
    status, _, raw = control(server, "GET", "/key?v=113")
    assert status == 200 and json.loads(raw)["publicKey"].startswith("mkey:")
    status, _, raw = control(server, "GET", "/health")
    assert status == 200
    # a path that merely starts like the API is not the API
    status, _, _ = control(server, "GET", "/api/v10/user")
    assert status == 404
