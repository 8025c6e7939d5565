"""The DERP relay over real TLS on loopback, driven by our own client (shared/testing/derpclient.py)."""

from __future__ import annotations

import json
import os
import ssl
import stat

import h11
import pytest
import trio
import trio.testing
from derphelpers import FakeStore, make_setup, new_key, public, start_relay
from gcgarbage import cyclic_garbage_of

from trioscale.services.derp.router import Client, DerpServer
from trioscale.shared.net import tls as tlsutil
from trioscale.shared.testing.derpclient import DerpHandshakeError, connect_derp, open_derp_client
from trioscale.shared.proto import derp as d


async def http_request(port: int, path: str, *, method: str = "GET", headers: list | None = None):
    """One HTTPS request; returns (status, headers dict, body)."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, tlsutil.client_context(verify=False), server_hostname="127.0.0.1", https_compatible=True)
    h = h11.Connection(h11.CLIENT)
    hdrs = [("Host", "127.0.0.1"), ("Connection", "close"), *(headers or [])]
    await stream.send_all(h.send(h11.Request(method=method, target=path, headers=hdrs)) + h.send(h11.EndOfMessage()))
    status, rheaders, body = None, {}, b""
    with trio.fail_after(5):
        while True:
            ev = h.next_event()
            if ev is h11.NEED_DATA:
                h.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(ev, h11.Response):
                status, rheaders = ev.status_code, {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    await trio.aclose_forcefully(stream)
    return status, rheaders, body


async def known_client(relay, **kwargs):
    priv = new_key()
    relay.store.add_node(public(priv))
    return priv


async def recv_within(client, seconds: float = 2.0):
    with trio.fail_after(seconds):
        return await client.recv()


async def nothing_pending(client):
    """Nothing the relay queued for `client` so far reaches it: two Pings, each answered by the
    next event. A Pong goes out ahead of packets queued in the same write, so the first proves
    nothing about packets; but whatever was queued before the relay read the first Ping goes out
    in that write at the latest, so ahead of the second Pong."""
    for _ in range(2):
        data = os.urandom(8)
        await client.send_event(d.Ping(data))  # not through ping(): its Pong comes back as an event
        ev = await recv_within(client)
        assert ev == d.Pong(data), f"unexpected event {ev!r}"


async def test_relay_between_two_clients_and_counters(relay_factory):
    relay = await relay_factory()
    a, b = await known_client(relay), await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, a) as ca, open_derp_client("127.0.0.1", relay.port, b) as cb:
        assert ca.server_key == relay.svc.server.public_key
        assert ca.server_info == d.ServerInfo(version=2)
        for i in range(50):
            await ca.send(public(b), b"packet-%d" % i)
        for i in range(50):
            ev = await recv_within(cb)
            assert ev == d.RecvPacket(public(a), b"packet-%d" % i)
        await cb.send(public(a), bytes(1200))
        assert await recv_within(ca) == d.RecvPacket(public(b), bytes(1200))
        st = relay.stats
        assert st.clients_current == 2
        assert st.packets_received == 51 and st.packets_relayed == 51
        expected_bytes = sum(len(b"packet-%d" % i) for i in range(50)) + 1200
        assert st.bytes_received == expected_bytes and st.bytes_relayed == expected_bytes
        status, headers, body = await http_request(relay.port, "/debug/stats")
        assert status == 200 and headers["content-type"] == "application/json"
        stats = json.loads(body)
        assert stats["bytes_relayed"] == expected_bytes and stats["clients_current"] == 2
        assert stats["drops"]["queue_head"] == 0
    with trio.fail_after(2):
        while relay.stats.clients_current:
            await trio.sleep(0.01)


async def test_max_size_packet(relay_factory):
    relay = await relay_factory()
    a, b = await known_client(relay), await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, a) as ca, open_derp_client("127.0.0.1", relay.port, b) as cb:
        big = os.urandom(d.MAX_PACKET_SIZE)
        await ca.send(public(b), big)
        assert await recv_within(cb) == d.RecvPacket(public(a), big)


async def test_unknown_node_key_refused_when_verifying(relay_factory):
    relay = await relay_factory()
    with pytest.raises(DerpHandshakeError):
        await connect_derp("127.0.0.1", relay.port, new_key())
    assert relay.stats.clients_rejected == 1
    # known afterwards (the negative cache entry is dropped on node.created)
    priv = new_key()
    with pytest.raises(DerpHandshakeError):
        await connect_derp("127.0.0.1", relay.port, priv)
    relay.store.add_node(public(priv))
    await relay.store.emit("node.created", {"id": 99})
    await relay.store.handled()
    c = await connect_derp("127.0.0.1", relay.port, priv)
    await c.aclose()


async def test_verification_off_admits_anyone(relay_factory):
    relay = await relay_factory(verify=False)
    c = await connect_derp("127.0.0.1", relay.port, new_key())
    assert relay.store.lookups == 0
    await c.aclose()


async def test_verification_cache_and_deleted_node_closed(relay_factory):
    relay = await relay_factory()
    a = await known_client(relay)
    for _ in range(3):
        c = await connect_derp("127.0.0.1", relay.port, a)
        await c.aclose()
    assert relay.store.lookups == 1  # cached
    async with open_derp_client("127.0.0.1", relay.port, a) as ca:
        node = relay.store.nodes.pop(public(a))
        await relay.store.emit("node.deleted", {"id": node.id})
        with trio.fail_after(2), pytest.raises(EOFError):
            while True:
                await ca.recv()
    with pytest.raises(DerpHandshakeError):
        await connect_derp("127.0.0.1", relay.port, a)


async def test_node_key_rotation_closes_old_key(relay_factory):
    relay = await relay_factory()
    a = await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, a) as ca:
        node = relay.store.nodes.pop(public(a))
        relay.store.nodes[public(new_key())] = node
        await relay.store.emit("node.updated", {"id": node.id, "fields": ["hostinfo"]})
        await ca.ping()  # unrelated field: still connected
        await relay.store.emit("node.updated", {"id": node.id, "fields": ["node_key"]})
        with trio.fail_after(2), pytest.raises(EOFError):
            while True:
                await ca.recv()


async def test_ping_pong(relay_factory):
    relay = await relay_factory()
    a = await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, a) as ca:
        rtt = await ca.ping(b"12345678")
        assert 0 <= rtt < 2
        assert relay.stats.pings_received == 1 and relay.stats.pongs_sent == 1
    # lean client without a background reader
    c = await connect_derp("127.0.0.1", relay.port, a)
    assert await c.ping() < 2
    await c.aclose()


async def test_keepalive_interval_injected(relay_factory):
    relay = await relay_factory(keepalive_interval=0.1, keepalive_jitter=0)
    a = await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, a) as ca:
        for _ in range(3):
            assert await recv_within(ca, 1.0) == d.KeepAlive()
    assert relay.stats.keepalives_sent >= 3


async def test_http_endpoints(relay_factory):
    relay = await relay_factory()
    status, headers, body = await http_request(relay.port, "/derp")
    assert (status, body) == (426, b"DERP requires connection upgrade\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    status, headers, body = await http_request(relay.port, "/derp", headers=[("Upgrade", "h2c"), ("Connection", "Upgrade")])
    assert status == 426
    for path in ("/derp/probe", "/derp/latency-check"):
        for method in ("GET", "HEAD"):
            status, headers, body = await http_request(relay.port, path, method=method)
            assert (status, body) == (200, b"")
            assert headers["access-control-allow-origin"] == "*"
        status, _, _ = await http_request(relay.port, path, method="POST")
        assert status == 405
    status, headers, body = await http_request(relay.port, "/generate_204", headers=[("X-Tailscale-Challenge", "ts_192.0.2.1")])
    assert status == 204 and headers["x-tailscale-response"] == "response ts_192.0.2.1"
    assert "no-store" in headers["cache-control"]
    for bad in ("x" * 65, "bad challenge!"):
        status, headers, _ = await http_request(relay.port, "/generate_204", headers=[("X-Tailscale-Challenge", bad)])
        assert status == 204 and "x-tailscale-response" not in headers
    assert (await http_request(relay.port, "/health"))[::2] == (200, b"ok\n")
    assert (await http_request(relay.port, "/nope"))[0] == 404


async def test_host_header_with_or_without_port(relay_factory):
    relay = await relay_factory(verify=False)
    for host in ("127.0.0.1", f"127.0.0.1:{relay.port}", "derp.example.com"):
        c = await connect_derp("127.0.0.1", relay.port, new_key(), headers={"Host": host})
        await c.aclose()


async def test_fast_start(relay_factory):
    relay = await relay_factory()
    a, b = await known_client(relay), await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, b) as cb:
        ca = await connect_derp("127.0.0.1", relay.port, a, fast_start_key=relay.svc.server.public_key)
        assert ca.server_info.version == 2
        await ca.send(public(b), b"fast")
        assert await recv_within(cb) == d.RecvPacket(public(a), b"fast")
        await ca.aclose()


async def test_fast_start_frames_in_same_write_as_request(relay_factory):
    """Bytes after the request's blank line, ClientInfo *and* a SendPacket, are the DERP stream."""
    relay = await relay_factory()
    a, b = await known_client(relay), await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, b) as cb:
        tcp = await trio.open_tcp_stream("127.0.0.1", relay.port)
        s = trio.SSLStream(tcp, tlsutil.client_context(verify=False), server_hostname="x", https_compatible=True)
        conn = d.DerpClientConnection(a, server_public_key=relay.svc.server.public_key)
        req = b"GET /derp HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nDerp-Fast-Start: 1\r\nUpgrade: DERP\r\n\r\n"
        await s.send_all(req + conn.client_info() + conn.send(d.SendPacket(public(b), b"early")))
        assert await recv_within(cb) == d.RecvPacket(public(a), b"early")
        first = await s.receive_some(65536)
        assert first[:1] == b"\x01"  # ServerKey frame, no HTTP response
        await trio.aclose_forcefully(s)


