"""Tailscale's own `derper`, run with `--verify-client-url` pointing at our coordinator's /verify
(Headscale's endpoint): it admits our nodes and refuses a key we don't know, and our nodes relay
through it when it is the DERP map's only region (UDP between the nodes dropped)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tsclients import VERSIONS
from tslab import wait_for


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


def test_derper_refuses_a_key_we_do_not_know(derper_tailnet):
    """A DERP client with a node key the coordinator never registered is let through the DERP
    handshake by derper, which then asks our /verify and closes the connection."""
    import trio

    from trioscale.shared.testing import derpclient
    from trioscale.shared.proto import keys

    net = derper_tailnet
    if "tester" not in net.lab.hosts:
        net.lab.add_host("tester")

    private = keys.generate_private_key()

    async def attempt() -> str:
        with trio.fail_after(20):
            try:
                client = await derpclient.connect_derp("10.77.0.3", 443, private, verify=False, timeout=10)
            except (derpclient.DerpHandshakeError, OSError, trio.BrokenResourceError) as exc:
                return f"refused at the handshake: {exc}"
            try:
                while True:
                    await client.recv()
            except (EOFError, trio.BrokenResourceError) as exc:
                return f"closed: {exc}"
            finally:
                await client.aclose()

    with net.lab.inside("tester"):
        outcome = trio.run(attempt)
    assert outcome.startswith(("refused", "closed")), outcome
    node_key = keys.NODE.format(keys.public_key(private))
    wait_for(lambda: f"{node_key}/" in net.derper_log() and "not allowed" in net.derper_log(), 10,
             "derper to log the refusal from our /verify")
