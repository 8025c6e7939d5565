"""Presence of map sessions per coordinator replica (both stores): leases, transitions only."""

from __future__ import annotations

from datetime import timedelta

from storehelpers import T0, node
from trioscale.shared.model import Presence


async def changes_after(store, seq):
    return [(c.kind, c.data) for c in await store.changes_since(seq)]


async def two_nodes(store):
    u = await store.create_user("alice")
    a = await store.create_node(node(u.id))
    b = await store.create_node(node(u.id))
    return a, b


LEASE = T0 + timedelta(seconds=30)


async def test_online_offline_only_on_transitions(store):
    a, b = await two_nodes(store)
    seq = await store.latest_seq()
    await store.update_presence("rA", add=[a.id], lease_expires=LEASE, now=T0)
    assert await changes_after(store, seq) == [("presence.online", {"node_id": a.id, "replica_id": "rA"})]
    assert await store.list_presence() == [Presence(a.id, "rA", LEASE)]

    # a second replica serving the same node: no transition, no change
    seq = await store.latest_seq()
    await store.update_presence("rB", add=[a.id], lease_expires=LEASE, now=T0)
    await store.update_presence("rA", add=[a.id], lease_expires=LEASE + timedelta(seconds=5), now=T0)
    assert await store.latest_seq() == seq
    assert await store.list_presence() == [
        Presence(a.id, "rA", LEASE + timedelta(seconds=5)),
        Presence(a.id, "rB", LEASE),
    ]

    # the node stays online while any replica holds it
    await store.update_presence("rA", remove=[a.id], lease_expires=LEASE, now=T0)
    assert await store.latest_seq() == seq
    later = T0 + timedelta(seconds=3)
    await store.update_presence("rB", remove=[a.id, b.id], lease_expires=LEASE, now=later)
    assert await changes_after(store, seq) == [
        (
            "presence.offline",
            {"node_id": a.id, "replica_id": "rB", "last_seen": later.isoformat(timespec="microseconds"),
             "reason": "closed"},
        )
    ]
    assert await store.list_presence() == []
    assert (await store.get_node(a.id)).last_seen == later


async def test_renew_is_a_heartbeat(store):
    a, b = await two_nodes(store)
    await store.update_presence("rA", add=[a.id], lease_expires=LEASE, now=T0)
    seq = await store.latest_seq()
    lease2 = LEASE + timedelta(seconds=10)
    await store.renew_presence("rA", [a.id], lease_expires=lease2, now=T0)
    assert await store.latest_seq() == seq  # renewing records nothing
    assert await store.list_presence() == [Presence(a.id, "rA", lease2)]

    # renew with a different set: inserts the missing, deletes the rest, transitions recorded
    await store.renew_presence("rA", [b.id], lease_expires=lease2, now=T0)
    kinds = [(k, d["node_id"]) for k, d in await changes_after(store, seq)]
    assert kinds == [("presence.online", b.id), ("presence.offline", a.id)]
    assert await store.list_presence() == [Presence(b.id, "rA", lease2)]

    # an empty set (clean shutdown) removes everything of that replica only
    await store.update_presence("rB", add=[a.id], lease_expires=lease2, now=T0)
    await store.renew_presence("rA", [], lease_expires=lease2, now=T0)
    assert await store.list_presence() == [Presence(a.id, "rB", lease2)]


async def test_reap_expired_leases(store):
    a, b = await two_nodes(store)
    await store.update_presence("dead", add=[a.id, b.id], lease_expires=LEASE, now=T0)
    await store.update_presence("live", add=[b.id], lease_expires=LEASE + timedelta(minutes=5), now=T0)
    seq = await store.latest_seq()
    assert await store.reap_presence(LEASE - timedelta(seconds=1)) == []  # not yet expired
    assert await store.latest_seq() == seq
    now = LEASE + timedelta(seconds=1)
    assert await store.reap_presence(now) == [a.id]  # b is still held by "live"
    assert await changes_after(store, seq) == [
        (
            "presence.offline",
            {"node_id": a.id, "replica_id": "dead", "last_seen": now.isoformat(timespec="microseconds"),
             "reason": "expired"},
        )
    ]
    assert await store.list_presence() == [Presence(b.id, "live", LEASE + timedelta(minutes=5))]
    assert await store.reap_presence(now) == []


async def test_deleting_a_node_drops_its_presence(store):
    a, b = await two_nodes(store)
    await store.update_presence("rA", add=[a.id, b.id], lease_expires=LEASE, now=T0)
    seq = await store.latest_seq()
    await store.delete_node(a.id)
    assert [k for k, _ in await changes_after(store, seq)] == ["node.deleted"]
    assert await store.list_presence() == [Presence(b.id, "rA", LEASE)]
    # a replica dropping a session of a node that is gone records nothing
    await store.update_presence("rA", remove=[a.id], lease_expires=LEASE, now=T0)
    assert [k for k, _ in await changes_after(store, seq)] == ["node.deleted"]


async def test_a_batch_of_adds_records_online_only_for_nodes_nobody_held(store, monkeypatch):
    u = await store.create_user("alice")
    nodes = [await store.create_node(node(u.id)) for _ in range(5)]
    ids = [n.id for n in nodes]
    await store.update_presence("rA", add=[ids[0]], lease_expires=LEASE, now=T0)
    await store.update_presence("rB", add=[ids[1]], lease_expires=LEASE, now=T0)
    seq = await store.latest_seq()
    later = LEASE + timedelta(seconds=5)
    # held here already (renewed), held by another replica (no transition), and three new ones
    # across statement chunks, given out of order and twice
    monkeypatch.setattr("trioscale.shared.store.ops.presence._CHUNK", 2)
    await store.update_presence("rA", add=[ids[4], ids[0], ids[1], ids[2], ids[3], ids[2]], lease_expires=later, now=T0)
    assert await changes_after(store, seq) == [("presence.online", {"node_id": i, "replica_id": "rA"})
                                               for i in sorted(ids[2:])]
    assert await store.list_presence() == sorted(
        [Presence(i, "rA", later) for i in ids] + [Presence(ids[1], "rB", LEASE)], key=lambda p: (p.node_id, p.replica_id))