async def test_same_key_twice_newest_wins(relay_factory):
    relay = await relay_factory()
    a, b = await known_client(relay), await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, a) as ca, open_derp_client("127.0.0.1", relay.port, b) as old:
        async with open_derp_client("127.0.0.1", relay.port, b) as new:
            await ca.send(public(b), b"to-newest")
            assert await recv_within(new) == d.RecvPacket(public(a), b"to-newest")
            await nothing_pending(old)
            assert relay.stats.clients_current == 3
        # newest gone: the remaining connection takes over
        with trio.fail_after(2):
            while relay.stats.clients_current != 2:
                await trio.sleep(0.01)
        await ca.send(public(b), b"to-old")
        assert await recv_within(old) == d.RecvPacket(public(a), b"to-old")


async def test_malformed_frame_closes_only_that_connection(relay_factory):
    relay = await relay_factory()
    a, b, bad = await known_client(relay), await known_client(relay), await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, a) as ca, open_derp_client("127.0.0.1", relay.port, b) as cb:
        c = await connect_derp("127.0.0.1", relay.port, bad)
        await c.send_raw(b"\x04\x00\x00\x00\x05hello")  # SendPacket shorter than a key
        with trio.fail_after(2), pytest.raises(EOFError):
            while True:
                await c.recv()
        await ca.send(public(b), b"still fine")
        assert await recv_within(cb) == d.RecvPacket(public(a), b"still fine")
        assert relay.stats.protocol_errors == 1
        # mesh-only frames from a regular client: closed too
        c = await connect_derp("127.0.0.1", relay.port, bad)
        await c.send_event(d.WatchConns())
        with trio.fail_after(2), pytest.raises(EOFError):
            while True:
                await c.recv()


