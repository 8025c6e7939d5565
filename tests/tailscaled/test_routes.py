"""Subnet routers and exit nodes on kernel networking, clients of every version:

    lan  10.99.0.10 (HTTP "lan" on :80 and :8081)  ── ra 10.99.0.1 (newest client, CLI-approved)
                                                     └ rb 10.99.0.2 (oldest client, tag:router, autoApprovers)
    www  203.0.113.10 (HTTP "internet" on :80) ── gw ── ex 198.51.100.1 (exit node, CLI-approved)

The internet host sits one router away from the exit node: an exit node never forwards to networks
it is directly attached to (they are its LAN, which a default route does not share).

Clients c<i> (one per version, alice) and bob's client b0 (newest) use them; the policy lets alice
reach the whole LAN and the internet, bob only the LAN's port 80 and no exit node."""

from __future__ import annotations

import pytest

from tsclients import NEWEST, OLDEST, VERSIONS
from tslab import wait_for

LAN = "10.99.0.0/24"
POLICY = {
    "tagOwners": {"tag:router": ["alice@"]},
    "autoApprovers": {"routes": {LAN: ["tag:router"]}},
    "acls": [
        {"action": "accept", "src": ["alice@"], "dst": ["alice@:*", f"{LAN}:*", "autogroup:internet:*"]},
        {"action": "accept", "src": ["bob@"], "dst": [f"{LAN}:80"]},
    ],
}


