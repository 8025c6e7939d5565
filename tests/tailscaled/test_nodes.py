"""Tags (owned and not), renaming with `tailscale set --hostname`, ephemeral nodes after logout and
after inactivity: each client version."""

from __future__ import annotations

import pytest

from tsclients import VERSIONS
from tslab import BASE_DOMAIN, wait_for

POLICY = {
    "tagOwners": {"tag:server": ["alice@"], "tag:other": ["bob@"]},
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}


def _name(prefix, version):
    return f"{prefix}{VERSIONS.index(version)}"


@pytest.fixture(scope="module")
def tagged_net(nodes_tailnet):
    nodes_tailnet.server.set_policy(POLICY)
    return nodes_tailnet


@pytest.mark.scenario("--advertise-tags with and without tagOwners permission")
def test_advertise_tags(tagged_net, version):
    net = tagged_net
    key = net.server.create_key("alice")
    node = net.add_node(_name("t", version), version)
    node.up(key, "--advertise-tags=tag:server")
    assert net.server.node_named(node.name)["tags"] == ["tag:server"]
    refused = net.add_node(_name("u", version), version)
    proc = refused.up(net.server.create_key("alice"), "--advertise-tags=tag:other", check=False, timeout=30)
    assert proc.returncode != 0
    assert "tag:other" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert net.server.node_named(refused.name) is None


@pytest.mark.scenario("tailscale set --hostname renames the node and its MagicDNS name")
def test_set_hostname(tagged_net, version):
    net = tagged_net
    node = net.add_node(_name("h", version), version)
    node.up(net.server.create_key("alice"))
    new = f"{node.name}-new"
    node.ts("set", f"--hostname={new}")
    wait_for(lambda: node.status()["Self"]["DNSName"] == f"{new}.{BASE_DOMAIN}.", 30, "the new MagicDNS name")
    assert net.server.node_named(new) is not None


@pytest.mark.scenario("ephemeral node: gone after logout and after inactivity")
def test_ephemeral(tagged_net, version):
    net = tagged_net
    key = net.server.create_key("alice", "--ephemeral", "--reusable")
    a = net.add_node(_name("x", version), version)
    a.up(key)
    assert net.server.node_named(a.name)["ephemeral"] is True
    a.logout()
    wait_for(lambda: net.server.node_named(a.name) is None, 30, f"{a.name} deleted after logout")
    b = net.add_node(_name("y", version), version)
    b.up(key)
    assert net.server.node_named(b.name) is not None
    b.stop()  # gone without a word: the inactivity timeout collects it
    wait_for(lambda: net.server.node_named(b.name) is None, 60, f"{b.name} deleted after inactivity")
