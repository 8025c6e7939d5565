"""Our own Noise client against the real control listener on loopback: register, map stream, deltas.

This is the path the load tools use (issue: "our own Noise client interoperates with our server").
"""

from __future__ import annotations

import json
import math
from datetime import timedelta

import h2.connection
import pytest
import trio
import trio.testing
from gcgarbage import cyclic_garbage_of

from trioscale.services.coord import register
from trioscale.services.coord.coordinator import Coordinator
from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.netmap import Settings
from trioscale.services.coord.handlers import ControlHandlers
from trioscale.services.coord.control_server import serve_control
from trioscale.shared.domain import secrets
from trioscale.shared.testing.noiseclient import ControlClientError, SinkReader, open_noise_client
from trioscale.shared.proto import keys, mapframe
from trioscale.shared.store.sqlite import SqliteStore


@pytest.fixture
async def control(nursery):
    store = await SqliteStore.open(":memory:")
    coord = Coordinator(store, Settings(base_domain="ts.test"), build_derp_map=lambda r: tailcfg.derp_map(r),
                        ephemeral_timeout=timedelta(seconds=60))
    await nursery.start(coord.run)
    policy = register.RegistrationPolicy(server_url="http://127.0.0.1", prefix_v4="100.64.0.0/10", prefix_v6="fd7a:115c:a1e0::/48")
    handlers = ControlHandlers(coord, policy)
    addr = await nursery.start(serve_control, "127.0.0.1:0", keys.generate_private_key(), handlers.noise, handlers.http)
    host, port = addr.rsplit(":", 1)
    user = await store.create_user("alice")
    key = secrets.generate_preauth_key()
    await store.create_preauth_key(user.id, key.prefix, key.key_hash, reusable=True)
    yield store, host, int(port), key.text
    await store.aclose()


class SimNode:
    def __init__(self, name: str) -> None:
        self.name = name
        self.node_key = keys.generate_private_key()
        self.disco_key = keys.generate_private_key()

    def register_body(self, authkey):
        return {"Version": 130, "NodeKey": keys.NODE.format(keys.public_key(self.node_key)),
                "Auth": {"AuthKey": authkey}, "Hostinfo": {"Hostname": self.name}}

    def map_body(self, **extra):
        body = {"Version": 130, "NodeKey": keys.NODE.format(keys.public_key(self.node_key)),
                "DiscoKey": keys.DISCO.format(keys.public_key(self.disco_key)), "Stream": True,
                "Compress": "zstd", "KeepAlive": True, "Hostinfo": {"Hostname": self.name}}
        body.update(extra)
        return body


async def test_two_sim_nodes_see_each_other_over_noise(control):
    store, host, port, authkey = control
    a, b = SimNode("alpha"), SimNode("beta")
    async with open_noise_client(host, port) as ca, open_noise_client(host, port) as cb:
        ra = await ca.post_json("/machine/register", a.register_body(authkey))
        assert ra.status == 200 and ra.json()["MachineAuthorized"] is True
        rb = await cb.post_json("/machine/register", b.register_body(authkey))
        assert rb.json()["MachineAuthorized"] is True
        async with ca.map_stream(a.map_body()) as maps_a:
            first = await maps_a.__anext__()
            assert first["Node"]["Name"] == "alpha.ts.test."
            async with cb.map_stream(b.map_body()) as maps_b:
                first_b = await maps_b.__anext__()
                assert [p["Name"] for p in first_b["Peers"]] == ["alpha.ts.test."]
                with trio.fail_after(5):
                    async for msg in maps_a:
                        if "PeersChanged" in msg:
                            assert msg["PeersChanged"][0]["Name"] == "beta.ts.test."
                            break
                # a lite update on the same connection as b's open stream
                lite = await cb.post_json("/machine/map", b.map_body(Stream=False, OmitPeers=True,
                                                                     Endpoints=["127.0.0.1:5555"]))
                assert lite.status == 200
                with trio.fail_after(5):
                    async for msg in maps_a:
                        patches = msg.get("PeersChangedPatch") or msg.get("PeersChanged") or []
                        if any(p.get("Endpoints") == ["127.0.0.1:5555"] for p in patches):
                            break
        # a's stream is closed: b's peer goes offline
        node_a = await store.get_node_by_node_key(keys.public_key(a.node_key))
        with trio.fail_after(5):
            while (await store.get_node(node_a.id)).last_seen is None:
                await trio.sleep(0.02)


async def test_map_request_for_someone_elses_node_is_refused(control):
    store, host, port, authkey = control
    a = SimNode("alpha")
    async with open_noise_client(host, port) as ca:
        assert (await ca.post_json("/machine/register", a.register_body(authkey))).json()["MachineAuthorized"]
    async with open_noise_client(host, port) as intruder:  # another machine key
        resp = await intruder.post_json("/machine/map", a.map_body(Stream=False, OmitPeers=True))
        assert resp.status == 404