async def test_garbage_handshake_is_harmless(relay_factory):
    relay = await relay_factory()
    tcp = await trio.open_tcp_stream("127.0.0.1", relay.port)
    s = trio.SSLStream(tcp, tlsutil.client_context(verify=False), server_hostname="x", https_compatible=True)
    await s.send_all(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\n\r\n" + b"\x02\x00\x00\x00\x03abc")
    data = b""
    with trio.fail_after(3):
        while chunk := await s.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert relay.stats.protocol_errors == 1
    await trio.aclose_forcefully(s)
    # plain TCP garbage instead of TLS
    tcp = await trio.open_tcp_stream("127.0.0.1", relay.port)
    await tcp.send_all(b"hello\r\n\r\n" * 10)
    with trio.fail_after(3):
        while await tcp.receive_some(1024):
            pass
    await tcp.aclose()


async def test_peer_gone_not_here_for_disco_and_disconnected(relay_factory):
    relay = await relay_factory()
    a, b = await known_client(relay), await known_client(relay)
    nobody = public(new_key())
    async with open_derp_client("127.0.0.1", relay.port, a) as ca:
        await ca.send(nobody, b"not disco")
        disco = d.DISCO_MAGIC + bytes(56)
        for _ in range(5):
            await ca.send(nobody, disco)
        for _ in range(3):  # burst of 3, then rate-limited
            assert await recv_within(ca) == d.PeerGone(nobody, d.PeerGoneReason.NOT_HERE)
        await nothing_pending(ca)
        assert relay.stats.drop_unknown_dest == 6
        async with open_derp_client("127.0.0.1", relay.port, b) as cb:
            await cb.send(public(a), b"hi")
            assert await recv_within(ca) == d.RecvPacket(public(b), b"hi")
        assert await recv_within(ca) == d.PeerGone(public(b), d.PeerGoneReason.DISCONNECTED)


async def test_graceful_shutdown_sends_restarting_and_deregisters(relay_factory):
    relay = await relay_factory()
    assert len(relay.store.relays) == 1
    [row] = relay.store.relays.values()
    assert row.derp_port == relay.port and row.region_id == 999 and row.region_code == "test"
    assert row.host == "127.0.0.1" and row.ipv4 == "127.0.0.1"
    assert row.cert_name.startswith("sha256-raw:")
    a = await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, a) as ca:
        await ca.ping()
        relay.stop()
        ev = await recv_within(ca)
        assert isinstance(ev, d.Restarting)
        with trio.fail_after(3), pytest.raises(EOFError):
            await ca.recv()
    with trio.fail_after(3):
        await relay.done.wait()
    assert relay.store.relays == {}


