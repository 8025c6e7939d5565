"""The admin API over TCP refuses every route without a valid, unexpired API key; `make run`-like start."""

from __future__ import annotations

import http.client
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioscale.config import config_from_dict
from trioscale.options import admin_options
from trioscale.services.coord.admin import create_admin_app
from trioscale.services.coord.admin.openapi import PUBLIC_PATHS
from util import TrioscaleServer, free_port, free_ports_config, free_tcp_udp_port, free_udp_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrioscaleServer]:
    workdir = tmp_path_factory.mktemp("auth")
    srv = TrioscaleServer(workdir, free_ports_config(workdir / "data"))
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.stderr()[-4000:]


def routes() -> list[tuple[str, str]]:
    """(method, concrete path) for every rule of the admin app, plus some unknown paths."""
    app = create_admin_app(admin_options(config_from_dict({})), None, coordinator=None)  # type: ignore[arg-type]
    out = []
    for rule in app.url_map.iter_rules():
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<path:{arg}>", "x").replace(f"<{arg}>", "1")
        for method in sorted(rule.methods or ()):
            out.append((method, path))
    assert len(out) >= 20
    out += [("GET", "/"), ("GET", "/nope"), ("POST", "/api/v1/nope"), ("GET", "/api/v2/keys"), ("DELETE", "/api/v1/user")]
    return out