@pytest.mark.parametrize("shared_reader", [False, True], ids=["own-task", "sink-reader"])
async def test_a_sink_reads_the_map_stream_with_its_own_flow_control(control, shared_reader):
    """NoiseClient.sink (the load tools' map stream): h2 hands over at the response headers, the
    first map and every delta still arrive whole, and with a 1 KiB window the stream only keeps
    going if the sink returns window credit itself; read by its own task or by a SinkReader (one
    task for a fleet's sinks), which lets the connection go when the sink ends."""
    store, host, port, authkey = control
    reader = SinkReader() if shared_reader else None
    a, b = SimNode("alpha"), SimNode("beta")
    async with open_noise_client(host, port, initial_window_size=1024) as ca, open_noise_client(host, port) as cb:
        for client, node in ((ca, a), (cb, b)):
            assert (await client.post_json("/machine/register", node.register_body(authkey))).status == 200
        decoder = mapframe.MapStreamDecoder("zstd")
        send, recv = trio.open_memory_channel(math.inf)

        def on_data(chunk: bytes) -> None:
            for msg in decoder.receive_messages(chunk):
                send.send_nowait(msg)

        async with trio.open_nursery() as nursery:
            if reader is not None:
                nursery.start_soon(reader.run)
            nursery.start_soon(ca.sink, "POST", "/machine/map", json.dumps(a.map_body()).encode(), on_data, reader)
            with trio.fail_after(5):
                first = await recv.receive()
            assert first["Node"]["Name"] == "alpha.ts.test."
            for i in range(40):  # about 4 KiB of deltas: four windows
                endpoint = f"127.0.0.1:{6000 + i}"
                lite = await cb.post_json("/machine/map", b.map_body(Stream=False, OmitPeers=True, Endpoints=[endpoint]))
                assert lite.status == 200
                with trio.fail_after(5):
                    while True:
                        msg = await recv.receive()
                        patches = msg.get("PeersChangedPatch") or msg.get("PeersChanged") or []
                        if any(p.get("Endpoints") == [endpoint] for p in patches):
                            break
            if reader is not None:
                # handed over at the headers: any read after the one that brought them is the
                # reader's (the first map may come in the same read as the headers, so the
                # first message can arrive a moment before the hand-over)
                assert len(reader) == 1
            nursery.cancel_scope.cancel()
        if reader is not None:
            assert len(reader) == 0
        # the connection is the sink's now: no other request
        with pytest.raises(ControlClientError, match="one sink"):
            await ca.sink("POST", "/machine/map", b"{}", on_data)


async def test_a_sink_reader_lets_go_of_a_stream_the_server_ends(control):
    """A node deleted while its map stream is read by a SinkReader: the server ends the stream,
    the sink returns, and the reader holds the connection no longer."""
    store, host, port, authkey = control
    a = SimNode("alpha")
    reader = SinkReader()
    first = trio.Event()
    async with open_noise_client(host, port) as ca:
        assert (await ca.post_json("/machine/register", a.register_body(authkey))).status == 200
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            with trio.fail_after(5):
                async with trio.open_nursery() as streaming:
                    streaming.start_soon(ca.sink, "POST", "/machine/map", json.dumps(a.map_body()).encode(),
                                         lambda chunk: first.set(), reader)
                    await first.wait()
                    assert len(reader) == 1
                    node = await store.get_node_by_node_key(keys.public_key(a.node_key))
                    await store.delete_node(node.id)
                # the sink returned: the server ended the stream
            assert len(reader) == 0
            nursery.cancel_scope.cancel()


async def test_a_sink_refused_by_the_server_says_why(control):
    store, host, port, authkey = control
    a = SimNode("alpha")
    async with open_noise_client(host, port) as ca:
        assert (await ca.post_json("/machine/register", a.register_body(authkey))).status == 200
    async with open_noise_client(host, port) as intruder:  # another machine key
        with pytest.raises(ControlClientError, match="HTTP 404"):
            await intruder.sink("POST", "/machine/map", json.dumps(a.map_body()).encode(), lambda chunk: None)
        # refused before any body: the connection still carries requests
        assert (await intruder.post_json("/machine/map", a.map_body(Stream=False))).status == 404


@pytest.fixture
def fast_keepalives(monkeypatch):
    """Keepalive intervals of 0.3 s, looked at every 0.05 s (asked for before `control`, so the
    coordinator's keepalive task starts with them)."""
    from trioscale.services.coord import coordinator, sessions

    monkeypatch.setattr(coordinator, "KEEPALIVE_BASE", 0.3)
    monkeypatch.setattr(coordinator, "KEEPALIVE_JITTER", 0.0)
    monkeypatch.setattr(sessions, "KEEPALIVE_TICK", 0.05)


async def test_a_quiet_map_stream_gets_keepalives_from_the_tables_pass(fast_keepalives, control):
    """Keepalives are written by one task for every session (SessionTable.keepalives) over the
    real transport: a stream with nothing else to carry gets {"KeepAlive": true} messages."""
    store, host, port, authkey = control
    a = SimNode("alpha")
    async with open_noise_client(host, port) as ca:
        assert (await ca.post_json("/machine/register", a.register_body(authkey))).status == 200
        async with ca.map_stream(a.map_body()) as maps:
            first = await maps.__anext__()
            assert first["Node"]["Name"] == "alpha.ts.test."
            with trio.fail_after(10):
                assert await maps.__anext__() == {"KeepAlive": True}
                assert await maps.__anext__() == {"KeepAlive": True}


async def test_closed_connections_leave_the_server_no_cyclic_garbage(control):
    """A connection's objects are freed as it closes, by reference counting. Left to the cyclic
    collector, the closed connections of a join storm piled up for one full collection: 430,000
    objects and a 0.7-0.9 s pause of the event loop at 5,000 nodes."""
    store, host, port, authkey = control

    async def join_and_leave(i: int) -> None:
        node = SimNode(f"n{i}")
        async with open_noise_client(host, port) as c:
            assert (await c.post_json("/machine/register", node.register_body(authkey))).status == 200
            async with c.map_stream(node.map_body()) as maps:
                await maps.__anext__()

    garbage = await cyclic_garbage_of(join_and_leave)
    # the test's client keeps its own h2 connections to the collector: only the server's count
    left = [type(o).__qualname__ for o in garbage
            if type(o).__module__.startswith("trioscale.") and not type(o).__module__.startswith("trioscale.shared.testing")
            or isinstance(o, h2.connection.H2Connection) and not o.config.client_side]
    del garbage
    assert left == []