async def test_relay_row_pins_generated_cert_and_keys_persist(nursery, tmp_path):
    store = FakeStore()
    setup = make_setup(tmp_path, store=store)
    relay = await start_relay(nursery, tmp_path, setup=setup)
    cert = (tmp_path / "data" / "derp_tls_cert.pem").read_bytes()
    [row] = store.relays.values()
    assert row.cert_name == "sha256-raw:" + tlsutil.cert_sha256(cert)
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "derp_tls_key.pem").st_mode) == 0o600
    key_file = tmp_path / "derp_server.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert key_file.read_text().startswith("privkey:")
    # the TLS certificate the relay serves is the pinned one
    tcp = await trio.open_tcp_stream("127.0.0.1", relay.port)
    s = trio.SSLStream(tcp, tlsutil.client_context(verify=False), server_hostname="127.0.0.1", https_compatible=True)
    await s.do_handshake()
    der = s.getpeercert(binary_form=True)
    import hashlib

    assert "sha256-raw:" + hashlib.sha256(der).hexdigest() == row.cert_name
    await trio.aclose_forcefully(s)
    pub = relay.svc.server.public_key
    relay.stop()
    await relay.done.wait()
    # restart: same DERP key and same certificate
    relay2 = await start_relay(nursery, tmp_path, setup=make_setup(tmp_path, store=store))
    assert relay2.svc.server.public_key == pub
    assert (tmp_path / "data" / "derp_tls_cert.pem").read_bytes() == cert
    relay2.stop()


