"""The Store contract, checked on both implementations (fixture `store`: sqlite and postgres)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import msgpack
import pytest

from storehelpers import T0, key, node, registration, relay
from trioscale.shared.model import CHANGE_KINDS, Change, SSHCheck
from trioscale.shared.store import base
from trioscale.shared.store.base import Conflict, NotFound, carried_node


async def changes_after(store, seq):
    """(kind, data) of the changes after `seq`, without the node a node change carries (its own
    test below: test_node_changes_carry_the_node)."""
    return [(c.kind, {k: v for k, v in c.data.items() if k != "node"} if c.kind.startswith("node.") else c.data)
            for c in await store.changes_since(seq)]


# -- users ---------------------------------------------------------------------------------------


async def test_users_crud(store):
    alice = await store.create_user("alice", display_name="Alice A", email="a@example.com")
    bob = await store.create_user("bob")
    assert alice.id != bob.id
    assert (alice.name, alice.display_name, alice.email) == ("alice", "Alice A", "a@example.com")
    assert alice.created_at.tzinfo is not None and alice.created_at.utcoffset() == timedelta(0)
    assert await store.get_user(alice.id) == alice
    assert await store.get_user_by_name("bob") == bob
    assert await store.get_user(9999) is None
    assert await store.get_user_by_name("carol") is None
    assert await store.list_users() == [alice, bob]

    seq = await store.latest_seq()
    renamed = await store.rename_user(alice.id, "alicia")
    assert renamed == dataclasses.replace(alice, name="alicia")
    assert await store.get_user_by_name("alice") is None
    assert await store.get_user_by_name("alicia") == renamed
    assert await changes_after(store, seq) == [
        ("user.updated", {"id": alice.id, "name": "alicia", "old_name": "alice", "fields": ["name"]})
    ]

    seq = await store.latest_seq()
    assert await store.rename_user(alice.id, "alicia") == renamed  # no-op
    assert await store.latest_seq() == seq

    await store.delete_user(bob.id)
    assert await store.get_user(bob.id) is None
    assert await changes_after(store, seq) == [("user.deleted", {"id": bob.id, "name": "bob"})]


async def test_user_login_identity(store):
    """A login provider's identity of a user (kept from Headscale's OIDC users): one user each."""
    bob = await store.create_user("bob", email="bob@example.com", provider="oidc",
                                  provider_id="https://idp.example.com/bob", profile_pic_url="https://p.example/b.png")
    assert (bob.provider, bob.provider_id, bob.profile_pic_url) == ("oidc", "https://idp.example.com/bob",
                                                                    "https://p.example/b.png")
    assert await store.get_user(bob.id) == bob
    local = await store.create_user("carol")
    assert (local.provider, local.provider_id, local.profile_pic_url) == ("", "", "")
    await store.create_user("dave")  # many users without an identity
    seq = await store.latest_seq()
    with pytest.raises(Conflict, match='^another user has the login identity "https://idp.example.com/bob"$'):
        await store.create_user("bob2", provider="oidc", provider_id="https://idp.example.com/bob")
    assert await store.latest_seq() == seq


async def test_user_errors(store):
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    seq = await store.latest_seq()
    with pytest.raises(Conflict, match='^user "alice" already exists$'):
        await store.create_user("alice")
    with pytest.raises(Conflict, match='^user "bob" already exists$'):
        await store.rename_user(alice.id, "bob")
    with pytest.raises(NotFound, match="^user 999 not found$"):
        await store.rename_user(999, "x")
    with pytest.raises(NotFound, match="^user 999 not found$"):
        await store.delete_user(999)
    await store.create_node(node(alice.id))
    await store.create_node(node(alice.id))
    with pytest.raises(Conflict, match='^user "alice" still owns 2 nodes$'):
        await store.delete_user(alice.id)
    assert await store.latest_seq() == seq + 2  # only the two node.created
    assert await store.list_users() == [alice, bob]


async def test_delete_user_removes_keys_and_shares(store):
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    n = await store.create_node(node(alice.id))
    k1 = await store.create_preauth_key(bob.id, "k1", b"h1")
    k2 = await store.create_preauth_key(bob.id, "k2", b"h2")
    ka = await store.create_preauth_key(alice.id, "ka", b"ha")
    await store.add_share(n.id, bob.id)
    seq = await store.latest_seq()
    await store.delete_user(bob.id)
    assert await store.list_preauth_keys() == [ka]
    assert await store.list_shares() == []
    assert await changes_after(store, seq) == [
        ("share.deleted", {"node_id": n.id, "user_id": bob.id}),
        ("preauthkey.deleted", {"id": k1.id, "user_id": bob.id, "prefix": "k1"}),
        ("preauthkey.deleted", {"id": k2.id, "user_id": bob.id, "prefix": "k2"}),
        ("user.deleted", {"id": bob.id, "name": "bob"}),
    ]


# -- nodes ---------------------------------------------------------------------------------------


async def test_nodes_crud(store):
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    seq = await store.latest_seq()
    want = node(alice.id, id=12345, tags=("tag:server",), approved_routes=("10.0.0.0/24",), ephemeral=True,
                last_seen=T0)
    n1 = await store.create_node(want)
    assert n1.id != 12345 and n1.id > 0
    assert n1 == dataclasses.replace(want, id=n1.id)
    n2 = await store.create_node(node(bob.id, disco_key=None, ipv6=None, expiry=None))
    assert n2.disco_key is None and n2.ipv6 is None and n2.expiry is None
    assert await store.get_node(n1.id) == n1
    assert await store.get_node_by_machine_key(n1.machine_key) == n1
    assert await store.get_node_by_node_key(n2.node_key) == n2
    assert await store.get_node(999) is None
    assert await store.get_node_by_machine_key(key("nope", 1)) is None
    assert await store.get_node_by_node_key(key("nope", 1)) is None
    assert await store.list_nodes() == [n1, n2]
    assert await store.list_nodes(alice.id) == [n1]
    assert await store.list_nodes(user_id=bob.id) == [n2]
    assert await store.node_holdings() == ({n1.ipv4, n1.ipv6, n2.ipv4}, {n1.given_name, n2.given_name})
    assert await store.nodes_holding(n1.ipv4, None, "nobody") == [n1]
    assert await store.nodes_holding("100.64.9.9", n1.ipv6, n2.given_name) == [n1, n2]
    assert await store.nodes_holding("100.64.9.9", None, "nobody") == []
    assert await changes_after(store, seq) == [
        ("node.created", {"id": n1.id, "user_id": alice.id, "node_key": n1.node_key.hex()}),
        ("node.created", {"id": n2.id, "user_id": bob.id, "node_key": n2.node_key.hex()}),
    ]


async def test_node_unique_conflicts(store):
    u = await store.create_user("alice")
    n = await store.create_node(node(u.id, 1))
    other = node(u.id, 2)
    seq = await store.latest_seq()
    cases = {
        "machine_key": (n.machine_key, "machine key"),
        "node_key": (n.node_key, "node key"),
        "given_name": (n.given_name, f'"{n.given_name}"'),
        "ipv4": (n.ipv4, n.ipv4),
        "ipv6": (n.ipv6, n.ipv6),
    }
    for field, (value, words) in cases.items():
        with pytest.raises(Conflict) as exc:
            await store.create_node(dataclasses.replace(other, **{field: value}))
        assert words in str(exc.value)
    with pytest.raises(NotFound, match="user 999 not found"):
        await store.create_node(other.replace(user_id=999))
    assert await store.latest_seq() == seq
    assert await store.list_nodes() == [n]
    # free values are fine, and a None address is never a conflict
    n2 = await store.create_node(other.replace(ipv4=None, ipv6=None))
    n3 = await store.create_node(node(u.id, 3, ipv4=None, ipv6=None))
    assert n2.ipv4 is None and n3.ipv4 is None


async def test_create_node_takes_the_first_spare_pair_no_node_holds(store):
    u = await store.create_user("alice")
    held = [await store.create_node(node(u.id, i)) for i in (1, 2)]
    a, b = held[0], held[1]
    # its own pair is taken (by a, in IPv4 only): the first spare with neither address held
    want = node(u.id, 3, ipv4=a.ipv4, ipv6="fd7a:115c:a1e0::30")
    spares = [(b.ipv4, "fd7a:115c:a1e0::31"), ("100.64.0.32", b.ipv6), ("100.64.0.33", "fd7a:115c:a1e0::33"),
              ("100.64.0.34", "fd7a:115c:a1e0::34")]
    got = await store.create_node(want, spares)
    assert (got.ipv4, got.ipv6) == ("100.64.0.33", "fd7a:115c:a1e0::33")
    assert (await store.get_node(got.id)).ipv4 == "100.64.0.33"
    changed = (await store.changes_since(await store.latest_seq() - 1))[-1]
    assert changed.kind == "node.created" and changed.data["node"]["ipv4"] == "100.64.0.33"
    # its own pair free: the spares are not used
    got = await store.create_node(node(u.id, 4), [("100.64.0.40", None)])
    assert got.ipv4 == node(u.id, 4).ipv4
    # every pair held: the conflict names its own address, and nothing is written
    seq = await store.latest_seq()
    with pytest.raises(Conflict, match=a.ipv4):
        await store.create_node(node(u.id, 5, ipv4=a.ipv4), [(b.ipv4, None)])
    assert await store.latest_seq() == seq
    # only the first MAX_SPARE_ADDRESSES spares count: the query stays bounded
    from trioscale.shared.store.ops.nodes import MAX_SPARE_ADDRESSES
    with pytest.raises(Conflict, match=a.ipv4):
        await store.create_node(node(u.id, 7, ipv4=a.ipv4, ipv6=None),
                                [(b.ipv4, None)] * MAX_SPARE_ADDRESSES + [("100.64.0.70", None)])
    # a spare never rescues another column's conflict
    with pytest.raises(Conflict, match="node key"):
        await store.create_node(node(u.id, 6, node_key=a.node_key, ipv4=a.ipv4), spares)


async def test_single_use_key_marked_used_on_create_node(store):
    u = await store.create_user("alice")
    once = await store.create_preauth_key(u.id, "once", b"h")
    many = await store.create_preauth_key(u.id, "many", b"h", reusable=True)
    seq = await store.latest_seq()
    n1 = await store.create_node(node(u.id, auth_key_id=once.id, register_method="authkey"))
    assert (await store.get_preauth_key(once.id)).used is True
    assert await changes_after(store, seq) == [
        ("node.created", {"id": n1.id, "user_id": u.id, "node_key": n1.node_key.hex()}),
        ("preauthkey.updated", {"id": once.id, "user_id": u.id, "fields": ["used"]}),
    ]
    with pytest.raises(Conflict, match="already been used"):
        await store.create_node(node(u.id, auth_key_id=once.id))
    await store.create_node(node(u.id, auth_key_id=many.id))
    await store.create_node(node(u.id, auth_key_id=many.id))
    assert (await store.get_preauth_key(many.id)).used is False
    with pytest.raises(NotFound):
        await store.create_node(node(u.id, auth_key_id=999))
    # a failed create leaves the key unused
    fresh = await store.create_preauth_key(u.id, "fresh", b"h")
    with pytest.raises(Conflict):
        await store.create_node(node(u.id, given_name=n1.given_name, auth_key_id=fresh.id))
    assert (await store.get_preauth_key(fresh.id)).used is False


async def test_node_changes_carry_the_node(store):
    """Each node change carries the node as that change committed it (what a replica applying the
    log in order uses instead of reading the node back), equal to what the store returned."""
    u = await store.create_user("carrier")
    seq = await store.latest_seq()
    created = await store.create_node(node(u.id, 1))
    first = await store.update_node(created.id, endpoints=["198.51.100.1:41641"], last_seen=T0,
                                    hostinfo={**created.hostinfo, "OS": "linux", "Services": [{"Port": 22}]})
    second = await store.update_node(created.id, tags=["tag:x"], expiry=T0 + timedelta(days=1), home_derp=3)
    carried = [(c.kind, carried_node(c)) for c in await store.changes_since(seq)]
    assert carried == [("node.created", created), ("node.updated", first), ("node.updated", second)]
    assert second == await store.get_node(created.id)
    # a change without one (an import's, or one written before changes carried nodes)
    assert carried_node(Change(seq=1, kind="node.updated", data={"id": created.id})) is None
    assert carried_node(Change(seq=1, kind="user.updated", data={"id": u.id, "node": {}})) is None


async def test_update_node(store):
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    n = await store.create_node(node(alice.id, 1))
    other = await store.create_node(node(alice.id, 2))
    seq = await store.latest_seq()
    seen = T0 + timedelta(hours=1)
    up = await store.update_node(
        n.id, endpoints=["198.51.100.1:41641", "[2001:db8::1]:41641"], last_seen=seen, home_derp=7,
        hostinfo={**n.hostinfo, "OS": "windows"}, tags=["tag:a", "tag:b"], user_id=bob.id,
    )
    assert up == n.replace(endpoints=("198.51.100.1:41641", "[2001:db8::1]:41641"), last_seen=seen, home_derp=7,
                           hostinfo={**n.hostinfo, "OS": "windows"}, tags=("tag:a", "tag:b"), user_id=bob.id)
    assert await store.get_node(n.id) == up
    assert await changes_after(store, seq) == [
        ("node.updated", {"id": n.id, "user_id": bob.id,
                          "fields": ["endpoints", "home_derp", "hostinfo", "last_seen", "tags", "user_id"]}),
    ]
    # no-op: same values (in any accepted spelling) write nothing
    seq = await store.latest_seq()
    same = await store.update_node(n.id, endpoints=list(up.endpoints), tags=up.tags, hostinfo=dict(up.hostinfo),
                                   last_seen=seen.astimezone(timezone(timedelta(hours=2))), home_derp=7)
    assert same == up
    assert await store.update_node(n.id) == up
    assert await store.latest_seq() == seq
    # only the fields that differ are listed
    await store.update_node(n.id, home_derp=7, hostname="renamed")
    assert await changes_after(store, seq) == [
        ("node.updated", {"id": n.id, "user_id": bob.id, "fields": ["hostname"]})
    ]
    seq = await store.latest_seq()
    with pytest.raises(Conflict):
        await store.update_node(n.id, given_name=other.given_name)
    with pytest.raises(Conflict):
        await store.update_node(n.id, ipv4=other.ipv4)
    with pytest.raises(Conflict):
        await store.update_node(n.id, node_key=other.node_key)
    with pytest.raises(NotFound):
        await store.update_node(n.id, user_id=999)
    with pytest.raises(NotFound, match="node 999 not found"):
        await store.update_node(999, hostname="x")
    with pytest.raises(ValueError):
        await store.update_node(n.id, machine_key=key("x", 1))
    with pytest.raises(ValueError):
        await store.update_node(n.id, no_such_field=1)
    assert await store.latest_seq() == seq
    # a node may take its own values, and swap to freed ones
    await store.update_node(n.id, given_name=up.given_name, ipv4=None)
    moved = await store.update_node(other.id, ipv4=n.ipv4)
    assert moved.ipv4 == n.ipv4


async def test_delete_node(store):
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    n = await store.create_node(node(alice.id, 1, tags=("tag:x",)))
    await store.add_share(n.id, bob.id)
    seq = await store.latest_seq()
    await store.delete_node(n.id)
    assert await store.get_node(n.id) is None
    assert await store.list_shares() == []
    assert await changes_after(store, seq) == [
        ("share.deleted", {"node_id": n.id, "user_id": bob.id}),
        ("node.deleted", {"id": n.id, "user_id": alice.id, "node_key": n.node_key.hex(),
                          "machine_key": n.machine_key.hex(), "given_name": n.given_name,
                          "ipv4": n.ipv4, "ipv6": n.ipv6, "tags": ["tag:x"]}),
    ]
    with pytest.raises(NotFound, match="node .* not found"):
        await store.delete_node(n.id)
    # its keys, name and addresses are free again
    again = await store.create_node(node(alice.id, 1))
    assert again.id != n.id and again.given_name == n.given_name
    await store.delete_node(again.id)
    await store.delete_user(alice.id)


# -- pre-auth keys -------------------------------------------------------------------------------


async def test_preauth_keys(store):
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    exp = T0 + timedelta(days=1)
    seq = await store.latest_seq()
    k1 = await store.create_preauth_key(alice.id, "abc123", b"\x01" * 32, reusable=True, ephemeral=True,
                                        tags=["tag:ci"], expiration=exp)
    assert (k1.prefix, k1.key_hash, k1.user_id, k1.reusable, k1.ephemeral, k1.used, k1.tags, k1.expiration) == (
        "abc123", b"\x01" * 32, alice.id, True, True, False, ("tag:ci",), exp)
    k2 = await store.create_preauth_key(bob.id, "def456", b"\x02" * 32)
    assert (k2.reusable, k2.ephemeral, k2.tags, k2.expiration) == (False, False, (), None)
    assert await store.get_preauth_key(k1.id) == k1
    assert await store.get_preauth_key_by_prefix("def456") == k2
    assert await store.get_preauth_key(999) is None
    assert await store.get_preauth_key_by_prefix("nope") is None
    assert await store.list_preauth_keys() == [k1, k2]
    assert await store.list_preauth_keys(bob.id) == [k2]
    assert await changes_after(store, seq) == [
        ("preauthkey.created", {"id": k1.id, "user_id": alice.id, "prefix": "abc123"}),
        ("preauthkey.created", {"id": k2.id, "user_id": bob.id, "prefix": "def456"}),
    ]
    with pytest.raises(Conflict, match="abc123"):
        await store.create_preauth_key(bob.id, "abc123", b"x")
    with pytest.raises(NotFound, match="user 999 not found"):
        await store.create_preauth_key(999, "zzz", b"x")

    # expire: sets the expiration to now if later or unset, and never extends it
    seq = await store.latest_seq()
    now = T0 + timedelta(hours=1)
    e1 = await store.expire_preauth_key(k1.id, now)
    assert e1 == dataclasses.replace(k1, expiration=now) == await store.get_preauth_key(k1.id)
    assert e1.is_expired(now)
    assert await store.expire_preauth_key(k1.id, now + timedelta(days=5)) == e1
    e2 = await store.expire_preauth_key(k2.id, now)
    assert e2.expiration == now
    assert await changes_after(store, seq) == [
        ("preauthkey.updated", {"id": k1.id, "user_id": alice.id, "fields": ["expiration"]}),
        ("preauthkey.updated", {"id": k2.id, "user_id": bob.id, "fields": ["expiration"]}),
    ]
    with pytest.raises(NotFound):
        await store.expire_preauth_key(999, now)

    seq = await store.latest_seq()
    await store.delete_preauth_key(k1.id)
    assert await store.get_preauth_key(k1.id) is None
    assert await changes_after(store, seq) == [
        ("preauthkey.deleted", {"id": k1.id, "user_id": alice.id, "prefix": "abc123"})
    ]
    with pytest.raises(NotFound):
        await store.delete_preauth_key(k1.id)


async def test_deleting_a_preauth_key_keeps_its_nodes(store):
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    once = await store.create_preauth_key(alice.id, "once", b"h1")
    many = await store.create_preauth_key(alice.id, "many", b"h2", reusable=True, ephemeral=True,
                                          tags=["tag:ci"], expiration=T0 + timedelta(days=1))
    n1 = await store.create_node(node(alice.id, auth_key_id=many.id, register_method="authkey", ephemeral=True,
                                      tags=("tag:ci",), approved_routes=("10.0.0.0/24",)))
    n2 = await store.create_node(node(alice.id, auth_key_id=many.id, register_method="authkey"))
    n3 = await store.create_node(node(alice.id, auth_key_id=once.id, register_method="authkey"))
    await store.add_share(n2.id, bob.id)
    nodes, shares = await store.list_nodes(), await store.list_shares()

    # `many` is the newest key: a store that reused ids would hand its id to the next key
    seq = await store.latest_seq()
    await store.delete_preauth_key(many.id)
    await store.delete_preauth_key(once.id)
    assert await changes_after(store, seq) == [
        ("preauthkey.deleted", {"id": many.id, "user_id": alice.id, "prefix": "many"}),
        ("preauthkey.deleted", {"id": once.id, "user_id": alice.id, "prefix": "once"}),
    ]
    assert await store.list_nodes() == nodes
    assert await store.list_shares() == shares
    assert (await store.get_node(n1.id)).auth_key_id == many.id
    assert await store.list_preauth_keys() == []

    # the nodes go on as before: updated, re-keyed, and their owner still cannot be deleted
    moved = await store.update_node(n1.id, node_key=key("rotated", 1), endpoints=("192.0.2.9:41641",))
    assert (moved.auth_key_id, moved.tags, moved.ephemeral, moved.ipv4) == (many.id, n1.tags, True, n1.ipv4)
    with pytest.raises(Conflict, match="still owns 3 nodes"):
        await store.delete_user(alice.id)
    # ... but nothing new registers with the deleted key, and its id is never given again
    with pytest.raises(NotFound, match=f"pre-auth key {many.id} not found"):
        await store.create_node(node(alice.id, auth_key_id=many.id))
    later = await store.create_preauth_key(alice.id, "later", b"h3")
    assert later.id > many.id and n3.auth_key_id == once.id


async def test_naive_datetimes_are_refused(store):
    u = await store.create_user("alice")
    with pytest.raises(ValueError):
        await store.create_preauth_key(u.id, "p", b"h", expiration=datetime(2030, 1, 1))
    with pytest.raises(ValueError):
        await store.create_node(node(u.id, expiry=datetime(2030, 1, 1)))


async def test_times_come_back_in_utc(store):
    u = await store.create_user("alice")
    cest = timezone(timedelta(hours=2))
    local = datetime(2030, 6, 1, 14, 30, 0, 5, tzinfo=cest)
    k = await store.create_preauth_key(u.id, "p", b"h", expiration=local)
    got = (await store.get_preauth_key(k.id)).expiration
    assert got == local and got.tzinfo == timezone.utc and got.hour == 12 and got.microsecond == 5


# -- API keys ------------------------------------------------------------------------------------


async def test_api_keys(store):
    seq = await store.latest_seq()
    a = await store.create_api_key("apiaaa", b"\x0a" * 32, expiration=T0 + timedelta(days=90))
    b = await store.create_api_key("apibbb", b"\x0b" * 32)
    assert (a.prefix, a.key_hash, a.expiration, a.last_seen) == ("apiaaa", b"\x0a" * 32, T0 + timedelta(days=90), None)
    assert await store.get_api_key_by_prefix("apibbb") == b
    assert await store.get_api_key_by_prefix("nope") is None
    assert await store.get_api_key(a.id) == a
    assert await store.get_api_key(999) is None
    assert await store.list_api_keys() == [a, b]
    with pytest.raises(Conflict, match="apiaaa"):
        await store.create_api_key("apiaaa", b"x")
    assert await changes_after(store, seq) == [
        ("apikey.created", {"id": a.id, "prefix": "apiaaa"}),
        ("apikey.created", {"id": b.id, "prefix": "apibbb"}),
    ]
    seq = await store.latest_seq()
    await store.touch_api_key(a.id, T0)
    await store.touch_api_key(999, T0)  # ignored
    assert (await store.get_api_key_by_prefix("apiaaa")).last_seen == T0
    assert await store.latest_seq() == seq

    e = await store.expire_api_key(b.id, T0)
    assert e.expiration == T0 and e == await store.get_api_key_by_prefix("apibbb")
    assert await store.expire_api_key(b.id, T0 + timedelta(days=1)) == e
    with pytest.raises(NotFound):
        await store.expire_api_key(999, T0)
    await store.delete_api_key(a.id)
    assert await store.list_api_keys() == [e]
    assert await store.get_api_key(a.id) is None and await store.get_api_key_by_prefix("apiaaa") is None
    with pytest.raises(NotFound):
        await store.delete_api_key(a.id)
    assert await changes_after(store, seq) == [
        ("apikey.updated", {"id": b.id, "fields": ["expiration"]}),
        ("apikey.deleted", {"id": a.id, "prefix": "apiaaa"}),
    ]


# -- policy --------------------------------------------------------------------------------------


async def test_policy_versions(store):
    assert await store.get_policy() is None
    p1 = await store.set_policy('{"acls": []}')
    assert (p1.version, p1.text) == (1, '{"acls": []}')
    assert await store.get_policy() == p1
    p2 = await store.set_policy('{"acls": [1]}')
    p3 = await store.set_policy('{"acls": [1]}')  # same text: still a new version
    assert (p2.version, p3.version) == (2, 3)
    assert await store.get_policy() == p3
    assert [c.data for c in await store.changes_since(0) if c.kind == "policy.set"] == [
        {"version": 1}, {"version": 2}, {"version": 3}
    ]


# -- pending registrations -----------------------------------------------------------------------


async def test_pending_registrations(store):
    u = await store.create_user("alice")
    seq = await store.latest_seq()
    r = registration("reg-a", expiry=T0 + timedelta(days=30))
    assert await store.put_pending_registration(r) == r
    assert await store.get_pending_registration("reg-a") == r
    assert await store.get_pending_registration("nope") is None
    assert await store.list_pending_registrations() == [r]
    r2 = dataclasses.replace(r, hostinfo={"Hostname": "changed"})
    assert await store.put_pending_registration(r2) == r2  # replace by id
    assert await store.get_pending_registration("reg-a") == r2
    n = await store.create_node(node(u.id))
    done = await store.complete_pending_registration("reg-a", n.id, u.id)
    assert done == dataclasses.replace(r2, node_id=n.id, user_id=u.id)
    assert await store.get_pending_registration("reg-a") == done
    assert await store.list_pending_registrations() == []  # completed: no longer waiting
    with pytest.raises(NotFound, match="reg-zzz"):
        await store.complete_pending_registration("reg-zzz", n.id, u.id)
    await store.delete_pending_registration("reg-a")
    await store.delete_pending_registration("reg-a")  # idempotent, no change
    assert await store.get_pending_registration("reg-a") is None
    assert [(k, d) for k, d in await changes_after(store, seq) if k != "node.created"] == [
        ("registration.pending", {"id": "reg-a"}),
        ("registration.pending", {"id": "reg-a"}),
        ("registration.completed", {"id": "reg-a", "node_id": n.id, "user_id": u.id}),
        ("registration.deleted", {"id": "reg-a"}),
    ]


async def test_pending_registrations_before(store):
    for i in range(5):
        await store.put_pending_registration(registration(f"r{i}", T0 + timedelta(minutes=i)))
    seq = await store.latest_seq()
    assert await store.delete_pending_registrations_before(T0 + timedelta(minutes=3)) == 3
    assert await store.delete_pending_registrations_before(T0 + timedelta(minutes=3)) == 0
    assert [await store.get_pending_registration(f"r{i}") is None for i in range(5)] == [True] * 3 + [False] * 2
    assert await changes_after(store, seq) == [
        ("registration.deleted", {"id": f"r{i}", "reason": "expired"}) for i in range(3)
    ]


async def test_pending_registrations_are_bounded(store, monkeypatch):
    """Full means refused (StoreFull), never another source's login pushed out."""
    monkeypatch.setattr(base, "MAX_PENDING_REGISTRATIONS", 3)
    for i in range(3):
        await store.put_pending_registration(registration(f"r{i}", T0 + timedelta(minutes=i), source=f"s{i}"))
    seq = await store.latest_seq()
    with pytest.raises(base.StoreFull, match="try again later"):
        await store.put_pending_registration(registration("r3", T0 + timedelta(minutes=3), source="s3"))
    assert all([await store.get_pending_registration(f"r{i}") for i in (0, 1, 2)])
    assert await store.get_pending_registration("r3") is None
    assert await changes_after(store, seq) == []
    # replacing one that is kept does not need room
    await store.put_pending_registration(registration("r2", T0 + timedelta(minutes=2), source="s2"))
    assert all([await store.get_pending_registration(f"r{i}") for i in (0, 1, 2)])
    # expired ones make room (older than the pending lifetime, 15 minutes)
    late = T0 + timedelta(minutes=15, seconds=30)
    await store.put_pending_registration(registration("r4", late, source="s4"))
    assert [await store.get_pending_registration(f"r{i}") is not None for i in range(5)] == [
        False, True, True, False, True
    ]
    # the constructor parameter wins over the module constant
    store.max_pending_registrations = 1
    with pytest.raises(base.StoreFull):
        await store.put_pending_registration(registration("r5", late, source="s5"))


