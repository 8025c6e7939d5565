"""Pre-auth keys owned by their tags alone (Headscale 0.29: `preauthkeys create --tags` without
--user, `POST /api/v1/preauthkey` with no user or user 0 and aclTags): a node joining with one is a
tagged node of no user."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from util import TrioscaleServer, free_ports_config

TAGGED_DEVICES_ID = "2147455555"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrioscaleServer]:
    workdir = tmp_path_factory.mktemp("tagkeys")
    srv = TrioscaleServer(workdir, free_ports_config(workdir / "data"))
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.stderr()[-4000:]
    assert "Traceback" not in srv.stderr()


def register(server: TrioscaleServer, hostname: str, authkey: str) -> dict:
    from trioscale.shared.proto import keys
    from trioscale.shared.testing.noiseclient import open_noise_client

    host, port = server.config["listen_addr"].rsplit(":", 1)
    node_key = keys.generate_private_key()
    body = {"Version": 130, "NodeKey": keys.NODE.format(keys.public_key(node_key)),
            "Hostinfo": {"Hostname": hostname}, "Auth": {"AuthKey": authkey}}

    async def go() -> dict:
        async with open_noise_client(host, int(port)) as client:
            resp = await client.post_json("/machine/register", body)
            assert resp.status == 200, resp
            return resp.json()

    return trio.run(go)


def test_a_node_joining_with_a_tag_only_key_is_tagged_and_owned_by_no_user(server: TrioscaleServer) -> None:
    server.cli_ok("users", "create", "olga")
    key = server.cli_json("preauthkeys", "create", "--tags", "tag:srv,tag:db", "--reusable")
    assert key["user"] is None and key["aclTags"] == ["tag:db", "tag:srv"]  # sorted, as Headscale keeps them
    # Headscale's CLI sends user 0 for "no user"
    zero = server.cli_json("preauthkeys", "create", "--user", "0", "--tags", "tag:srv")
    assert zero["user"] is None and zero["aclTags"] == ["tag:srv"]
    listed = {k["id"]: k for k in server.cli_json("preauthkeys", "list")}
    assert listed[key["id"]]["user"] is None and listed[zero["id"]]["user"] is None

    answer = register(server, "db-1", key["key"])
    assert answer["MachineAuthorized"] is True, answer
    assert answer["User"]["ID"] == int(TAGGED_DEVICES_ID)
    node = next(n for n in server.cli_json("nodes", "list") if n["name"] == "db-1")
    assert node["tags"] == ["tag:db", "tag:srv"]
    assert (node["user"]["id"], node["user"]["name"]) == (TAGGED_DEVICES_ID, "tagged-devices")
    assert node["preAuthKey"]["id"] == key["id"] and node["preAuthKey"]["user"] is None
    assert node["expiry"] is None  # a tagged node does not expire
    assert server.cli_json("nodes", "list", "--user", "olga") == []
    # no person can take the name that holds what tags own
    assert server.cli("users", "create", "tagged-devices").returncode == 1
    assert server.cli("users", "rename", "--name", "olga", "--new-name", "tagged-devices").returncode == 1


def test_neither_a_user_nor_tags_is_refused(server: TrioscaleServer) -> None:
    before = server.cli_json("preauthkeys", "list")
    for args in ((), ("--user", "0")):
        proc = server.cli("preauthkeys", "create", *args)
        assert proc.returncode == 1 and proc.stderr.startswith("Error: ") and "--tags" in proc.stderr, proc
    assert server.cli_json("preauthkeys", "list") == before