async def test_verified_tls_with_self_signed_ca(relay_factory, tmp_path):
    relay = await relay_factory(verify=False)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "data" / "derp_tls_cert.pem"))
    c = await connect_derp("127.0.0.1", relay.port, new_key(), ssl_context=ctx)
    await c.aclose()


async def test_websocket_derp(relay_factory):
    from wsproto import WSConnection
    from wsproto.connection import ConnectionType
    from wsproto.events import AcceptConnection, BytesMessage, Message, Request

    relay = await relay_factory()
    a, b = await known_client(relay), await known_client(relay)
    async with open_derp_client("127.0.0.1", relay.port, b) as cb:
        tcp = await trio.open_tcp_stream("127.0.0.1", relay.port)
        s = trio.SSLStream(tcp, tlsutil.client_context(verify=False), server_hostname="x", https_compatible=True)
        ws = WSConnection(ConnectionType.CLIENT)
        await s.send_all(ws.send(Request(host="x", target="/derp", subprotocols=["derp"])))
        conn = d.DerpClientConnection(a)
        got: list = []
        accepted = False
        with trio.fail_after(5):
            while conn.state is not conn.ESTABLISHED:
                ws.receive_data(await s.receive_some(65536))
                for ev in ws.events():
                    if isinstance(ev, AcceptConnection):
                        assert ev.subprotocol == "derp"
                        accepted = True
                    elif isinstance(ev, BytesMessage):
                        for dev in conn.receive_data(bytes(ev.data)):
                            got.append(dev)
                            if isinstance(dev, d.ServerKey):
                                await s.send_all(ws.send(Message(data=conn.client_info())))
        assert accepted and isinstance(got[0], d.ServerKey)
        frame = conn.send(d.SendPacket(public(b), b"via websocket"))
        await s.send_all(ws.send(Message(data=frame[:10])) + ws.send(Message(data=frame[10:])))
        assert await recv_within(cb) == d.RecvPacket(public(a), b"via websocket")
        await cb.send(public(a), b"back")
        with trio.fail_after(5):
            while True:
                ws.receive_data(await s.receive_some(65536))
                evs = [e for m in ws.events() if isinstance(m, BytesMessage) for e in conn.receive_data(bytes(m.data))]
                if evs:
                    break
        assert evs == [d.RecvPacket(public(b), b"back")]
        await trio.aclose_forcefully(s)


async def test_mesh_watcher_gets_presence(nursery, tmp_path):
    mesh_key = os.urandom(32)
    setup = make_setup(tmp_path, mesh_key=mesh_key.hex())
    relay = await start_relay(nursery, tmp_path, setup=setup)
    a, b = await known_client(relay), await known_client(relay)
    src = public(new_key())
    async with open_derp_client("127.0.0.1", relay.port, a) as ca:
        info = d.ClientInfo(b"", version=2, mesh_key=mesh_key)
        # a mesh peer is trusted without being in the store
        async with open_derp_client("127.0.0.1", relay.port, new_key(), client_info=info) as watcher:
            await watcher.send_event(d.WatchConns())
            present = {}
            for _ in range(2):  # every connected key, the watcher's own (a mesh peer) included
                ev = await recv_within(watcher)
                assert isinstance(ev, d.PeerPresent) and ev.ip == "127.0.0.1"
                present[ev.key] = ev.flags
            assert present == {public(a): d.PeerPresentFlags.IS_REGULAR, watcher.public_key: d.PeerPresentFlags.IS_MESH_PEER}
            async with open_derp_client("127.0.0.1", relay.port, b):
                ev = await recv_within(watcher)
                assert isinstance(ev, d.PeerPresent) and ev.key == public(b)
            assert await recv_within(watcher) == d.PeerGone(public(b), 0)
            # ForwardPacket from the mesh peer is delivered locally
            await watcher.send_event(d.ForwardPacket(src, public(a), b"forwarded"))
            assert await recv_within(ca) == d.RecvPacket(src, b"forwarded")
            # ClosePeer closes all of a key's connections
            await watcher.send_event(d.ClosePeer(public(a)))
            with trio.fail_after(2), pytest.raises(EOFError):
                while True:
                    await ca.recv()