@pytest.fixture(scope="module")
def routed(nodes_tailnet):
    net = nodes_tailnet
    srv = net.server
    srv.set_policy(POLICY)
    net.add_segment("lan")
    net.add_segment("uplink")
    net.add_segment("inet")
    net.attach("lan", "lan", "10.99.0.10/24")
    net.serve_http("lan", 80, "lan")
    net.serve_http("lan", 8081, "lan-8081")
    net.attach("gw", "uplink", "198.51.100.2/24")
    net.attach("gw", "inet", "203.0.113.1/24")
    net.forwarding("gw")
    net.attach("www", "inet", "203.0.113.10/24", gateway="203.0.113.1")
    net.serve_http("www", 80, "internet")
    alice_key = srv.create_key("alice", "--reusable")

    routers = {}
    for name, version, cidr, flags in (("ra", NEWEST, "10.99.0.1/24", ()),
                                       ("rb", OLDEST, "10.99.0.2/24", ("--advertise-tags=tag:router",))):
        node = net.add_node(name, version, start=False)
        net.attach(name, "lan", cidr)
        net.forwarding(name)
        node.start()
        node.up(alice_key, f"--advertise-routes={LAN}", "--netfilter-mode=on", *flags)
        routers[name] = node
        if name == "ra":  # approved first, so ra is the prefix's primary and rb its secondary
            srv.cli("nodes", "approve-routes", "--identifier", str(srv.node_named("ra")["id"]), "--routes", LAN)

    ex = net.add_node("ex", VERSIONS[len(VERSIONS) // 2], start=False)
    net.attach("ex", "uplink", "198.51.100.1/24", gateway="198.51.100.2")
    net.forwarding("ex")
    ex.start()
    ex.up(alice_key, "--advertise-exit-node", "--netfilter-mode=on")
    srv.cli("nodes", "approve-routes", "--identifier", str(srv.node_named("ex")["id"]),
            "--routes", "0.0.0.0/0,::/0")

    for i, version in enumerate(VERSIONS):
        net.add_node(f"c{i}", version).up(alice_key, "--accept-routes")
    net.add_node("b0", NEWEST).up(srv.create_key("bob"), "--accept-routes")
    return net


def _client(net, version):
    return net.nodes[f"c{VERSIONS.index(version)}"]


@pytest.mark.scenario("subnet router: --accept-routes reaches a LAN host (TCP and ICMP)")
def test_subnet_route(routed, version):
    c = _client(routed, version)
    assert wait_for(lambda: c.http_get("http://10.99.0.10/", timeout=5) == "lan", 60, f"{c.name} -> LAN over TCP")
    proc = c.run("ping", "-c", "1", "-W", "5", "10.99.0.10")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.scenario("subnet router: approved by autoApprovers")
def test_auto_approved_router(routed):
    node = routed.server.node_named("rb")
    routes = routed.server.cli_json("nodes", "list-routes", "--identifier", str(node["id"]))
    assert LAN in str(routes), routes


@pytest.mark.scenario("subnet router: ACLs on the subnet enforced")
def test_subnet_acl(routed):
    bob = routed.nodes["b0"]
    assert wait_for(lambda: bob.http_get("http://10.99.0.10/", timeout=5) == "lan", 60, "bob -> LAN :80")
    assert _client(routed, NEWEST).http_get("http://10.99.0.10:8081/") == "lan-8081"
    with pytest.raises(AssertionError):
        bob.http_get("http://10.99.0.10:8081/", timeout=3)  # dropped by the router's packet filter


@pytest.mark.scenario("exit node: --exit-node reaches the internet host; autogroup:internet decides who")
def test_exit_node(routed, version):
    c = _client(routed, version)
    c.ts("set", "--exit-node=ex")
    try:
        assert wait_for(lambda: c.http_get("http://203.0.113.10/", timeout=5) == "internet", 60,
                        f"{c.name} -> internet through ex")
    finally:
        c.ts("set", "--exit-node=")


@pytest.mark.scenario("exit node: not offered without autogroup:internet")
def test_exit_node_not_offered_without_autogroup_internet(routed):
    bob = routed.nodes["b0"]
    peers = {p["HostName"]: p for p in bob.status()["Peer"].values()}
    assert not peers.get("ex", {}).get("ExitNodeOption"), peers.get("ex")
    assert bob.ts("set", "--exit-node=ex", check=False).returncode != 0


@pytest.mark.scenario("via grant: one user's traffic to a prefix steered to tagged routers")
def test_via_grant_steers_bob_to_the_tagged_router(routed):
    net = routed
    via = {
        "tagOwners": POLICY["tagOwners"],
        "autoApprovers": POLICY["autoApprovers"],
        "grants": [
            {"src": ["alice@"], "dst": ["alice@", LAN, "autogroup:internet"], "ip": ["*"]},
            {"src": ["bob@"], "dst": [LAN], "ip": ["tcp:80"], "via": ["tag:router"]},
        ],
    }
    bob, alice = net.nodes["b0"], _client(net, NEWEST)
    try:
        net.server.set_policy(via)
        wait_for(lambda: _primary_router(bob) == "rb", 30, "bob's LAN route through rb (tag:router)")
        assert wait_for(lambda: bob.http_get("http://10.99.0.10/", timeout=5) == "lan", 60, "bob -> LAN via rb")
        assert _primary_router(alice) == "ra", "alice keeps the prefix's own primary"
        assert alice.http_get("http://10.99.0.10/") == "lan"
    finally:
        net.server.set_policy(POLICY)
    wait_for(lambda: _primary_router(bob) == "ra", 30, "bob back on the primary without the via grant")


@pytest.mark.scenario("two routers for one prefix: traffic moves when the primary stops")
def test_router_failover(routed):
    c = _client(routed, NEWEST)
    assert wait_for(lambda: c.http_get("http://10.99.0.10/", timeout=5) == "lan", 60, "LAN through the primary")
    assert _primary_router(c) == "ra"
    routed.nodes["ra"].stop()
    assert wait_for(lambda: c.http_get("http://10.99.0.10/", timeout=3) == "lan", 90, "LAN through rb")
    assert wait_for(lambda: _primary_router(c) == "rb", 30, "rb as the primary")


@pytest.mark.scenario("two routers for one prefix: traffic moves when the primary's link is cut")
def test_router_failover_on_a_cut_link(routed):
    """No FIN, no RST: the server notices the vanished router by TCP keepalive and user timeout."""
    net = routed
    c = _client(net, NEWEST)
    ra = net.nodes["ra"]
    if ra.proc is None or ra.proc.poll() is not None:
        ra.start()  # stopped by test_router_failover: it comes back logged in, as a secondary
        wait_for(lambda: ra.backend_state() == "Running", 30, "ra Running again")
    assert wait_for(lambda: c.http_get("http://10.99.0.10/", timeout=5) == "lan", 60, "LAN before the cut")
    primary = _primary_router(c)
    net.host_run(primary, "ip", "link", "set", "eth0", "down")
    other = "ra" if primary == "rb" else "rb"
    assert wait_for(lambda: c.http_get("http://10.99.0.10/", timeout=3) == "lan", 180, f"LAN through {other}")
    assert wait_for(lambda: not net.server.node_named(primary)["online"], 60, f"{primary} offline")
    assert wait_for(lambda: _primary_router(c) == other, 30, f"{other} as the client's primary")


def _primary_router(client) -> str | None:
    """The router the client's netmap names as the LAN's primary."""
    for peer in client.status()["Peer"].values():
        if LAN in (peer.get("PrimaryRoutes") or []):
            return peer["HostName"]
    return None
