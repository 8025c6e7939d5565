"""The control listener under hostile traffic (issue 10 finding 1 and the control-side deadlines).

Each test plays the attacker with our own Noise client (shared/testing/noiseclient.py, whose "hostile" moves
open requests that never end, ignore the stream limit, or send only PINGs) or raw sockets, against
serve_control in this process (its TransportStats is the server's own accounting) or a real
`trioscale serve` process (its RSS, with a generous margin).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
from datetime import timedelta
from types import SimpleNamespace

import h2.errors
import pytest
import trio

from trioscale.services.coord import register
from trioscale.services.coord.coordinator import Coordinator
from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.netmap import Settings
from trioscale.services.coord.handlers import ControlHandlers
from trioscale.services.coord.control_server import TransportConfig, TransportStats, serve_control
from trioscale.shared.testing import noiseclient as nc
from trioscale.shared.domain import secrets
from trioscale.shared.proto import keys, noise
from trioscale.shared.store.sqlite import SqliteStore

KiB = 1024
MiB = 1024 * KiB


async def echo_or_mark(req, resp):
    if req.path == "/machine/known":
        resp.mark_registered()  # what the map handler does once the machine key has a node
    await resp.send(200, req.body)


async def start(nursery, handler=echo_or_mark, **cfg):
    stats = TransportStats()
    sk = keys.generate_private_key()
    config = TransportConfig(**cfg)
    addr = await nursery.start(functools.partial(serve_control, ("127.0.0.1", 0), sk, handler, None,
                                                 config=config, stats=stats))
    host, port = addr.rsplit(":", 1)
    return SimpleNamespace(host=host, port=int(port), key=keys.public_key(sk), stats=stats, config=config)


def client(server, **kw):
    return nc.open_noise_client(server.host, server.port, server_public_key=server.key, **kw)


async def wait_until(predicate, timeout=10.0):
    """Wait for a condition on the server's counters (they change as the server handles frames)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def read_until_eof(stream, timeout=5.0):
    data = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


# --- finding 1: unfinished bodies ------------------------------------------------------------------


async def test_unfinished_bodies_stay_bounded_and_are_reset_at_their_deadline(nursery):
    """Requests whose bodies never end: the server holds at most one connection window of them per
    connection, gives no credit for them, and resets each at its deadline (408); the connection
    then serves a normal request."""
    server = await start(nursery, request_body_timeout=1.0)
    cfg = server.config
    conns, per_conn = 3, cfg.unregistered_concurrent_streams
    body = b"x" * (200 * KiB)  # under the per-request cap: these stay unfinished, not refused
    async with client(server) as c1, client(server) as c2, client(server) as c3:
        clients = [c1, c2, c3]
        opened = [[await c.open_unfinished("POST", "/machine/map", body) for _ in range(per_conn)] for c in clients]
        await wait_until(lambda: server.stats.open_streams == conns * per_conn)
        with trio.fail_after(10):
            outcomes = [await c.stream_outcome(sid) for c, sids in zip(clients, opened) for sid in sids]
        assert outcomes == [(408, h2.errors.ErrorCodes.NO_ERROR)] * (conns * per_conn)
        for c in clients:
            assert c.sent_unfinished <= cfg.max_connection_body  # no credit for unconsumed bytes
        assert server.stats.peak_buffered_body_bytes <= conns * cfg.max_connection_body
        assert server.stats.requests_timed_out == conns * per_conn
        await wait_until(lambda: server.stats.open_streams == 0)
        assert server.stats.buffered_body_bytes == 0
        # the credit of the thrown-away bodies is back: a normal request goes through
        r = await c1.request("POST", "/machine/echo", b"hello" * 1000)
        assert (r.status, r.body) == (200, b"hello" * 1000)


