"""Interactive login (no key), re-login as the same and another user, expiry and re-auth, deleted
keys, logout with routes kept: each client version, in one tailnet."""

from __future__ import annotations

import pytest

from tsclients import VERSIONS
from tslab import wait_for


def _node(net, prefix, version):
    return net.add_node(f"{prefix}{VERSIONS.index(version)}", version)


def _approve(net, node, user, *flags):
    proc, reg_id = node.up_interactive(*flags)
    net.server.cli("nodes", "register", "--user", user, "--key", reg_id)
    assert proc.wait(60) == 0, proc.stdout.read()
    wait_for(lambda: node.backend_state() == "Running", 30, f"{node.name} Running")


@pytest.mark.scenario("interactive up, approved with the CLI; logout and login again")
def test_interactive_login_logout_relogin(login_tailnet, version):
    net = login_tailnet
    node = _node(net, "i", version)
    _approve(net, node, "alice")
    assert node.user_login().startswith("alice")
    first = net.server.node_named(node.name)
    node.logout()
    wait_for(lambda: node.backend_state() == "NeedsLogin", 30, f"{node.name} NeedsLogin after logout")
    _approve(net, node, "alice")
    assert node.user_login().startswith("alice")
    again = net.server.node_named(node.name)
    assert again["ipAddresses"] == first["ipAddresses"], (first, again)
    node.logout()
    wait_for(lambda: node.backend_state() == "NeedsLogin", 30, f"{node.name} NeedsLogin after logout")
    _approve(net, node, "bob")
    assert node.user_login().startswith("bob")


@pytest.mark.scenario("expired node: NeedsLogin, back with up --force-reauth")
def test_expiry_and_force_reauth(login_tailnet, version):
    net = login_tailnet
    node = _node(net, "e", version)
    key = net.server.create_key("alice")
    node.up(key)
    wait_for(lambda: node.backend_state() == "Running", 30, f"{node.name} Running")
    node_id = net.server.node_named(node.name)["id"]
    net.server.cli("nodes", "expire", "--identifier", str(node_id))
    wait_for(lambda: node.backend_state() == "NeedsLogin", 60, f"{node.name} NeedsLogin after expiry")
    _approve(net, node, "alice", "--force-reauth")


@pytest.mark.scenario("deleted pre-auth key keeps its nodes; routes kept across logout/login")
def test_deleted_key_and_routes_across_relogin(login_tailnet, version):
    net = login_tailnet
    node = _node(net, "k", version)
    created = net.server.cli_json("preauthkeys", "create", "--user", "alice", "--reusable")
    node.up(created["key"], "--advertise-routes=10.200.0.0/24")
    node_id = net.server.node_named(node.name)["id"]
    net.server.cli("nodes", "approve-routes", "--identifier", str(node_id), "--routes", "10.200.0.0/24")
    node.logout()
    wait_for(lambda: node.backend_state() == "NeedsLogin", 30, f"{node.name} NeedsLogin after logout")
    node.up(created["key"], "--advertise-routes=10.200.0.0/24")
    wait_for(lambda: node.backend_state() == "Running", 30, f"{node.name} Running after re-login")
    routes = net.server.cli_json("nodes", "list-routes", "--identifier", str(node_id))
    assert "10.200.0.0/24" in str(routes), routes
    net.server.cli("preauthkeys", "delete", "--id", str(created["id"]))
    # the node keeps working: a server-side change reaches it, and it stays Running
    net.server.cli("nodes", "rename", "--identifier", str(node_id), f"{node.name}-renamed")
    wait_for(lambda: node.status()["Self"]["DNSName"].startswith(f"{node.name}-renamed."), 30, "the rename to arrive")
    assert node.backend_state() == "Running"
