"""Store rules that keep clients from using keys twice or filling the disk, on both stores:
single-use keys used once whatever the path, size caps on client data, pending registrations
bounded in bytes and per source, and the change log trimmed below its live subscribers."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import trio

from storehelpers import T0, key, node, registration
from trioscale.shared.model import utcnow
from trioscale.shared.store import base
from trioscale.shared.store.base import ChangesTrimmed, Conflict, StoreFull, TooLarge


# -- single-use keys -----------------------------------------------------------------------------


async def test_single_use_key_is_used_by_a_re_registration(store):
    u = await store.create_user("alice")
    k = await store.create_preauth_key(u.id, "once", b"h")
    n = await store.create_node(node(u.id))  # registered some other way (CLI)
    await store.update_node(n.id, node_key=key("new", 1), auth_key_id=k.id)
    assert (await store.get_preauth_key(k.id)).used is True
    with pytest.raises(Conflict, match="already been used"):
        await store.update_node(n.id, node_key=key("new", 2), auth_key_id=k.id)
    with pytest.raises(Conflict, match="already been used"):
        await store.create_node(node(u.id, auth_key_id=k.id))
    assert (await store.get_node(n.id)).node_key == key("new", 1)  # the refused update left it alone
    # naming the key again with nothing else changed is still a registration: refused
    with pytest.raises(Conflict, match="already been used"):
        await store.update_node(n.id, auth_key_id=k.id)
    many = await store.create_preauth_key(u.id, "many", b"h", reusable=True)
    for i in range(3):
        await store.update_node(n.id, node_key=key("again", i), auth_key_id=many.id)
    assert (await store.get_preauth_key(many.id)).used is False


async def test_two_concurrent_registrations_with_one_single_use_key(store):
    u = await store.create_user("alice")
    k = await store.create_preauth_key(u.id, "once", b"h")
    known = await store.create_node(node(u.id))
    outcomes: list[str] = []

    async def create():
        try:
            await store.create_node(node(u.id, auth_key_id=k.id))
            outcomes.append("won")
        except Conflict:
            outcomes.append("refused")

    async def reregister():
        try:
            await store.update_node(known.id, node_key=key("re", 1), auth_key_id=k.id)
            outcomes.append("won")
        except Conflict:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(create)
            nursery.start_soon(reregister)
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    assert len([n for n in await store.list_nodes() if n.auth_key_id == k.id]) == 1


# -- size caps -----------------------------------------------------------------------------------


async def test_client_blobs_over_their_caps_are_refused(store):
    u = await store.create_user("alice")
    big = {"Hostname": "h", "Junk": "x" * (base.MAX_HOSTINFO_BYTES + 1)}
    with pytest.raises(TooLarge, match="Hostinfo is .* bytes; the limit is 65536"):
        await store.create_node(node(u.id, hostinfo=big))
    n = await store.create_node(node(u.id))
    seq = await store.latest_seq()
    with pytest.raises(TooLarge):
        await store.update_node(n.id, hostinfo=big)
    with pytest.raises(TooLarge, match="endpoints"):
        await store.update_node(n.id, endpoints=[f"192.0.2.1:{i}" for i in range(base.MAX_ENDPOINTS + 1)])
    with pytest.raises(TooLarge, match="endpoint is longer"):
        await store.update_node(n.id, endpoints=["1" * 100])
    with pytest.raises(TooLarge, match="hostname"):
        await store.update_node(n.id, hostname="h" * 300)
    with pytest.raises(TooLarge):
        await store.put_pending_registration(registration("big", hostinfo=big))
    assert await store.get_pending_registration("big") is None
    assert await store.get_node(n.id) == n
    assert await store.latest_seq() == seq


# -- pending registrations -----------------------------------------------------------------------


async def test_pending_registrations_bounded_in_bytes(store, monkeypatch):
    monkeypatch.setattr(base, "MAX_PENDING_BYTES", 10_000)
    blob = {"Hostname": "h", "Pad": "x" * 4000}
    await store.put_pending_registration(registration("a", hostinfo=blob, source="s1"))
    await store.put_pending_registration(registration("b", hostinfo=blob, source="s2"))
    with pytest.raises(StoreFull):
        await store.put_pending_registration(registration("c", hostinfo=blob, source="s3"))
    await store.put_pending_registration(registration("d", source="s3"))  # a small one still fits
    assert [await store.get_pending_registration(i) is not None for i in "abcd"] == [True, True, False, True]


async def test_a_source_over_its_share_loses_its_own_oldest(store, monkeypatch):
    monkeypatch.setattr(base, "MAX_PENDING_PER_SOURCE", 2)
    monkeypatch.setattr(base, "MAX_PENDING_REGISTRATIONS", 4)
    await store.put_pending_registration(registration("real", T0, source="192.0.2.7"))
    for i in range(20):  # a flood from one address
        await store.put_pending_registration(registration(f"f{i}", T0 + timedelta(seconds=i), source="198.51.100.1"))
    assert await store.get_pending_registration("real") is not None
    assert [await store.get_pending_registration(f"f{i}") is not None for i in (17, 18, 19)] == [False, True, True]


async def test_one_pending_registration_per_machine(store):
    r1 = registration("one", T0)
    await store.put_pending_registration(r1)
    r2 = dataclasses.replace(registration("two", T0 + timedelta(seconds=1)), machine_key=r1.machine_key)
    await store.put_pending_registration(r2)
    assert await store.get_pending_registration("one") is None
    assert await store.get_pending_registration("two") is not None


# -- change-log trimming -------------------------------------------------------------------------


async def _users(store, n, prefix="u"):
    for i in range(n):
        await store.create_user(f"{prefix}{i}")


async def test_trim_keeps_what_live_subscribers_have_not_read(store):
    await _users(store, 5)
    latest = await store.latest_seq()
    async with store.subscribe(since=2) as changes:
        positions = await store.list_positions(utcnow())
        assert [seq for _, seq, _ in positions] == [2]
        assert await store.trim_changes(utcnow()) == 2  # seqs 1 and 2: read by everyone
        assert [c.seq for c in await store.changes_since(0)] == list(range(3, latest + 1))
        got = [(await changes.__anext__()).seq for _ in range(latest - 2)]
        assert got == list(range(3, latest + 1))
    # the subscriber is gone: everything but the newest entry may go; seqs never go back
    assert await store.list_positions(utcnow()) == []
    assert await store.trim_changes(utcnow()) == latest - 3
    assert [c.seq for c in await store.changes_since(0)] == [latest]
    assert await store.latest_seq() == latest
    u = await store.create_user("after")
    assert (await store.changes_since(latest))[0].seq == latest + 1
    assert (await store.get_user(u.id)).name == "after"


async def test_subscriber_behind_a_trim_gets_a_clear_signal(store):
    await _users(store, 3)
    store.subscriber_lease = 0.0  # positions lapse at once: as if the subscriber was down
    async with store.subscribe(since=1) as changes:
        assert await store.trim_changes(utcnow() + timedelta(seconds=1)) == 2
        with pytest.raises(ChangesTrimmed, match="trimmed past seq 1"):
            await changes.__anext__()
    latest = await store.latest_seq()
    store.subscriber_lease = 300.0
    async with store.subscribe() as changes:  # reload, then follow on from the newest seq
        await store.create_user("next")
        assert (await changes.__anext__()).seq == latest + 1


async def test_positions_expire_and_renew(store):
    now = utcnow()
    await store.record_position("a", 5, now + timedelta(seconds=10))
    await store.record_position("b", 7, now - timedelta(seconds=1))
    assert [(i, s) for i, s, _ in await store.list_positions(now)] == [("a", 5)]
    await store.record_position("a", 9, now + timedelta(seconds=10))
    assert [(i, s) for i, s, _ in await store.list_positions(now)] == [("a", 9)]
    await store.drop_position("a")
    await store.drop_position("a")
    assert await store.list_positions(now) == []
    assert await store.trim_changes(now) == 0  # an empty log


async def test_trim_is_bounded_per_call(store):
    await _users(store, 8)
    assert await store.trim_changes(utcnow(), max_rows=3) == 3
    assert await store.trim_changes(utcnow(), max_rows=3) == 3
    assert await store.trim_changes(utcnow(), max_rows=3) == 1
    assert len(await store.changes_since(0)) == 1


async def test_a_nul_character_from_a_client_is_refused_on_both_stores(store):
    """PostgreSQL's text and jsonb cannot hold NUL: refuse it everywhere, never a driver error."""
    u = await store.create_user("alice")
    n = await store.create_node(node(u.id))
    for fields in ({"hostinfo": {"Hostname": "a\x00b"}}, {"hostname": "a\x00b"}, {"endpoints": ("1.2.3.4:5\x00",)}):
        with pytest.raises(base.BadValue):
            await store.update_node(n.id, **fields)
    with pytest.raises(TooLarge):  # what the handlers catch: a 400 with the reason
        await store.create_node(node(u.id, hostinfo={"OS": "\x00"}))
    assert (await store.get_node(n.id)).hostname == n.hostname