async def test_over_long_body_is_refused_and_the_connection_keeps_working(nursery):
    server = await start(nursery)
    cap = server.config.max_request_body
    async with client(server) as c:
        sid = await c.open_unfinished("POST", "/machine/register", b"y" * (cap + 100 * KiB))
        with trio.fail_after(5):
            assert await c.stream_outcome(sid) == (413, h2.errors.ErrorCodes.NO_ERROR)
        sid = await c.open_unfinished("POST", "/machine/register", b"", [("content-length", str(cap + 1))])
        with trio.fail_after(5):
            assert (await c.stream_outcome(sid))[0] == 413
        assert server.stats.bodies_refused == 2
        r = await c.request("POST", "/machine/echo", b"z" * cap)  # exactly the cap is fine
        assert (r.status, len(r.body)) == (200, cap)
    assert server.stats.buffered_body_bytes == 0


async def test_listener_budget_refuses_bodies_past_it(nursery):
    """All unfinished bodies of the listener together stay under max_buffered_bodies (503 past it)."""
    server = await start(nursery, max_buffered_bodies=1 * MiB, request_body_timeout=30.0)
    async with client(server) as c1, client(server) as c2:
        for c in (c1, c2):
            for _ in range(4):
                await c.open_unfinished("POST", "/machine/map", b"b" * (200 * KiB))
        # 8 x 200 KiB offered, 1 MiB allowed: at least two streams are refused
        await wait_until(lambda: server.stats.bodies_refused >= 2)
        assert server.stats.peak_buffered_body_bytes <= 1 * MiB + 64 * KiB
        statuses = [(await c.stream_outcome(sid))[0] for c in (c1, c2) for sid in list(c.resets)]
        assert statuses and set(statuses) == {503}


async def test_few_streams_until_the_machine_has_a_node(nursery):
    server = await start(nursery, request_body_timeout=30.0)
    limit = server.config.unregistered_concurrent_streams
    async with client(server) as c:
        assert (await c.request("POST", "/machine/echo", b"1")).status == 200  # settings exchanged
        c.ignore_stream_limit()
        for _ in range(limit):
            await c.open_unfinished("POST", "/machine/register", b"{")
        await wait_until(lambda: server.stats.open_streams == limit)
        with pytest.raises(nc.ControlClientError):
            await c.open_unfinished("POST", "/machine/register", b"{")
            with trio.fail_after(5):
                raise await c.wait_closed()  # past the limit it was told: the connection goes
    await wait_until(lambda: server.stats.open_streams == 0)
    async with client(server) as c:
        assert (await c.request("POST", "/machine/known", b"")).status == 200
        for _ in range(3 * limit):
            await c.open_unfinished("POST", "/machine/map", b"{")
        await wait_until(lambda: server.stats.open_streams == 3 * limit)
        assert not c.resets


# --- deadlines of the unauthenticated phases ------------------------------------------------------


async def raw_upgrade(server, initiation):
    s = await trio.open_tcp_stream(server.host, server.port)
    await s.send_all(
        b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
        b"X-Tailscale-Handshake: " + base64.b64encode(initiation) + b"\r\nContent-Length: 0\r\n\r\n"
    )
    buf = bytearray()
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buf:
            chunk = await s.receive_some(65536)
            assert chunk, bytes(buf)
            buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return s, bytearray(rest)


async def test_silent_connection_is_closed_after_the_first_byte_deadline(nursery):
    server = await start(nursery, first_byte_timeout=0.5, request_timeout=30.0)
    s = await trio.open_tcp_stream(server.host, server.port)
    async with s:
        assert await read_until_eof(s, timeout=5) == b""
    await wait_until(lambda: server.stats.connections_timed_out == 1 and server.stats.connections == 0)


