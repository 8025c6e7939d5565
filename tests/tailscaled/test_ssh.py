"""Tailscale SSH (`tailscale up --ssh`, Debian's OpenSSH client under `tailscale ssh`): policy `ssh`
rules let alice into her own nodes (autogroup:self) and into tag:server as root, and keep bob out."""

from __future__ import annotations

import pytest

from tsclients import NEWEST, VERSIONS
from tslab import wait_for

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


@pytest.mark.scenario("tailscale ssh: a policy without `ssh` takes the rules away from connected nodes")
def test_dropping_the_ssh_section_refuses_ssh_at_once(ssh_net, version):
    """A client keeps the SSHPolicy it was last sent until told otherwise (a missing SSHPolicy in a
    map response means "unchanged"), so the server must send an empty one when the rules go."""
    net = ssh_net
    i = VERSIONS.index(version)
    mine = net.add_node(f"d{i}", version)
    mine.up(net.server.create_key("alice"), "--ssh")
    client = net.add_node(f"c{i}", NEWEST)
    client.up(net.server.create_key("alice"))
    proc = _ssh(client, mine.name)
    assert "ssh-ok-42" in proc.stdout, proc.stdout + proc.stderr
    net.server.set_policy({k: v for k, v in POLICY.items() if k != "ssh"})
    try:
        refused = []

        def ssh_refused() -> bool:
            p = _ssh(client, mine.name)
            refused.append(p)
            return p.returncode != 0 and "ssh-ok-42" not in p.stdout

        wait_for(ssh_refused, 60, f"{mine.name} to refuse SSH once the policy has no ssh rules")
    finally:
        net.server.set_policy(POLICY)
