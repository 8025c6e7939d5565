"""Issue 10, finding 7 (admin): numbers that overflow (`?user=99999999999999999999999`,
`expiration: 1e308`, `"999…9d"`) gave HTTP 500 and a traceback in the log. Every admin route, with a
table of hostile values, against a real `trioscale serve`: 400 (413 for an oversized body) with a
one-line reason, and no traceback in the server's stderr. The CLI refuses the same with one
`Error: …` line and a non-zero exit.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import trio

from util import TrioscaleServer, free_ports_config

BIG = "99999999999999999999999"  # > 2**63
NESTED = "[" * 30_000 + "]" * 30_000  # under the body limit, deeper than any parser's recursion


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrioscaleServer]:
    workdir = tmp_path_factory.mktemp("badnumbers")
    srv = TrioscaleServer(workdir, free_ports_config(workdir / "data"))
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, srv.stderr()[-4000:]
    assert "Traceback" not in srv.stderr(), srv.stderr()[-4000:]


@pytest.fixture(scope="module")
def setup(server: TrioscaleServer) -> dict[str, Any]:
    """An API key, a user, and one real node (registered over Noise) for the node routes."""
    from trioscale.shared.testing.noiseclient import open_noise_client
    from trioscale.shared.proto import keys

    token = server.cli_ok("apikeys", "create").strip()
    server.cli_ok("users", "create", "alice")
    authkey = server.cli_ok("preauthkeys", "create", "--user", "alice").strip()
    host, port = server.config["listen_addr"].rsplit(":", 1)
    body = {"Version": 130, "NodeKey": keys.NODE.format(keys.public_key(keys.generate_private_key())),
            "Hostinfo": {"Hostname": "target"}, "Auth": {"AuthKey": authkey}}

    async def register() -> dict:
        async with open_noise_client(host, int(port)) as client:
            return (await client.post_json("/machine/register", body)).json()

    assert trio.run(register)["MachineAuthorized"] is True
    node_id = next(n["id"] for n in server.cli_json("nodes", "list") if n["name"] == "target")
    return {"token": token, "node": node_id}


def send(server: TrioscaleServer, token: str, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = server.config["admin"]["listen_addr"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    raw = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=raw, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def raw(text: str) -> bytes:
    return text.encode()


def cases(node: int) -> list[tuple[str, str, Any]]:
    """(method, path, body) that must each be refused with 400."""
    n = f"/api/v1/node/{node}"
    bad_durations = [1e308, "1e308", "9" * 400 + "d", BIG + "d", "99999999999999999999w", 10**30, -1, "36501d",
                     "x" * 10_000, [1], {"a": 1}, True]
    bad_times = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "99999-01-01T00:00:00Z",
                 "2026-13-45T00:00:00Z", "2500-01-01T00:00:00Z", "1969-12-31T23:59:59Z"]
    bad_ids = [BIG, "1e3", "-1", "%C2%B2", "NaN", "0x10", "9" * 5000]
    out: list[tuple[str, str, Any]] = []
    # users
    for v in bad_ids:
        out.append(("GET", f"/api/v1/user?id={v}", None))
    out += [
        ("POST", f"/api/v1/user/{BIG}/rename/bob", None),
        ("DELETE", f"/api/v1/user/{BIG}", None),
        ("DELETE", "/api/v1/user/%C2%B2", None),
        ("POST", "/api/v1/user", raw(NESTED)),
        ("POST", "/api/v1/user", raw('{"name": NaN}')),
    ]
    # pre-auth keys
    out += [("GET", f"/api/v1/preauthkey?user={BIG}", None)]
    for user in (int(BIG), 1e308, -5, BIG):
        out.append(("POST", "/api/v1/preauthkey", {"user": user}))
    for d in bad_durations + bad_times:
        out.append(("POST", "/api/v1/preauthkey", {"user": "alice", "expiration": d}))
    for text in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400"):
        out.append(("POST", "/api/v1/preauthkey", raw(f'{{"user": "alice", "expiration": {text}}}')))
    for key_id in (int(BIG), 1e308, -1, "1e3", 2**63):
        out.append(("POST", "/api/v1/preauthkey/expire", {"id": key_id}))
    out.append(("POST", "/api/v1/preauthkey/expire", raw('{"id": NaN}')))
    for v in bad_ids:
        out.append(("DELETE", f"/api/v1/preauthkey?id={v}", None))
    # API keys
    for d in bad_durations + bad_times:
        out.append(("POST", "/api/v1/apikey", {"expiration": d}))
    out += [("POST", "/api/v1/apikey/expire", {"id": int(BIG)}), ("POST", "/api/v1/apikey/expire", {"id": 1e308}),
            ("DELETE", f"/api/v1/apikey?id={BIG}", None)]
    # nodes
    out += [("GET", f"/api/v1/node/{BIG}", None), ("DELETE", f"/api/v1/node/{BIG}", None),
            ("GET", f"/api/v1/node?user={BIG}", None), ("POST", f"/api/v1/node/{BIG}/expire", None),
            ("POST", f"/api/v1/node/{BIG}/rename/x", None),
            ("POST", f"/api/v1/node/register?user={BIG}&key=abcdef", None)]
    for t in bad_times + [1e308, 10**30, ["x"]]:
        out.append(("POST", f"{n}/expire?expiry={quote(str(t))}", None))
    out.append(("POST", f"{n}/expire", raw(NESTED)))
    # access control routes
    out += [
        ("POST", f"{n}/tags", {"tags": [1e308]}),
        ("POST", f"{n}/tags", raw('{"tags": [Infinity]}')),
        ("POST", f"{n}/tags", {"tags": ["tag:" + "a" * 50_000]}),
        ("POST", "/api/v1/preauthkey", {"user": "alice", "acl_tags": ["tag:" + "a" * 50_000]}),
        ("POST", "/api/v1/user", {"name": "b" * 50_000}),
        ("POST", f"{n}/approve_routes", {"routes": ["10.0.0.0/99999999999999999999"]}),
        ("POST", f"{n}/approve_routes", {"routes": [1e308]}),
        ("GET", f"/api/v1/routes?node={BIG}", None),
        ("POST", f"{n}/share", {"user": int(BIG)}),
        ("DELETE", f"{n}/share/{BIG}", None),
        ("GET", f"/api/v1/shares?node={BIG}", None),
        ("POST", "/api/v1/policy/check",
         {"policy": '{"acls":[{"action":"accept","src":["*"],"dst":["*:99999999999999999999"]}]}'}),
        ("POST", "/api/v1/policy/check", {"policy": '{"acls":' + "[" * 20_000}),
        ("PUT", "/api/v1/policy", raw(NESTED)),
    ]
    return out


def test_every_route_refuses_hostile_numbers_with_400(server: TrioscaleServer, setup: dict[str, Any]) -> None:
    failures = []
    for method, path, body in cases(setup["node"]):
        status, answer = send(server, setup["token"], method, path, body)
        try:
            message = json.loads(answer)["detail"]
        except (ValueError, KeyError, TypeError):
            message = None
        if status != 400 or not isinstance(message, str) or "\n" in message or len(message) > 300:
            failures.append(f"{method} {path} {str(body)[:80]!r}: {status} {answer[:200]!r}")
    assert not failures, "\n".join(failures)
    assert "Traceback" not in server.stderr(), server.stderr()[-4000:]
    assert "internal error" not in server.stderr()
    # and nothing was changed by any of them
    assert [k["id"] for k in server.cli_json("preauthkeys", "list")] == ["1"]
    node = server.cli_json("nodes", "list")[0]
    assert node["expired"] is False and node["tags"] == []


def test_oversized_bodies_are_413(server: TrioscaleServer, setup: dict[str, Any]) -> None:
    big = json.dumps({"name": "x" * 70_000}).encode()
    status, answer = send(server, setup["token"], "POST", "/api/v1/user", big)
    assert status == 413 and "\n" not in json.loads(answer)["detail"]
    # the same without a Content-Length: chunked, cut off at the limit while reading
    host, port = server.config["admin"]["listen_addr"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    chunks = (b"x" * 16_384 for _ in range(8))
    conn.request("POST", "/api/v1/user", body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {setup['token']}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()
    conn.close()
    # a Content-Length no request could have
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /api/v1/user HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {setup['token']}\r\n"
                  f"Content-Length: {BIG}\r\n\r\n{{}}".encode())
        head = s.recv(4096)
    assert head.split(b" ")[1] in (b"400", b"413"), head
    assert "Traceback" not in server.stderr(), server.stderr()[-4000:]


@pytest.mark.parametrize("args", [
    ("nodes", "expire", "-i", BIG),
    ("nodes", "tag", "-i", "-1", "-t", "tag:x"),
    ("users", "list", "-i", BIG),
    ("preauthkeys", "expire", "--id", BIG),
    ("preauthkeys", "create", "--user", BIG),
    ("preauthkeys", "create", "--user", "alice", "--expiration", "1e308"),
    ("preauthkeys", "create", "--user", "alice", "--expiration", "9" * 400 + "d"),
    ("preauthkeys", "create", "--user", "alice", "--expiration", "9999-12-31T23:59:59-14:00"),
    ("apikeys", "create", "--expiration", "99999999999999999999w"),
    ("apikeys", "expire", "--id", BIG),
])
def test_cli_refuses_with_one_error_line(server: TrioscaleServer, setup: dict[str, Any], args: tuple[str, ...]) -> None:
    proc = server.cli(*args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "internal error" not in lines[0], proc.stderr
    assert "Traceback" not in server.stderr()