async def test_dripped_upgrade_request_is_closed_at_its_total_deadline(nursery):
    server = await start(nursery, request_timeout=1.0)
    init = noise.Initiator(server.key, keys.generate_private_key(), 130)
    head = (b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
            b"X-Tailscale-Handshake: " + base64.b64encode(init.initiation) + b"\r\n\r\n")
    s = await trio.open_tcp_stream(server.host, server.port)
    async with s, trio.open_nursery() as drip_nursery:

        async def drip():
            try:
                for byte in head[:-1]:  # never the last byte
                    await s.send_all(bytes([byte]))
                    await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        drip_nursery.start_soon(drip)
        assert await read_until_eof(s, timeout=10) == b""
        drip_nursery.cancel_scope.cancel()
    await wait_until(lambda: server.stats.connections_timed_out == 1)


async def test_stalled_noise_handshake_is_closed(nursery):
    """After the 101 the client sends half a Noise record and stops: closed at the preface deadline."""
    server = await start(nursery, h2_preface_timeout=0.5)
    init = noise.Initiator(server.key, keys.generate_private_key(), 130)
    s, _ = await raw_upgrade(server, init.initiation)
    async with s:
        await s.send_all(b"\x04\x00")
        await read_until_eof(s)
    await wait_until(lambda: server.stats.connections_timed_out == 1 and server.stats.sessions == 0)


async def test_no_request_after_the_handshake_is_closed(nursery):
    server = await start(nursery, first_request_timeout=0.5, h2_idle_timeout=300.0)
    async with client(server) as c:
        with trio.fail_after(5):
            await c.wait_closed()
    await wait_until(lambda: server.stats.connections_timed_out == 1 and server.stats.sessions == 0)


async def test_pings_do_not_keep_an_idle_connection_open(nursery):
    server = await start(nursery, h2_idle_timeout=0.5)
    async with client(server) as c:
        assert (await c.request("POST", "/machine/echo", b"x")).status == 200
        with trio.fail_after(5):
            while not c.closed:
                try:
                    await c.ping()
                except nc.ControlClientError:
                    break
                await trio.sleep(0.05)
            await c.wait_closed()


# --- the real handlers: deep JSON, and registration lifting the stream limit -----------------------

POLICY = register.RegistrationPolicy(server_url="http://ctl.example:8080", prefix_v4="100.64.0.0/10",
                         prefix_v6="fd7a:115c:a1e0::/48")


@pytest.fixture
async def coord_server(nursery):
    store = await SqliteStore.open(":memory:")
    coord = Coordinator(store, Settings(base_domain="ts.test"),
                        build_derp_map=lambda relays: tailcfg.derp_map(relays),
                        ephemeral_timeout=timedelta(seconds=60))
    await nursery.start(coord.run)
    handlers = ControlHandlers(coord, POLICY)
    user = await store.create_user("alice")
    new = secrets.generate_preauth_key()
    await store.create_preauth_key(user.id, new.prefix, new.key_hash, reusable=True)
    server = await start(nursery, handlers.noise, request_body_timeout=30.0)
    server.authkey = new.text
    yield server
    await store.aclose()


@pytest.mark.parametrize("depth", [100_000, 500])
async def test_deeply_nested_request_is_a_clean_400_with_one_warning(coord_server, caplog, depth):
    caplog.set_level(logging.DEBUG)
    nested = "[" * depth + "]" * depth
    body = ('{"Version":130,"NodeKey":"%s","Hostinfo":{"Hostname":"deep","Services":%s}}'
            % (keys.NODE.format(os.urandom(32)), nested)).encode()
    async with client(coord_server) as c:
        for path in ("/machine/register", "/machine/map", "/machine/map", "/machine/register"):
            r = await c.request("POST", path, body)
            assert r.status == 400 and b"nested" in r.body
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert not any(rec.exc_info for rec in caplog.records)
        # one line for the first; the rest are held back (anyone can send these as fast as they like)
        warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
        assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
        assert "nested" in warnings[0].getMessage()
        assert (await c.request("POST", "/machine/echo", b"{}")).status == 404  # still serving