# -- relays --------------------------------------------------------------------------------------


async def test_relays(store):
    seq = await store.latest_seq()
    r1 = relay(900, "r1")
    assert await store.upsert_relay(r1) == r1
    r2 = relay(900, "a0", ipv6="2001:db8::10")
    r3 = relay(1, "z")
    await store.upsert_relay(r2)
    await store.upsert_relay(r3)
    assert await store.list_relays() == [r3, r2, r1]
    assert len(await store.changes_since(seq)) == 3

    # heartbeat only: stored, but no change recorded
    seq = await store.latest_seq()
    beat = dataclasses.replace(r1, heartbeat_at=T0 + timedelta(seconds=30))
    assert await store.upsert_relay(beat) == beat
    assert await store.upsert_relay(beat) == beat
    assert (await store.list_relays())[2] == beat
    assert await store.latest_seq() == seq

    moved = dataclasses.replace(beat, host="new.example.net", derp_port=8443, heartbeat_at=T0 + timedelta(minutes=1))
    assert await store.upsert_relay(moved) == moved
    assert await changes_after(store, seq) == [
        ("relay.updated", {"region_id": 900, "name": "r1", "fields": ["derp_port", "host"]})
    ]
    seq = await store.latest_seq()
    await store.delete_relay(900, "r1")
    assert await store.list_relays() == [r3, r2]
    with pytest.raises(NotFound, match="r1"):
        await store.delete_relay(900, "r1")
    assert await changes_after(store, seq) == [("relay.deleted", {"region_id": 900, "name": "r1"})]


