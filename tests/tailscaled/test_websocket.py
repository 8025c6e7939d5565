"""TS2021 over WebSocket and DERP over WebSocket, with the client that uses them: Tailscale's
WebAssembly client (cmd/tsconnect/wasm, as in a browser) under Node.js on a host of its own joins
with a pre-auth key, then fetches a page from a tailscaled node across the tailnet, relayed by our
DERP relay over WebSocket (a browser has neither UDP nor raw TCP)."""

from __future__ import annotations

import shutil

import pytest

from tsclients import NEWEST, wasm_client
from tslab import wait_for


@pytest.mark.parametrize("version", [NEWEST])
@pytest.mark.scenario("TS2021 and DERP over WebSocket (Tailscale's WebAssembly client)")
def test_wasm_client_over_websockets(nodes_tailnet, version):
    if shutil.which("node") is None or wasm_client() is None:
        pytest.skip("needs Node.js and `make clients` (the WebAssembly client and the ws package)")
    net = nodes_tailnet
    key = net.server.create_key("alice", "--reusable")
    web = net.add_node("wsweb", version)
    web.up(key)
    net.serve_http("wsweb", 8088, "hello-from-tailscaled")
    log = net.start_wasm_client("browser", key, "wasm1", f"http://{web.ipv4()}:8088/")
    text = lambda: log.read_text(errors="replace")  # noqa: E731
    wait_for(lambda: "STATE Running" in text() or "PANIC" in text(), 90, "the WebAssembly client Running")
    wait_for(lambda: "FETCH " in text() or "FETCHERR" in text(), 90, "its fetch across the tailnet")
    assert "FETCH 200 hello-from-tailscaled" in text(), text()[-3000:]
    assert "websocket: connected to https://" in text(), "DERP did not go over WebSocket"
    node = net.server.node_named("wasm1")
    assert node is not None and node["online"]
