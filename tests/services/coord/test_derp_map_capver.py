"""Clients before capability version 115 (Tailscale 1.82) read any CertName as a name to verify,
so a certificate-hash pin would keep them off a self-signed relay: they get the map without it."""

from __future__ import annotations

from trioscale.shared.domain import tailcfg
from trioscale.shared.model import DerpRelay

RELAY = DerpRelay(region_id=900, name="r1", host="10.0.0.1", derp_port=443, cert_name="sha256-raw:" + "ab" * 32,
                  insecure_for_tests=True)


def test_new_clients_keep_the_pin():
    dmap = tailcfg.derp_map([RELAY])
    assert tailcfg.derp_map_for_capver(dmap, 115) is dmap
    assert dmap["Regions"]["900"]["Nodes"][0]["CertName"].startswith("sha256-raw:")


def test_old_clients_get_no_pin_and_the_map_is_not_changed():
    dmap = tailcfg.derp_map([RELAY])
    old = tailcfg.derp_map_for_capver(dmap, 113)
    node = old["Regions"]["900"]["Nodes"][0]
    assert "CertName" not in node and node["InsecureForTests"] is True
    assert dmap["Regions"]["900"]["Nodes"][0]["CertName"].startswith("sha256-raw:")


def test_a_name_certname_stays_for_old_clients():
    relay = DerpRelay(region_id=900, name="r1", host="derp.example.com", derp_port=443, cert_name="derp.example.com")
    old = tailcfg.derp_map_for_capver(tailcfg.derp_map([relay]), 113)
    assert old["Regions"]["900"]["Nodes"][0]["CertName"] == "derp.example.com"