# -- shares --------------------------------------------------------------------------------------


async def test_shares(store):
    alice = await store.create_user("alice")
    bob = await store.create_user("bob")
    carol = await store.create_user("carol")
    n1 = await store.create_node(node(alice.id))
    n2 = await store.create_node(node(alice.id))
    seq = await store.latest_seq()
    s1 = await store.add_share(n1.id, bob.id)
    assert (s1.node_id, s1.user_id) == (n1.id, bob.id)
    s2 = await store.add_share(n1.id, carol.id)
    s3 = await store.add_share(n2.id, bob.id)
    assert await store.list_shares() == [s1, s2, s3]
    assert await store.list_shares(n1.id) == [s1, s2]
    assert await store.list_shares(node_id=n2.id) == [s3]
    with pytest.raises(Conflict, match="already shared"):
        await store.add_share(n1.id, bob.id)
    with pytest.raises(Conflict, match="belongs to"):
        await store.add_share(n1.id, alice.id)
    with pytest.raises(NotFound, match="node 999"):
        await store.add_share(999, bob.id)
    with pytest.raises(NotFound, match="user 999"):
        await store.add_share(n1.id, 999)
    await store.remove_share(n1.id, bob.id)
    assert await store.list_shares() == [s2, s3]
    with pytest.raises(NotFound):
        await store.remove_share(n1.id, bob.id)
    assert await changes_after(store, seq) == [
        ("share.created", {"node_id": n1.id, "user_id": bob.id}),
        ("share.created", {"node_id": n1.id, "user_id": carol.id}),
        ("share.created", {"node_id": n2.id, "user_id": bob.id}),
        ("share.deleted", {"node_id": n1.id, "user_id": bob.id}),
    ]


