"""The DERP relay against hostile peers (issue 10, finding 3 and the DERP parts of finding 7).

Each test runs the attack against a real relay over TLS on loopback and waits on the relay's own
counters and buffer accounting (``DerpService.buffered()``), never on elapsed time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
import trio
from derphelpers import new_key, public

from trioscale.shared.net import tls as tlsutil
from trioscale.shared.testing.derpclient import DerpHandshakeError, connect_derp, open_derp_client
from trioscale.shared.proto import derp as d

UPGRADE = b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n"
WS_UPGRADE = (b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Protocol: derp\r\n\r\n")


async def tls_connect(port: int) -> trio.SSLStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, tlsutil.client_context(verify=False), server_hostname="127.0.0.1",
                            https_compatible=True)
    await stream.do_handshake()
    return stream


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    """Everything the relay sends until it closes the connection."""
    got = b""
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return got
        if not data:
            return got
        got += data


async def wait_for(predicate, what: str, limit: float = 30.0) -> None:
    """Until `predicate()` holds (checked as events happen; `limit` only bounds a hang)."""
    with trio.fail_after(limit):
        while not predicate():
            await trio.sleep(0.02)


def held_per_connection(relay) -> dict:
    """The relay's buffer accounting, without the one receive buffer all connections share."""
    b = relay.svc.buffered()
    return {**b, "total": b["total"] - b["read_shared"]}


async def test_slow_loris_upgrades_and_handshakes_are_closed_by_total_deadlines(relay_factory):
    """Finding 3: a byte now and then used to keep a connection (and its 256 KiB buffer) forever,
    since the 30 s timeout applied per read. Every pre-admission phase now has a total deadline."""
    relay = await relay_factory(first_byte_timeout=1.0, upgrade_timeout=2.0, handshake_timeout=2.0)
    silent, dribblers, ws_dribblers, derp_dribblers = 10, 20, 5, 10
    total = silent + dribblers + ws_dribblers + derp_dribblers
    closed = 0
    peak: list[dict] = []

    async def dribble(data: bytes) -> None:
        nonlocal closed
        stream = await tls_connect(relay.port)
        try:
            for i in range(len(data)):  # one byte at a time, each far inside any per-read timeout
                await stream.send_all(data[i : i + 1])
                await trio.sleep(0.1)
            raise AssertionError("the relay kept a dribbling connection through the whole request")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed += 1
        finally:
            await trio.aclose_forcefully(stream)

    async def silent_client() -> None:
        nonlocal closed
        tcp = await trio.open_tcp_stream("127.0.0.1", relay.port)
        try:
            assert await tcp.receive_some(1024) == b""  # closed without a byte from us
            closed += 1
        finally:
            await trio.aclose_forcefully(tcp)

    async def derp_dribble() -> None:
        """Upgrades at once, then trickles a ClientInfo that never completes."""
        nonlocal closed
        stream = await tls_connect(relay.port)
        try:
            await stream.send_all(UPGRADE)
            await stream.receive_some(65536)  # 101 + ServerKey
            frame = d.encode_frame(d.FrameType.CLIENT_INFO, bytes(4000))
            for i in range(len(frame)):
                await stream.send_all(frame[i : i + 1])
                await trio.sleep(0.05)
            raise AssertionError("the relay kept a dribbling DERP handshake")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed += 1
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for _ in range(silent):
            nursery.start_soon(silent_client)
        for _ in range(dribblers):
            nursery.start_soon(dribble, UPGRADE + b"x" * 4000)
        for _ in range(ws_dribblers):
            nursery.start_soon(dribble, WS_UPGRADE + b"x" * 4000)
        for _ in range(derp_dribblers):
            nursery.start_soon(derp_dribble)
        await wait_for(lambda: relay.stats.connections_current >= total, "all connected")
        peak.append(held_per_connection(relay))
    assert closed == total
    assert relay.stats.handshake_timeouts == total
    await wait_for(lambda: relay.stats.connections_current == 0, "all gone")
    # while they were open they held next to nothing (the old relay: 256 KiB each once TLS was up)
    assert peak[0]["connections"] >= total
    assert peak[0]["total"] <= total * 8192, peak[0]
    assert relay.svc.buffered()["read_shared"] <= 1 << 18  # one buffer for all, not one each


async def test_idle_registered_clients_hold_a_few_kb_each(relay_factory):
    """Finding 3: ~300 KB per idle registered client. Buffers now exist only while data flows."""
    relay = await relay_factory(verify=False)
    n = 60
    keys = [new_key() for _ in range(n)]
    clients = []
    try:
        for k in keys:
            clients.append(await connect_derp("127.0.0.1", relay.port, k))
        await wait_for(lambda: relay.stats.clients_current == n, "all registered")
        # a burst of full-size packets through one pair: the relay's buffers grow to carry it...
        a, b = clients[0], clients[1]
        burst = [bytes([i]) * d.MAX_PACKET_SIZE for i in range(8)]
        for p in burst:
            await a.send(b.public_key, p)
        for p in burst:
            with trio.fail_after(10):
                assert await b.recv_packet() == d.RecvPacket(a.public_key, p)
        for c in clients:  # every client also talks a little, so every read path was used
            await c.send_event(d.Ping(b"12345678"))
        for c in clients:
            with trio.fail_after(10):
                while type(await c.recv()) is not d.Pong:
                    pass
        await wait_for(lambda: relay.stats.pongs_sent >= n, "pongs written")
        # ...and drop back once it is through
        held = held_per_connection(relay)
        assert held["connections"] == n
        assert held["total"] <= n * 2048, held
    finally:
        for c in clients:
            await c.aclose()