# --- the queue, without sockets ---------------------------------------------------------------------


class _SlowStream:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.gate = trio.Event()

    async def send_all(self, data: bytes) -> None:
        await self.gate.wait()
        self.writes.append(data)


async def test_queue_drops_oldest_and_writer_batches():
    server = DerpServer(new_key(), queue_depth=4)
    src_key, dst_key = public(new_key()), public(new_key())
    stream = _SlowStream()
    src = Client(server, src_key, None)
    dst = Client(server, dst_key, stream)
    server.register(src)
    server.register(dst)
    for i in range(10):
        server.route(src, dst_key, b"p%d" % i)
    assert [p for _, p in dst.data] == [b"p6", b"p7", b"p8", b"p9"]
    assert server.stats.drop_queue_head == 6 and server.stats.packets_dropped == 6
    disco = d.DISCO_MAGIC + bytes(60)
    server.route(src, dst_key, disco)  # disco has its own queue: not dropped by bulk data
    assert list(dst.disco) == [(src_key, disco)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dst.writer, None)
        await trio.testing.wait_all_tasks_blocked()
        stream.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(stream.writes) == 1  # everything queued went out in one write
    conn = d.DerpClientConnection(new_key(), server_public_key=bytes(32))
    conn.state = conn.ESTABLISHED
    events = conn.receive_data(stream.writes[0])
    assert events == [d.RecvPacket(src_key, disco)] + [d.RecvPacket(src_key, b"p%d" % i) for i in range(6, 10)]
    assert server.stats.packets_relayed == 5


async def test_receiver_that_never_reads_does_not_stall_its_sender(relay_factory):
    """A reader yields when a destination queue fills (so a writer with room can drain it), but
    a destination whose socket is full loses its oldest packets: the sender goes on, and its
    packets to other receivers arrive."""
    relay = await relay_factory(verify=False)
    s, slow, fast = new_key(), new_key(), new_key()
    cs = await connect_derp("127.0.0.1", relay.port, s)
    c_slow = await connect_derp("127.0.0.1", relay.port, slow)  # never reads
    async with open_derp_client("127.0.0.1", relay.port, fast) as c_fast:
        try:
            # connect_derp returns after ServerInfo, which the relay sends once it has registered the client
            assert relay.stats.clients_current == 3
            frame = d.encode(d.SendPacket(public(slow), b"\x04" + os.urandom(1199)))
            with trio.fail_after(10):
                for _ in range(40):  # 8000 packets, ~10 MB: far more than socket buffers hold
                    await cs.send_raw(frame * 200)
                for i in range(50):
                    await cs.send(public(fast), b"fast %d" % i)
                for i in range(50):
                    ev = await c_fast.recv_packet()
                    assert ev.packet == b"fast %d" % i
            assert relay.stats.drop_queue_head > 0
        finally:
            await cs.aclose()
            await c_slow.aclose()


async def test_closed_connections_leave_the_relay_no_cyclic_garbage(relay_factory):
    """A client connection's objects are freed as it closes, by reference counting: a relay of
    10,000 clients that churn should not leave them to the cyclic collector, whose full
    collections pause the event loop for the whole heap."""
    relay = await relay_factory()

    async def talk_and_leave(_: int) -> None:
        a, b = await known_client(relay), await known_client(relay)
        async with open_derp_client("127.0.0.1", relay.port, a) as ca, \
                open_derp_client("127.0.0.1", relay.port, b) as cb:
            await ca.send(public(b), b"hello")
            assert await recv_within(cb) == d.RecvPacket(public(a), b"hello")
        await trio.testing.wait_all_tasks_blocked()  # the relay has read both ends' close
        assert relay.stats.clients_current == 0

    garbage = await cyclic_garbage_of(talk_and_leave)
    # the test's clients (trio.SSLStream) are cyclic: only the relay's own objects count
    left = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage
                   if type(o).__module__.startswith("trioscale.")
                   and not type(o).__module__.startswith("trioscale.shared.testing")})
    del garbage
    assert left == []
