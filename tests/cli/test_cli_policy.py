"""The access-control CLI commands against a running `trioscale serve`: policy get/set/check, nodes
tag/approve-routes/list-routes/share/unshare/shares, debug policy-case."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cli.test_cli import assert_one_line_error
from domain.policy.policycorpus import corpus_dir
from util import TrioscaleServer, free_ports_config

GOOD = """{
  // alice's group may reach web
  "groups": {"group:x": ["alice@"]},
  "tagOwners": {"tag:web": ["alice@"], "tag:router": ["alice@"]},
  "autoApprovers": {"routes": {"10.20.0.0/16": ["tag:router"]}},
  "hosts": {"web-vip": "100.100.50.1"},
  "acls": [
    {"action": "accept", "src": ["group:x"], "dst": ["tag:web:80", "web-vip:80"]},
  ],
  "tests": [
    {"src": "alice@", "accept": ["web-vip:80"], "deny": ["web-vip:22"]},
    {"src": "bob@", "deny": ["web-vip:80"]},
  ],
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrioscaleServer]:
    workdir = tmp_path_factory.mktemp("clipolicy")
    srv = TrioscaleServer(workdir, free_ports_config(workdir / "data"))
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, f"trioscale serve exited with {code}:\n{srv.stderr()[-4000:]}"
    assert "Traceback" not in srv.stderr(), srv.stderr()[-4000:]


def register(server: TrioscaleServer, hostname: str, authkey: str, **hostinfo) -> int:
    from trioscale.shared.testing.noiseclient import open_noise_client
    from trioscale.shared.proto import keys

    host, port = server.config["listen_addr"].rsplit(":", 1)
    node_key = keys.generate_private_key()
    body = {"Version": 130, "NodeKey": keys.NODE.format(keys.public_key(node_key)),
            "Hostinfo": {"Hostname": hostname, **hostinfo}, "Auth": {"AuthKey": authkey}}

    async def go() -> dict:
        async with open_noise_client(host, int(port)) as client:
            resp = await client.post_json("/machine/register", body)
            assert resp.status == 200, resp
            return resp.json()

    assert trio.run(go)["MachineAuthorized"] is True
    return next(n["id"] for n in server.cli_json("nodes", "list") if n["name"] == hostname)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_policy_get_set_check(server: TrioscaleServer, tmp_path: Path) -> None:
    assert_one_line_error(server.cli("policy", "get"), "no policy is set")
    server.cli_ok("users", "create", "alice")
    server.cli_ok("users", "create", "bob")
    good = write(tmp_path, "good.hujson", GOOD)
    assert server.cli_ok("policy", "check", "-f", good).strip() == "Policy is valid"
    assert server.cli_json("policy", "check", "-f", good) == {}  # Headscale's CheckPolicyResponse
    out = server.cli_ok("policy", "set", "-f", good)
    assert out.startswith("Policy set (version ")
    assert server.cli_ok("policy", "get").strip() == GOOD.strip()
    got = server.cli_json("policy", "get")
    assert got["mode"] == "database" and got["policy"] == GOOD

    bad = {
        "syntax.hujson": ('{\n  "acls": [,]\n}', ["invalid policy", "line 2, column 12"]),
        "group.hujson": ('{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}',
                         ["group not found", "group:nope"]),
        "tag.hujson": ('{"acls": [{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}]}',
                       ["tag not found", "tag:nope"]),
        "owner.hujson": ('{"tagOwners": {"tag:a": ["tag:b"]}, "acls": []}', ["tag not found", "tag:b"]),
        "tests.hujson": (GOOD.replace('"deny": ["web-vip:22"]', '"deny": ["web-vip:80"]'),
                         ["test(s) failed", "tests[0]"]),
        "empty.hujson": ("  ", ["empty"]),
    }
    for name, (text, words) in bad.items():
        path = write(tmp_path, name, text)
        assert_one_line_error(server.cli("policy", "check", "-f", path), *words)
        assert_one_line_error(server.cli("policy", "set", "-f", path), *words)
    # nothing changed
    assert server.cli_json("policy", "get")["policy"] == GOOD
    assert_one_line_error(server.cli("policy", "set", "-f", str(tmp_path / "missing.hujson")), "cannot read")


