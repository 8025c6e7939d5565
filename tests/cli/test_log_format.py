"""One log format for every line a process writes, request ids, and no secret in any line.

A real `trioscale serve` at DEBUG runs a flow that handles every kind of secret the server holds or
is handed: an API key (good, wrong and on both admin paths), pre-auth keys (good and with a wrong
secret), the Noise private key file, the DERP mesh key, an OpenID Connect client secret, a node's
registration and map stream. Then every line of its stderr must parse in the configured format
(JSON: one object per line, with the same keys), none may hold any of those secrets in any
encoding, and the admin and control paths' lines carry request ids that the admin API also sends
back in X-Request-Id.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
from pathlib import Path

import pytest
import trio

from util import TrioscaleServer, free_ports_config

MESH_KEY = "5f" * 32
OIDC_SECRET = "oidc-client-secret-Zq8vX2mN4pL7"


def _admin(server: TrioscaleServer, method: str, path: str, token: str | None,
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = server.config["admin"]["listen_addr"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    conn.request(method, path, headers=sent)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def _register(server: TrioscaleServer, authkey: str | None, *, stream_map: bool = False) -> dict:
    from trioscale.shared.proto import keys
    from trioscale.shared.testing.noiseclient import open_noise_client

    host, port = server.config["listen_addr"].rsplit(":", 1)
    node_key = keys.generate_private_key()
    body: dict = {"Version": 130, "NodeKey": keys.NODE.format(keys.public_key(node_key)),
                  "Hostinfo": {"Hostname": "logged"}}
    if authkey is not None:
        body["Auth"] = {"AuthKey": authkey}

    async def go() -> dict:
        async with open_noise_client(host, int(port)) as client:
            resp = await client.post_json("/machine/register", body)
            answer = resp.json()
            if stream_map and answer.get("MachineAuthorized"):
                disco = keys.DISCO.format(keys.public_key(keys.generate_private_key()))
                req = {"Version": 130, "NodeKey": body["NodeKey"], "DiscoKey": disco, "Stream": False,
                       "Hostinfo": {"Hostname": "logged"}}
                got = await client.post_json("/machine/map", req)
                assert got.status == 200
            return answer

    return trio.run(go)


def _junk(addr: str, data: bytes) -> None:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        try:
            sock.recv(4096)  # the server's answer, or its close
        except OSError:
            pass


def _secret_forms(text: str) -> set[str]:
    """`text` and the encodings a careless log line could show it in."""
    raw = text.encode()
    return {text, base64.b64encode(raw).decode().rstrip("="), raw.hex()}


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_line_in_one_format_with_request_ids_and_no_secret(tmp_path: Path, fmt: str) -> None:
    config = free_ports_config(
        tmp_path / "data",
        log={"level": "debug", "format": fmt},
        derp={"server": {"mesh_key": MESH_KEY}},
        oidc={"issuer": "http://127.0.0.1:9/", "client_id": "trioscale", "client_secret": OIDC_SECRET,
              "only_start_if_oidc_is_available": False},
    )
    server = TrioscaleServer(tmp_path, config)
    server.start()
    try:
        api_key = server.cli_ok("apikeys", "create").strip()
        server.cli_ok("users", "create", "lena")
        preauth = server.cli_ok("preauthkeys", "create", "--user", "lena").strip()
        # the API key on the admin listener: accepted, then a wrong secret with its real prefix
        status, headers, _ = _admin(server, "GET", "/api/v1/user", api_key)
        assert status == 200
        given_id = headers["x-request-id"]
        wrong = api_key[:-6] + ("A" * 6 if not api_key.endswith("A" * 6) else "B" * 6)
        assert _admin(server, "GET", "/api/v1/node", wrong)[0] == 401
        # a request id a proxy passed in is kept (and one that could forge a line is not)
        assert _admin(server, "GET", "/api/v1/user", api_key, {"X-Request-Id": "edge-42.a"})[1]["x-request-id"] == "edge-42.a"
        forged = _admin(server, "GET", "/api/v1/user", api_key, {"X-Request-Id": "x\" level=error"})[1]
        assert forged["x-request-id"] != "x\" level=error"
        # pre-auth keys: a good one (and its map), one with a wrong secret
        assert _register(server, preauth, stream_map=True)["MachineAuthorized"] is True
        bad = preauth[:-6] + ("A" * 6 if not preauth.endswith("A" * 6) else "B" * 6)
        assert _register(server, bad).get("Error")
        # no key: the interactive (or OIDC) login URL
        assert _register(server, None).get("AuthURL")
        server.cli_ok("nodes", "list")
        # what no client should send, on every TCP listener: each refusal is logged in the format too
        for addr in (server.config["admin"]["listen_addr"], server.config["listen_addr"],
                     server.config["metrics_listen_addr"]):
            for junk in (b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x00\x10" + bytes(16),
                         b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nzz"):
                _junk(addr, junk)
    finally:
        assert server.stop() == 0, server.stderr()[-3000:]

    stderr = server.stderr()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) > 10

    # every line in the configured format
    if fmt == "json":
        entries = []
        for line in lines:
            entry = json.loads(line)  # a line that is not JSON fails here, naming itself
            assert {"time", "level", "logger", "msg"} <= set(entry), line
            entries.append(entry)
        with_ids = [e for e in entries if e.get("request_id")]
        assert any(e["request_id"] == given_id for e in with_ids), "the admin request's id is in no line"
        assert any(e["logger"].startswith("trioscale.coord") and e.get("request_id") for e in entries), \
            "no control-path line carries a request id"
    else:
        shape = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+( \[[\w.-]+\])?: ")
        for line in lines:
            assert shape.match(line) or line.startswith(("Traceback", "  ", " ")) or not line[0].isdigit() and \
                not line.startswith(("INFO", "DEBUG", "WARNING", "ERROR")), line
        heads = [line for line in lines if line[:1].isdigit()]
        assert heads and all(shape.match(line) for line in heads)
        assert any(f"[{given_id}]" in line for line in lines)

    # no secret in any encoding
    noise_key = (Path(config["data_dir"]) / "noise_private.key").read_text().strip()
    derp_key = (Path(config["data_dir"]) / "derp_private.key").read_text().strip()
    secrets = {
        "API key": api_key.split("-", 3)[3],
        "wrong API key": wrong.split("-", 3)[3],
        "pre-auth key": preauth.split("-", 3)[3],
        "wrong pre-auth key": bad.split("-", 3)[3],
        "noise key": noise_key.split(":", 1)[-1],
        "DERP relay key": derp_key.split(":", 1)[-1],
        "mesh key": MESH_KEY,
        "OIDC client secret": OIDC_SECRET,
    }
    for what, secret in secrets.items():
        for form in _secret_forms(secret):
            assert form not in stderr, f"the {what} appears in the log"
    assert server.stdout().count(api_key.split("-", 3)[3]) == 0
