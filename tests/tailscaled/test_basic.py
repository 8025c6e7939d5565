"""Joining with a pre-auth key, status, ping (direct and through our DERP relay), netcheck:
every client version, all in one tailnet (old and new clients mixed)."""

from __future__ import annotations

import pytest

from tsclients import VERSIONS



BASE = "ts.test"


def _node(tailnet, version):
    return tailnet.nodes[f"n{VERSIONS.index(version)}"]


@pytest.mark.scenario("up --authkey; status --json")
def test_status_shows_every_peer(tailnet, version):
    me = _node(tailnet, version)
    st = me.status()
    assert st["BackendState"] == "Running"
    assert st["Self"]["DNSName"] == f"{me.name}.{BASE}."
    server_nodes = {n["givenName"]: n for n in tailnet.server.nodes()}
    assert sorted(st["Self"]["TailscaleIPs"]) == sorted(server_nodes[me.name]["ipAddresses"])
    peers = {p["HostName"]: p for p in (st.get("Peer") or {}).values()}
    others = [n for n in tailnet.nodes.values() if n is not me]
    for other in others:
        peer = peers.get(other.name)
        assert peer is not None, f"{other.name} missing from {me.name}'s status: {sorted(peers)}"
        assert peer["DNSName"] == f"{other.name}.{BASE}."
        assert sorted(peer["TailscaleIPs"]) == sorted(server_nodes[other.name]["ipAddresses"])


@pytest.mark.scenario("ping by IP and by name, direct")
def test_ping_direct(tailnet, version):
    me = _node(tailnet, version)
    for other in tailnet.nodes.values():
        if other is me:
            continue
        for target in (other.ipv4(), other.name):
            out = me.ts("ping", "--c=5", target, check=False).stdout
            assert f"pong from {other.name}" in out and "via 10.77." in out, f"{me.name} -> {target}: {out}"


@pytest.mark.scenario("netcheck: our region and our STUN's view")
def test_netcheck(tailnet, version):
    me = _node(tailnet, version)
    out = me.ts("netcheck", timeout=90).stdout
    assert "Nearest DERP: lab relay" in out, out
    assert f"IPv4: yes, {me.ip}:" in out, out


@pytest.mark.scenario("kernel TUN: ICMP to every peer")
def test_kernel_ping(tailnet, version):
    me = _node(tailnet, version)
    for other in tailnet.nodes.values():
        if other is not me:
            proc = me.run("ping", "-c", "1", "-W", "5", other.ipv4())
            assert proc.returncode == 0, f"{me.name} -> {other.name}: {proc.stdout}{proc.stderr}"