def test_nodes_tag_and_routes(server: TrioscaleServer, tmp_path: Path) -> None:
    if server.cli("policy", "get").returncode != 0:
        test_policy_get_set_check(server, tmp_path)
    key = server.cli_json("preauthkeys", "create", "--user", "alice", "--reusable")["key"]
    node_id = register(server, "rtr", key, RoutableIPs=["10.20.0.0/16", "0.0.0.0/0", "::/0"])
    node = server.cli_json("nodes", "tag", "-i", str(node_id), "-t", "tag:router")
    assert node["tags"] == ["tag:router"] and node["expiry"] is None
    assert server.cli_ok("nodes", "tag", "-i", str(node_id), "-t", "tag:router,tag:web").strip() == \
        f"Node {node_id} tags: tag:router,tag:web"
    assert_one_line_error(server.cli("nodes", "tag", "-i", str(node_id), "-t", "web"), "invalid tag")
    assert_one_line_error(server.cli("nodes", "tag", "-i", str(node_id), "-t", "tag:undefined"),
                          "tag:undefined", "tagowners")
    assert_one_line_error(server.cli("nodes", "tag", "-i", "999999", "-t", "tag:web"), "not found")

    # the tag made autoApprovers approve 10.20.0.0/16; the exit routes need an admin
    def routes():
        return server.cli_json("nodes", "list-routes", "-i", str(node_id))[0]

    import time

    for _ in range(50):
        if routes()["approvedRoutes"] == ["10.20.0.0/16"]:
            break
        time.sleep(0.1)
    r = routes()
    assert r["approvedRoutes"] == ["10.20.0.0/16"]
    assert r["availableRoutes"] == ["0.0.0.0/0", "10.20.0.0/16", "::/0"]
    assert r["subnetRoutes"] == ["10.20.0.0/16"]  # primary, and no exit route in use
    out = server.cli_json("nodes", "approve-routes", "-i", str(node_id), "-r", "10.20.0.0/16", "-r", "0.0.0.0/0")
    assert out["approvedRoutes"] == ["0.0.0.0/0", "10.20.0.0/16", "::/0"]  # exit routes together
    assert out["subnetRoutes"] == ["0.0.0.0/0", "10.20.0.0/16", "::/0"]  # an exit node now, and primary
    table = server.cli_ok("nodes", "list-routes")
    assert "rtr" in table and "10.20.0.0/16" in table
    assert_one_line_error(server.cli("nodes", "approve-routes", "-i", str(node_id), "-r", "10.0.0.300/8"),
                          "invalid route")
    cleared = server.cli_json("nodes", "approve-routes", "-i", str(node_id), "-r", "")
    assert cleared["approvedRoutes"] == []
    # clearing the tags gives the node back to alice
    assert server.cli_json("nodes", "tag", "-i", str(node_id), "-t", "")["tags"] == []


def test_nodes_share_unshare(server: TrioscaleServer, tmp_path: Path) -> None:
    for name in ("carol", "dave"):
        if server.cli("users", "list", "-n", name, "-o", "json").stdout.strip() in ("", "[]"):
            server.cli_ok("users", "create", name)
    key = server.cli_json("preauthkeys", "create", "--user", "carol")["key"]
    node_id = register(server, "carol-box", key)
    share = server.cli_json("nodes", "share", "--identifier", str(node_id), "--user", "dave")
    assert share["node"]["id"] == node_id and share["user"]["name"] == "dave"
    assert_one_line_error(server.cli("nodes", "share", "-i", str(node_id), "-u", "dave"), "already")
    assert_one_line_error(server.cli("nodes", "share", "-i", str(node_id), "-u", "carol"), "belongs")
    assert_one_line_error(server.cli("nodes", "share", "-i", str(node_id), "-u", "nobody"), "not found")
    shares = server.cli_json("nodes", "shares")
    assert {"node": node_id, "user": "dave"} in [{"node": s["node"]["id"], "user": s["user"]["name"]} for s in shares]
    assert "carol-box" in server.cli_ok("nodes", "shares", "-i", str(node_id))
    assert server.cli_ok("nodes", "unshare", "--id", str(node_id), "--user", "dave").strip() == \
        f"Node {node_id} no longer shared with user dave"
    assert_one_line_error(server.cli("nodes", "unshare", "-i", str(node_id), "-u", "dave"), "not shared")
    assert server.cli_json("nodes", "shares", "-i", str(node_id)) == []