async def test_a_registered_machine_gets_the_full_stream_limit(coord_server):
    limit = coord_server.config.unregistered_concurrent_streams
    node_key = os.urandom(32)
    async with client(coord_server) as c:
        r = await c.post_json("/machine/register", {"Version": 130, "NodeKey": keys.NODE.format(node_key),
                                                    "Hostinfo": {"Hostname": "real"},
                                                    "Auth": {"AuthKey": coord_server.authkey}})
        assert r.status == 200 and r.json()["MachineAuthorized"] is True
        r = await c.post_json("/machine/map", {"Version": 130, "NodeKey": keys.NODE.format(node_key),
                                               "Stream": False, "Hostinfo": {"Hostname": "real"}})
        assert r.status == 200
        for _ in range(limit + 4):
            await c.open_unfinished("POST", "/machine/map", b"{")
        await wait_until(lambda: coord_server.stats.open_streams == limit + 4)
        assert not c.resets and not c.closed


# --- a real `trioscale serve` process --------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_flood_of_unfinished_bodies_against_trioscale_serve(trioscale_server):
    """The issue's attack, scaled down: connections that open many streams and send 1 MB bodies
    without ending them. The old server took every byte (about 1 MB per stream); now a body past
    256 KiB is refused at once, each connection holds at most its 1 MiB window and 4 streams, and
    the server keeps answering /key and requests."""
    server = trioscale_server()
    host, port = server.config["listen_addr"].rsplit(":", 1)
    port = int(port)
    key = await nc.fetch_server_key(host, port)
    before = rss_bytes(server.proc.pid)
    body = b"m" * MiB
    conns, streams = 4, 80  # the old server: ~170 MB more (measured); now: a few MB

    async with trio.open_nursery() as nursery:
        attackers_ready = trio.Event()
        done = trio.Event()
        sent = []

        async def attacker():
            try:
                async with nc.open_noise_client(host, port, server_public_key=key) as c:
                    c.ignore_stream_limit()
                    try:
                        for _ in range(streams):
                            await c.open_unfinished("POST", "/machine/map", body)
                            await trio.sleep(0.005)  # flood pacing: take the server's window updates
                    except nc.ControlClientError:
                        pass  # the server closed a connection that went past its stream limit
                    sent.append(c.sent_unfinished)
                    if len(sent) == conns:
                        attackers_ready.set()
                    await done.wait()
            except nc.ControlClientError:
                sent.append(0)
                if len(sent) == conns:
                    attackers_ready.set()

        for _ in range(conns):
            nursery.start_soon(attacker)
        with trio.fail_after(60):
            await attackers_ready.wait()
        during = rss_bytes(server.proc.pid)
        stats = (await nc.http_request(host, port, "GET", "/debug/stats")).json()
        assert stats["peak_buffered_body_bytes"] <= conns * MiB
        assert stats["bodies_refused"] >= conns  # every 1 MB body is over the 256 KiB cap
        # a well-behaved client is still served while the attackers hold their connections
        assert await nc.fetch_server_key(host, port) == key
        async with nc.open_noise_client(host, port, server_public_key=key) as c:
            r = await c.post_json("/machine/register", {"Version": 130, "NodeKey": keys.NODE.format(os.urandom(32))})
            assert r.status == 200 and "AuthURL" in r.json()
        done.set()
    assert during - before < 64 * MiB, (before, during, sent)


async def test_control_keys_set_the_deadlines_of_trioscale_serve(trioscale_server):
    server = trioscale_server(control={"first_byte_timeout": "0.5s", "first_request_timeout": "0.5s"})
    host, port = server.config["listen_addr"].rsplit(":", 1)
    port = int(port)
    s = await trio.open_tcp_stream(host, port)
    async with s:
        assert await read_until_eof(s, timeout=10) == b""  # silent: closed after 0.5 s, not 30
    async with nc.open_noise_client(host, port) as c:
        with trio.fail_after(10):
            await c.wait_closed()  # no request after the handshake
    stats = (await nc.http_request(host, port, "GET", "/debug/stats")).json()
    assert stats["connections_timed_out"] == 2
