"""Region mesh: relays sharing a mesh key find each other in the store, link up, and forward."""

from __future__ import annotations

import os

import trio

from derphelpers import FakeStore, make_setup, new_key, public, start_relay
from trioscale.services.derp.mesh import MeshLink
from trioscale.shared.testing.derpclient import open_derp_client
from trioscale.shared.proto import derp as d

MESH_KEY = os.urandom(32).hex()


async def _wait(pred, timeout: float = 5.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for: {what}")


async def _two_relays(nursery, tmp_path, store=None, **kw):
    store = store or FakeStore()
    relays = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        setup = make_setup(tmp_path / name, verify=False, store=store, mesh_key=MESH_KEY)
        relays.append(await start_relay(nursery, tmp_path / name, setup=setup, heartbeat_interval=0.5, **kw))
    return store, relays


async def test_two_relays_mesh_and_forward(nursery, tmp_path):
    store, (ra, rb) = await _two_relays(nursery, tmp_path)
    await _wait(lambda: ra.svc.mesh.links_up == 1 and rb.svc.mesh.links_up == 1)
    assert ra.stats.mesh_clients == 1 and rb.stats.mesh_clients == 1  # each accepted the other's link
    a, b = new_key(), new_key()
    async with open_derp_client("127.0.0.1", ra.port, a) as ca, open_derp_client("127.0.0.1", rb.port, b) as cb:
        # each relay learns the other's client from PeerPresent on its link
        await _wait(lambda: isinstance(ra.svc.server.where(public(b)), MeshLink))
        await _wait(lambda: isinstance(rb.svc.server.where(public(a)), MeshLink))
        for i in range(20):
            await ca.send(public(b), b"a->b %d" % i)
        for i in range(20):
            with trio.fail_after(5):
                ev = await cb.recv_packet()
            assert ev.src == public(a) and ev.packet == b"a->b %d" % i
        await cb.send(public(a), b"b->a")
        with trio.fail_after(5):
            ev = await ca.recv_packet()
        assert (ev.src, ev.packet) == (public(b), b"b->a")
        assert ra.stats.packets_forwarded_out == 20 and rb.stats.packets_forwarded_in == 20
        assert rb.stats.packets_forwarded_out == 1 and ra.stats.packets_forwarded_in == 1
        assert ra.stats.mesh_packets_sent == 20
        assert ra.svc.stats_dict()["mesh_links_up"] == 1

        # relay B goes away: A drops the link and its keys; a hears that b is gone
        rb.stop()
        await _wait(lambda: not ra.svc.mesh.links, what="mesh peer removed")
        assert ra.svc.server.where(public(b)) is None
        assert ra.stats.mesh_links_up == 0
        with trio.fail_after(5):
            while True:
                ev = await ca.recv()
                if type(ev) is d.PeerGone and ev.key == public(b):
                    break


async def test_disconnect_on_peer_relay_sends_peer_gone(nursery, tmp_path):
    _, (ra, rb) = await _two_relays(nursery, tmp_path)
    await _wait(lambda: ra.svc.mesh.links_up == 1 and rb.svc.mesh.links_up == 1)
    a, b = new_key(), new_key()
    async with open_derp_client("127.0.0.1", ra.port, a) as ca:
        async with open_derp_client("127.0.0.1", rb.port, b) as cb:
            await _wait(lambda: isinstance(ra.svc.server.where(public(b)), MeshLink))
            await cb.send(public(a), b"hi")
            with trio.fail_after(5):
                await ca.recv_packet()
        # b disconnected from B: B's watcher link tells A; A tells a (who received from b)
        with trio.fail_after(5):
            while True:
                ev = await ca.recv()
                if type(ev) is d.PeerGone and ev.key == public(b):
                    break
        assert ra.svc.server.where(public(b)) is None


async def test_local_connection_wins_over_mesh(nursery, tmp_path):
    _, (ra, rb) = await _two_relays(nursery, tmp_path)
    await _wait(lambda: ra.svc.mesh.links_up == 1 and rb.svc.mesh.links_up == 1)
    a, b = new_key(), new_key()
    async with open_derp_client("127.0.0.1", rb.port, b):
        await _wait(lambda: isinstance(ra.svc.server.where(public(b)), MeshLink))
        async with open_derp_client("127.0.0.1", ra.port, b) as cb_local, \
                open_derp_client("127.0.0.1", ra.port, a) as ca:
            await _wait(lambda: ra.svc.server.where(public(b)) is not None
                        and not isinstance(ra.svc.server.where(public(b)), MeshLink))
            await ca.send(public(b), b"local")
            with trio.fail_after(5):
                ev = await cb_local.recv_packet()
            assert ev.packet == b"local"
            assert ra.stats.packets_forwarded_out == 0


async def test_wrong_mesh_key_is_not_a_mesh_peer(nursery, tmp_path):
    store = FakeStore()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ra = await start_relay(nursery, tmp_path / "a", heartbeat_interval=0.5,
                           setup=make_setup(tmp_path / "a", verify=True, store=store, mesh_key=MESH_KEY))
    rb = await start_relay(nursery, tmp_path / "b", heartbeat_interval=0.5,
                           setup=make_setup(tmp_path / "b", verify=True, store=store, mesh_key=os.urandom(32).hex()))
    # each refuses the other's link: its mesh key is wrong and its key is no known node (a link
    # counts as up only once the handshake is through, so a refused one never was)
    await _wait(lambda: ra.stats.clients_rejected >= 1 and rb.stats.clients_rejected >= 1, what="both links refused")
    assert ra.svc.mesh.links_up == 0 and rb.svc.mesh.links_up == 0
    assert ra.stats.clients_rejected >= 1 and rb.stats.clients_rejected >= 1
    assert ra.stats.mesh_clients == 0 and rb.stats.mesh_clients == 0


async def test_relays_of_other_regions_and_stale_rows_are_ignored(nursery, tmp_path):
    from dataclasses import replace
    from datetime import timedelta

    from trioscale.shared.model import utcnow

    store, (ra, rb) = await _two_relays(nursery, tmp_path)
    await _wait(lambda: ra.svc.mesh.links_up == 1)
    mesh = ra.svc.mesh
    other_region = replace(rb.svc.relay, region_id=7, name="elsewhere")
    stale = replace(rb.svc.relay, name="dead", heartbeat_at=utcnow() - timedelta(hours=1))
    peers = mesh._peers_of([ra.svc.relay, rb.svc.relay, other_region, stale])
    assert list(peers) == [(rb.svc.relay.region_id, rb.svc.relay.name)]


async def test_reuse_port_processes_share_a_port_and_mesh(nursery, tmp_path):
    """Two relays bound to one port (SO_REUSEPORT) find each other through it."""
    store = FakeStore()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ra = await start_relay(nursery, tmp_path / "a", reuse_port=True, heartbeat_interval=0.5,
                           setup=make_setup(tmp_path / "a", verify=False, store=store, mesh_key=MESH_KEY))
    setup_b = make_setup(tmp_path / "b", verify=False, store=store, mesh_key=MESH_KEY,
                         listen_addr=f"127.0.0.1:{ra.port}")
    rb = await start_relay(nursery, tmp_path / "b", reuse_port=True, heartbeat_interval=0.5, setup=setup_b)
    assert rb.port == ra.port
    assert ra.svc.relay.name != rb.svc.relay.name
    await _wait(lambda: ra.svc.mesh.links_up == 1 and rb.svc.mesh.links_up == 1, timeout=10)
    assert ra.svc.mesh.links[next(iter(ra.svc.mesh.links))].server_key == rb.svc.server.public_key
    # clients land on either process; every pair still reaches each other
    keys = [new_key() for _ in range(6)]
    async with trio.open_nursery() as n:
        clients = []
        for k in keys:
            clients.append(await n.start(_client_task, ra.port, k))
        # six clients, two mesh links (a link's last dial that reached its own process may still
        # be counted there for a moment after the dialer closed it)
        await _wait(lambda: ra.stats.clients_current + rb.stats.clients_current == 6 + 2,
                    what="six clients and two mesh links")
        for i in range(6):
            j = (i + 1) % 6
            await _wait(lambda: ra.svc.server.where(public(keys[j])) is not None
                        and rb.svc.server.where(public(keys[j])) is not None)
            await clients[i].send(public(keys[j]), b"%d->%d" % (i, j))
            with trio.fail_after(5):
                ev = await clients[j].recv_packet()
            assert ev.src == public(keys[i])
        n.cancel_scope.cancel()


async def _client_task(port, key, task_status=trio.TASK_STATUS_IGNORED):
    async with open_derp_client("127.0.0.1", port, key) as c:
        task_status.started(c)
        await trio.sleep_forever()


async def test_mesh_forwarding_under_load_loses_nothing_when_queues_have_room(nursery, tmp_path, monkeypatch):
    """A sender far faster than the mesh link: its reader waits for room on the link instead of
    dropping, so every packet arrives, in order, with nothing counted as dropped anywhere."""
    from trioscale.shared.net.derpdial import DerpClient

    send_raw = DerpClient.send_raw

    async def slow_send_raw(self, data):  # a link write takes many turns of the scheduler
        for _ in range(50):
            await trio.lowlevel.checkpoint()
        await send_raw(self, data)

    monkeypatch.setattr(DerpClient, "send_raw", slow_send_raw)
    _, (ra, rb) = await _two_relays(nursery, tmp_path, queue_depth=4096)
    await _wait(lambda: ra.svc.mesh.links_up == 1 and rb.svc.mesh.links_up == 1)
    a, b = new_key(), new_key()
    n = 3000
    async with open_derp_client("127.0.0.1", ra.port, a) as ca, open_derp_client("127.0.0.1", rb.port, b) as cb:
        await _wait(lambda: isinstance(ra.svc.server.where(public(b)), MeshLink))
        link = ra.svc.server.where(public(b))
        link.queue_depth = 8  # far less than one read of the sender carries
        frames = b"".join(ca.conn.send(d.SendPacket(public(b), b"%06d" % i + bytes(1000))) for i in range(n))
        got = []

        async def receive() -> None:
            while len(got) < n:
                ev = await cb.recv_packet()
                got.append(ev.packet[:6])

        with trio.fail_after(30):
            async with trio.open_nursery() as inner:
                inner.start_soon(receive)
                await send_raw(ca, frames)  # one write: the relay reads it in a few big chunks
    assert got == [b"%06d" % i for i in range(n)]
    assert ra.stats.packets_dropped == 0 and rb.stats.packets_dropped == 0
    assert ra.stats.mesh_packets_sent == n and rb.stats.packets_forwarded_in == n


async def test_a_stuck_mesh_link_drops_instead_of_holding_the_sender(nursery, tmp_path):
    """A link whose writer takes nothing for `room_wait` is marked stuck: the sender goes on (its
    packets to that link drop, oldest first) and still reaches local clients."""
    store, (ra, rb) = await _two_relays(nursery, tmp_path)
    await _wait(lambda: ra.svc.mesh.links_up == 1 and rb.svc.mesh.links_up == 1)
    a, b, c = new_key(), new_key(), new_key()
    async with open_derp_client("127.0.0.1", ra.port, a) as ca, open_derp_client("127.0.0.1", rb.port, b), \
            open_derp_client("127.0.0.1", ra.port, c) as cc:
        await _wait(lambda: isinstance(ra.svc.server.where(public(b)), MeshLink))
        link = ra.svc.server.where(public(b))
        link.queue_depth = 4
        link.room_wait = 0.2
        link._parked = None  # the writer never wakes again: a link that moves nothing
        for i in range(20):
            await ca.send(public(b), b"to b %d" % i)
        await ca.send(public(c), b"to c")
        with trio.fail_after(10):
            ev = await cc.recv_packet()
        assert (ev.src, ev.packet) == (public(a), b"to c")
        assert link.stuck_at == link.nwrites
        assert ra.stats.drop_queue_head >= 20 - link.queue_depth


def test_a_shared_port_that_leads_to_another_relays_certificate_is_the_wrong_process_not_a_failure():
    """Relays sharing a port (SO_REUSEPORT) each pin a certificate of their own. A link whose dial
    landed on itself, or on another relay there, retries at once; only a certificate no relay
    there has is a failure (backed off). With every other dial landing on the wrong process,
    backing off made a link take more than 10 s now and then."""
    import hashlib
    import ssl
    from dataclasses import dataclass
    from types import SimpleNamespace

    import pytest

    from trioscale.services.derp.mesh import Mesh, _WrongPeer

    @dataclass
    class Row:
        name: str
        cert_name: str
        host: str = "127.0.0.1"
        ipv4: str = "127.0.0.1"
        ipv6: str = ""
        derp_port: int = 443
        insecure_for_tests: bool = False

    def pin(der: bytes) -> str:
        return "sha256-raw:" + hashlib.sha256(der).hexdigest()

    def reached(der: bytes):
        return SimpleNamespace(_tls=SimpleNamespace(getpeercert=lambda binary_form: der))

    own, other, elsewhere = Row("a", pin(b"a")), Row("b", pin(b"b")), Row("c", pin(b"c"), derp_port=444)
    mesh = Mesh(SimpleNamespace(), b"k" * 32, own=own, store=None)
    mesh.check_pin(other, reached(b"b"))  # the relay it wanted
    with pytest.raises(_WrongPeer):
        mesh.check_pin(other, reached(b"a"))  # itself
    with pytest.raises(ssl.SSLError, match="does not match"):
        mesh.check_pin(other, reached(b"c"))  # not a relay of that address
    with pytest.raises(ssl.SSLError, match="does not match"):
        mesh.check_pin(elsewhere, reached(b"a"))  # its own certificate, but not its address