# -- change log ----------------------------------------------------------------------------------


async def test_changes_since(store):
    assert await store.latest_seq() == 0
    assert await store.changes_since(0) == []
    for i in range(7):
        await store.create_user(f"u{i}")
    all_changes = await store.changes_since(0)
    assert [c.seq for c in all_changes] == list(range(1, 8))
    assert all(isinstance(c, Change) and c.kind in CHANGE_KINDS for c in all_changes)
    assert all(c.at.utcoffset() == timedelta(0) for c in all_changes)
    assert [c.at for c in all_changes] == sorted(c.at for c in all_changes)
    assert await store.latest_seq() == 7
    assert [c.seq for c in await store.changes_since(2, limit=3)] == [3, 4, 5]
    assert [c.seq for c in await store.changes_since(5)] == [6, 7]
    assert await store.changes_since(7) == []
    assert await store.changes_since(100) == []


async def test_change_data_is_msgpack(backend, store):
    await store.create_user("alice")
    if backend.name == "sqlite":
        import sqlite3

        conn = sqlite3.connect(backend.path)
        raw = conn.execute("SELECT data FROM changes WHERE seq = 1").fetchone()[0]
        conn.close()
    else:
        raw = bytes.fromhex(backend.sql("SELECT encode(data, 'hex') FROM changes WHERE seq = 1"))
    assert msgpack.unpackb(raw) == {"id": 1, "name": "alice"}


