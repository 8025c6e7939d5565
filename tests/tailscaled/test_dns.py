"""MagicDNS through the kernel: with --accept-dns each node's resolver (100.100.100.100) answers
tailnet names and extra records, and sends a split-DNS domain to its own server. Each node writes
only its own resolv.conf (bind-mounted in its mount namespace)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsclients import VERSIONS
from tslab import BASE_DOMAIN, wait_for


@pytest.mark.scenario("MagicDNS via the node's resolver: names, extra records, split DNS")
def test_magicdns(dns_net, version):
    net = dns_net
    machines = Path("/etc/resolv.conf").read_bytes()
    key = net.server.create_key("alice", "--reusable")
    me = net.add_node(f"d{VERSIONS.index(version)}", version)
    me.up(key, "--accept-dns=true")
    other = next((n for n in net.nodes.values() if n is not me), None)
    if other is None:
        other = net.add_node(f"o{VERSIONS.index(version)}", version)
        other.up(key)
    wait_for(lambda: "100.100.100.100" in me.resolv_conf(), 30, f"{me.name} to point its resolv.conf at MagicDNS")
    fqdn = f"{other.name}.{BASE_DOMAIN}"
    assert wait_for(lambda: me.resolve(fqdn) == [other.ipv4()], 30, f"{fqdn} from {me.name}")
    assert me.resolve(f"grafana.{BASE_DOMAIN}") == ["100.64.0.99"]
    assert me.resolve("db.corp.example") == ["192.0.2.55"]
    assert Path("/etc/resolv.conf").read_bytes() == machines, "a node touched the machine's resolv.conf"