def raw_request(server: TrioscaleServer, method: str, path: str, token: str | None) -> tuple[int, bytes]:
    host, port = server.config["admin"]["listen_addr"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, headers={"Authorization": token} if token is not None else {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, raw


def request(server: TrioscaleServer, method: str, path: str, token: str | None, body: dict | None = None) -> tuple[int, dict]:
    host, port = server.config["admin"]["listen_addr"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    conn.request(method, path, body=json.dumps(body or {}).encode(), headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    data = json.loads(raw) if raw and method != "HEAD" else {}
    return resp.status, data


def test_every_route_refuses_bad_credentials(server: TrioscaleServer) -> None:
    good = server.cli_ok("apikeys", "create").strip()
    expired = server.cli_ok("apikeys", "create").strip()
    server.cli_ok("apikeys", "expire", "--prefix", expired.split("-")[2])
    server.cli_ok("users", "create", "victor")
    authkey = server.cli_ok("preauthkeys", "create", "--user", "victor").strip()
    prefix = good.split("-")[2]
    wrong_secret = f"tskey-api-{prefix}-" + "A" * 43
    candidates = [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer nonsense",
        f"Bearer {wrong_secret}",
        f"Bearer {expired}",
        f"Bearer {authkey}",  # a pre-auth key is not an API key
        f"Bearer tskey-api-{'Z' * 12}-{'B' * 43}",  # unknown prefix
        f"Token {good}",
        f"Bearer {good}x",
    ]
    users_before = server.cli_json("users", "list")
    # The only routes served without a key: the API's own document and its page (GET), the same for
    # every server and holding nothing of the tailnet (a browser cannot send a key to open the page).
    assert set(PUBLIC_PATHS) == {"/api/v1/openapi.yaml", "/api/v1/openapi.json", "/api/v1/docs"}
    for method, path in routes():
        if method == "GET" and path in PUBLIC_PATHS:
            for token in candidates:
                status, raw = raw_request(server, method, path, token)
                assert status == 200 and b"victor" not in raw and prefix.encode() not in raw, (path, token)
            continue
        for token in candidates:
            status, data = request(server, method, path, token)
            assert status == 401, (method, path, token, status, data)
            if method != "HEAD":
                assert data["status"] == 401 and data["detail"]
    assert server.cli_json("users", "list") == users_before
    # and the good key works
    assert request(server, "GET", "/api/v1/health", f"Bearer {good}")[0] == 200
    assert request(server, "GET", "/api/v1/user", f"Bearer {good}")[0] == 200
    assert request(server, "GET", "/api/v1/nope", f"Bearer {good}")[0] == 404
    status, data = request(server, "POST", "/api/v1/user", f"Bearer {good}", {"name": "walter"})
    assert status == 200 and data["user"]["name"] == "walter"  # Headscale's 200 on create
    # error bodies never leak a traceback
    status, data = request(server, "POST", "/api/v1/preauthkey", f"Bearer {good}", {"user": {"x": 1}})
    assert status == 400 and "Traceback" not in json.dumps(data)
    assert "Traceback" not in server.stderr()
    assert good.split("-", 3)[3] not in server.stderr()


def test_delete_key_routes(server: TrioscaleServer) -> None:
    admin = "Bearer " + server.cli_ok("apikeys", "create").strip()
    assert ("DELETE", "/api/v1/preauthkey") in routes() and ("DELETE", "/api/v1/apikey/x") in routes()
    server.cli_ok("users", "create", "yvonne")
    pk = server.cli_json("preauthkeys", "create", "--user", "yvonne")
    texts = [server.cli_json("apikeys", "create") for _ in range(2)]  # the key's text, as Headscale prints it
    listed = {k["prefix"]: k for k in server.cli_json("apikeys", "list")}
    victims = [dict(listed[t.split("-")[2]], key=t) for t in texts]
    for method, path, status, words in [
        ("DELETE", "/api/v1/preauthkey", 400, "id"),
        ("DELETE", "/api/v1/preauthkey?id=", 400, "id"),
        ("DELETE", "/api/v1/preauthkey?id=abc", 400, "invalid pre-auth key id"),
        ("DELETE", "/api/v1/preauthkey?id=-1", 400, "invalid pre-auth key id"),
        ("DELETE", "/api/v1/preauthkey?id=99999999999999999999", 400, "invalid pre-auth key id"),
        ("DELETE", "/api/v1/preauthkey?id=99999", 404, "not found"),
        ("DELETE", "/api/v1/apikey", 400, "id or prefix"),
        ("DELETE", "/api/v1/apikey?id=x", 400, "invalid API key id"),
        ("DELETE", f"/api/v1/apikey/{victims[0]['prefix']}?id={victims[1]['id']}", 400, "not both"),
        ("DELETE", "/api/v1/apikey/nosuchprefix", 404, "API key prefix nosuchprefix not found"),
        ("DELETE", f"/api/v1/apikey/{pk['key']}", 400, "expected a tskey-api-"),
    ]:
        got, data = request(server, method, path, admin)
        assert got == status and words.lower() in data["detail"].lower(), (path, got, data)
        assert "Traceback" not in json.dumps(data) and pk["key"].split("-", 3)[3] not in json.dumps(data)
    assert len(server.cli_json("apikeys", "list")) >= 3 and server.cli_json("preauthkeys", "list", "-u", "yvonne")

    status, data = request(server, "DELETE", f"/api/v1/preauthkey?id={pk['id']}", admin)
    shown = data["preAuthKey"]
    assert status == 200 and shown["id"] == pk["id"] and shown["key"] == f"tskey-auth-{shown['prefix']}-***"
    status, data = request(server, "DELETE", f"/api/v1/apikey/{victims[0]['prefix']}", admin)
    assert status == 200 and data["apiKeyRecord"]["prefix"] == victims[0]["prefix"]
    status, data = request(server, "DELETE", f"/api/v1/apikey?id={victims[1]['id']}", admin)
    assert status == 200 and data["apiKeyRecord"]["id"] == victims[1]["id"]
    for v in victims:
        assert request(server, "GET", "/api/v1/health", f"Bearer {v['key']}")[0] == 401
    assert request(server, "GET", "/api/v1/health", admin)[0] == 200
    assert "Traceback" not in server.stderr()


def test_unix_socket_permission(server: TrioscaleServer) -> None:
    mode = stat.S_IMODE(os.stat(server.data_dir / "trioscale.sock").st_mode)
    assert mode == 0o770


def test_make_run_like_start_with_embedded_defaults(tmp_path: Path) -> None:
    control = free_port()
    env = {
        "TRIOSCALE_SERVER_URL": f"http://127.0.0.1:{control}",
        "TRIOSCALE_LISTEN_ADDR": f"127.0.0.1:{control}",
        "TRIOSCALE_DERP_SERVER_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "TRIOSCALE_DERP_SERVER_STUN_LISTEN_ADDR": f"127.0.0.1:{free_udp_port()}",
        "TRIOSCALE_DNS_LISTEN_ADDR": f"127.0.0.1:{free_tcp_udp_port()}",
        "TRIOSCALE_METRICS_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
    }
    srv = TrioscaleServer(tmp_path, {"data_dir": str(tmp_path / "var")}, env=env, use_config_file=False)
    srv.start()
    try:
        text = srv.stdout()
        assert f"http://127.0.0.1:{control}" in text
        assert "trioscale users create alice" in text
        assert "trioscale preauthkeys create --user alice" in text
        assert f"tailscale up --login-server http://127.0.0.1:{control} --authkey" in text
        assert (tmp_path / "var" / "trioscale.sock").exists()  # ./var in the cwd
        proc = srv.cli("users", "create", "alice")
        assert proc.returncode == 0, proc.stderr
        assert "alice" in proc.stdout
        assert [u["name"] for u in json.loads(srv.cli_ok("users", "list", "-o", "json"))] == ["alice"]
    finally:
        code = srv.stop()
    assert code == 0, srv.stderr()[-4000:]
    assert not (tmp_path / "var" / "trioscale.sock").exists()  # removed on a clean shutdown