def test_debug_policy_case(server: TrioscaleServer) -> None:
    case = sorted((corpus_dir() / "acl").glob("*.json"))[0]  # fails, not skips, without the corpus
    out = server.cli_json("debug", "policy-case", str(case))
    expect = json.loads(case.read_text())["expect"]
    assert out["accepted"] is True and out["error"] is None
    assert set(expect) <= set(out)
    assert set(out[next(iter(expect))]) >= {"packet_filter_rules", "peers", "ssh_policy", "self_cap_map"}
    assert_one_line_error(server.cli("debug", "policy-case", "/nonexistent.json"), "cannot read")


def test_file_mode_refuses_policy_set(tmp_path: Path) -> None:
    policy = tmp_path / "policy.hujson"
    policy.write_text(GOOD)
    config = free_ports_config(tmp_path / "data")
    config["policy"] = {"mode": "file", "path": str(policy)}
    srv = TrioscaleServer(tmp_path, config)
    srv.start()
    try:
        got = srv.cli_json("policy", "get")
        assert got["mode"] == "file" and got["policy"] == GOOD
        assert_one_line_error(srv.cli("policy", "set", "-f", str(policy)), "policy.mode is file")
        srv.cli_ok("users", "create", "alice")
        srv.cli_ok("users", "create", "bob")
        assert srv.cli_json("policy", "check", "-f", str(policy)) == {}
        # SIGHUP re-reads the file (the server keeps running); an edit applies; a bad edit is logged
        import signal
        import time

        srv.proc.send_signal(signal.SIGHUP)
        changed = GOOD.replace('"tag:web:80", "web-vip:80"', '"tag:web:80,443", "web-vip:80"')
        policy.write_text(changed)
        for _ in range(50):
            if srv.cli_json("policy", "get")["policy"] == changed and "SIGHUP: reloading" in srv.stderr():
                break
            time.sleep(0.1)
        assert srv.cli_json("policy", "get")["policy"] == changed
        assert "SIGHUP: reloading the policy file" in srv.stderr()
        policy.write_text('{"acls": [}')
        for _ in range(50):
            if "is invalid, keeping the previous policy" in srv.stderr():
                break
            time.sleep(0.1)
        assert "is invalid, keeping the previous policy: line 1, column 11" in srv.stderr()
        assert srv.cli_json("policy", "get")["policy"] == changed
    finally:
        assert srv.stop() == 0, srv.stderr()[-3000:]


def test_invalid_policy_file_stops_the_start(tmp_path: Path) -> None:
    policy = tmp_path / "policy.hujson"
    policy.write_text('{"acls": [{"action": "accept", "src": ["group:none"], "dst": ["*:*"]}]}')
    config = free_ports_config(tmp_path / "data")
    config["policy"] = {"mode": "file", "path": str(policy)}
    srv = TrioscaleServer(tmp_path, config)
    with pytest.raises(Exception):
        srv.start(timeout=10)
    srv.stop()
    assert "group not found" in srv.stderr() + srv.stdout()


def test_policy_bypassing_the_server(tmp_path: Path) -> None:
    """Headscale's --bypass-grpc-and-access-database-directly: the commands work on the database
    while the server is down, and a running server serves what was set that way."""
    bypass = "--bypass-grpc-and-access-database-directly"
    good = write(tmp_path, "good.hujson", GOOD)
    bad = write(tmp_path, "bad.hujson", '{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}')
    config = free_ports_config(tmp_path / "data")
    srv = TrioscaleServer(tmp_path, config)
    assert_one_line_error(srv.cli("policy", "get", bypass), "no database")
    srv.start()
    try:
        srv.cli_ok("users", "create", "alice")
        srv.cli_ok("users", "create", "bob")
        assert srv.cli_json("policy", "set", "-f", good, bypass)["version"] == "1"
        assert srv.cli_json("policy", "get")["policy"] == GOOD  # the server reads what was stored
    finally:
        assert srv.stop() == 0, srv.stderr()[-3000:]
    down = TrioscaleServer(tmp_path, config)
    got = down.cli_json("policy", "get", bypass)
    assert (got["policy"], got["version"], got["mode"]) == (GOOD, "1", "database") and got["updatedAt"]
    assert down.cli_json("policy", "check", "-f", good, bypass) == {}
    assert_one_line_error(down.cli("policy", "check", "-f", bad, bypass), "group not found")
    assert_one_line_error(down.cli("policy", "set", "-f", bad, bypass), "group not found")
    assert down.cli_json("policy", "set", "-f", good, bypass)["version"] == "2"
    assert_one_line_error(down.cli("policy", "get"), "cannot reach")