async def test_every_change_kind_is_known(store):
    u = await store.create_user("alice")
    v = await store.create_user("bob")
    k = await store.create_preauth_key(u.id, "k", b"h")
    n = await store.create_node(node(u.id, auth_key_id=k.id))
    await store.update_node(n.id, hostname="x")
    await store.add_share(n.id, v.id)
    await store.remove_share(n.id, v.id)
    await store.expire_preauth_key(k.id, T0)
    await store.delete_preauth_key(k.id)
    a = await store.create_api_key("a", b"h")
    await store.expire_api_key(a.id, T0)
    await store.delete_api_key(a.id)
    await store.set_policy("{}")
    await store.put_pending_registration(registration("r"))
    await store.complete_pending_registration("r", n.id, u.id)
    await store.delete_pending_registration("r")
    await store.upsert_relay(relay())
    await store.delete_relay(900, "r1")
    await store.update_presence("replica", add=[n.id], lease_expires=T0)
    await store.update_presence("replica", remove=[n.id], lease_expires=T0)
    await store.set_dns_txt("_acme-challenge.x.ts.test", ["v"], T0)
    await store.create_ssh_check(SSHCheck(id="check-1", src_node_id=n.id, dst_node_id=n.id, local_user="root",
                                          created_at=T0, expires_at=T0 + timedelta(minutes=5)))
    await store.decide_ssh_check("check-1", "approved", T0)
    oc = await store.create_oauth_client("kClientZZZZZ", b"h", scopes=("dns",))
    await store.delete_oauth_client(oc.id)
    await store.set_setting("dns", {})
    await store.delete_node(n.id)
    await store.rename_user(v.id, "robert")
    await store.delete_user(v.id)
    kinds = {c.kind for c in await store.changes_since(0)}
    assert kinds == CHANGE_KINDS
