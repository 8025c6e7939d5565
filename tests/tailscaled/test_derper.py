"""Tailscale's own `derper`, run with `--verify-client-url` pointing at our coordinator's /verify
(Headscale's endpoint): it admits our nodes and refuses a key we don't know, and our nodes relay
through it when it is the DERP map's only region (UDP between the nodes dropped)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tsclients import VERSIONS


def _post_verify(net, node_key: str) -> dict:
    req = urllib.request.Request(f"{net.server.url}/verify", method="POST",
                                 data=json.dumps({"NodePublic": node_key, "Source": "10.77.0.9"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with net.lab.inside("ctl"), urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.scenario("Tailscale's derper with --verify-client-url: admits ours, relays our traffic")
def test_ping_through_derper(derper_tailnet, version):
    me = derper_tailnet.nodes[f"n{VERSIONS.index(version)}"]
    for other in derper_tailnet.nodes.values():
        if other is me:
            continue
        out = me.ts("ping", "--c=2", other.name, check=False).stdout
        assert f"pong from {other.name}" in out and "via DERP(tsderper)" in out, f"{me.name} -> {other.name}: {out}"
    assert "derper" in (derper_tailnet.derper_log())


def test_verify_endpoint_refuses_unknown_keys(derper_tailnet):
    known = next(iter(derper_tailnet.nodes.values())).status()["Self"]["PublicKey"]
    assert _post_verify(derper_tailnet, known) == {"Allow": True}
    assert _post_verify(derper_tailnet, "nodekey:" + "ab" * 32) == {"Allow": False}