async def test_deep_or_oversized_client_info_is_a_clean_close_with_one_warning(relay_factory, caplog):
    """Finding 7: a deeply nested ClientInfo logged a RecursionError traceback at ERROR per connection."""
    relay = await relay_factory(verify=False)
    caplog.set_level(logging.DEBUG)
    priv = new_key()
    server_pub = relay.svc.server.public_key
    deep = b"[" * 100_000 + b"]" * 100_000
    sealed = d.handshake._seal(priv, server_pub, b'{"version":2,"x":' + deep + b"}", None)
    for frame in (
        d.encode_frame(d.FrameType.CLIENT_INFO, public(priv) + sealed),
        # oversized: the header alone is enough to refuse it
        d.encode_frame(d.FrameType.CLIENT_INFO, bytes(d.MAX_CLIENT_INFO_LEN + 1))[:1000],
    ):
        caplog.clear()
        stream = await tls_connect(relay.port)
        try:
            await stream.send_all(UPGRADE + frame)
            with trio.fail_after(10):
                got = await read_until_closed(stream)
        finally:
            await trio.aclose_forcefully(stream)
        assert got.startswith(b"HTTP/1.1 101")
        assert d.FrameType.SERVER_INFO not in d.FrameDecoder(1 << 20).feed(got.partition(b"\r\n\r\n")[2])
        await wait_for(lambda: any(r.levelno >= logging.WARNING for r in caplog.records), "a warning")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "refused" in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
        assert warnings[0].exc_info is None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert relay.stats.protocol_errors == 2 and relay.stats.clients_current == 0


async def test_expired_node_refused_and_connected_one_closed_at_expiry(relay_factory):
    """Finding 7: the relay admitted an expired node's key."""
    relay = await relay_factory()
    now = datetime.now(timezone.utc)
    expired, soon, later = new_key(), new_key(), new_key()
    relay.store.add_node(public(expired), expiry=now - timedelta(minutes=1))
    relay.store.add_node(public(soon), expiry=now + timedelta(seconds=1.5))
    node = relay.store.add_node(public(later), expiry=now + timedelta(days=1))

    with pytest.raises(DerpHandshakeError):
        await connect_derp("127.0.0.1", relay.port, expired)
    assert relay.stats.clients_rejected == 1 and relay.stats.clients_expired == 1

    async with open_derp_client("127.0.0.1", relay.port, soon) as cs, \
            open_derp_client("127.0.0.1", relay.port, later) as cl:
        # admitted while valid, closed by the relay when the expiry comes
        with trio.fail_after(30), pytest.raises(EOFError):
            while True:
                await cs.recv()
        assert relay.stats.clients_expired == 2
        # an expiry moved into the past by an admin (a node.updated change) closes it too
        node.expiry = datetime.now(timezone.utc) - timedelta(seconds=1)
        await relay.store.emit("node.updated", {"id": node.id, "fields": ["expiry"]})
        with trio.fail_after(30), pytest.raises(EOFError):
            while True:
                await cl.recv()
        assert relay.stats.clients_expired == 3
    with pytest.raises(DerpHandshakeError):
        await connect_derp("127.0.0.1", relay.port, later)


async def test_changes_missed_while_resubscribing_are_caught_up(relay_factory):
    """A node that expired or was deleted while the relay's change subscription was down (the
    log trimmed, the database gone) is found when the relay subscribes again."""
    relay = await relay_factory()
    gone, expiring = new_key(), new_key()
    relay.store.add_node(public(gone))
    node = relay.store.add_node(public(expiring), expiry=datetime.now(timezone.utc) + timedelta(days=1))
    async with open_derp_client("127.0.0.1", relay.port, gone) as cg, \
            open_derp_client("127.0.0.1", relay.port, expiring) as ce:
        await wait_for(lambda: len(relay.store._subs) == 1, "subscribed")
        # changed without a change event reaching the relay
        del relay.store.nodes[public(gone)]
        node.expiry = datetime.now(timezone.utc) - timedelta(seconds=1)
        await relay.store.end_subscriptions()
        for c in (cg, ce):
            with trio.fail_after(30), pytest.raises(EOFError):
                while True:
                    await c.recv()
    assert relay.stats.clients_expired == 1


async def test_a_flood_of_bad_handshakes_logs_a_bounded_number_of_lines(relay_factory, caplog):
    """Finding 7 (log flooding): refusals an unauthenticated peer can trigger are rate-limited."""
    relay = await relay_factory(verify=False)
    caplog.set_level(logging.DEBUG)
    bad = d.encode_frame(d.FrameType.CLIENT_INFO, bytes(100))  # a box that does not open
    n = 40

    async def one() -> None:
        stream = await tls_connect(relay.port)
        try:
            await stream.send_all(UPGRADE + bad)
            with trio.fail_after(10):
                await read_until_closed(stream)
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    await wait_for(lambda: relay.stats.protocol_errors == n, "all refused")
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and "refused" in r.getMessage()]
    assert 1 <= len(lines) <= 11, len(lines)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
