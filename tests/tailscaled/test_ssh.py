"""Tailscale SSH (`tailscale up --ssh`, Debian's OpenSSH client under `tailscale ssh`): policy `ssh`
rules let alice into her own nodes (autogroup:self) and into tag:server as root, and keep bob out."""

from __future__ import annotations

import pytest

from tsclients import NEWEST, VERSIONS

POLICY = {
    "tagOwners": {"tag:server": ["alice@"]},
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
    "ssh": [
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]},
        {"action": "accept", "src": ["alice@"], "dst": ["tag:server"], "users": ["root"]},
    ],
}


@pytest.fixture(scope="module")
def ssh_net(nodes_tailnet):
    net = nodes_tailnet
    net.server.set_policy(POLICY)
    net.add_node("srv", NEWEST).up(net.server.create_key("alice", "--tags", "tag:server"), "--ssh")
    net.add_node("bob0", NEWEST).up(net.server.create_key("bob"))
    return net


def _ssh(node, target, command="echo ssh-ok-$((40+2))"):
    return node.ts("ssh", f"root@{target}", command, check=False, timeout=60)


@pytest.mark.scenario("tailscale ssh: policy lets alice in (autogroup:self, tag), keeps bob out")
def test_ssh(ssh_net, version):
    net = ssh_net
    i = VERSIONS.index(version)
    mine = net.add_node(f"s{i}", version)
    mine.up(net.server.create_key("alice"), "--ssh")
    client = net.add_node(f"a{i}", version)
    client.up(net.server.create_key("alice"))
    for target in (mine.name, "srv"):
        proc = _ssh(client, target)
        assert "ssh-ok-42" in proc.stdout, f"alice -> {target}: {proc.stdout}{proc.stderr}"
    proc = _ssh(net.nodes["bob0"], mine.name)
    assert proc.returncode != 0 and "ssh-ok-42" not in proc.stdout, proc.stdout + proc.stderr
