"""Store.import_record: a record brought from another server keeps its id and times, on SQLite and
PostgreSQL alike, and the ids the store gives afterwards continue above the highest."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from trioscale.shared.model import ApiKey, Node, PreAuthKey, User
from trioscale.shared.store.base import Conflict, NotFound

CREATED = datetime(2023, 4, 5, 6, 7, 8, tzinfo=timezone.utc)


def a_node(node_id: int, user_id: int, n: int, **fields) -> Node:
    return Node(id=node_id, machine_key=bytes([n]) * 32, node_key=bytes([n + 100]) * 32, user_id=user_id,
                hostname=f"h{n}", given_name=f"h{n}", ipv4=f"100.64.0.{n}", ipv6=f"fd7a:115c:a1e0::{n}",
                created_at=CREATED, **fields)


async def test_ids_and_times_are_kept_and_later_ids_continue_above(store) -> None:
    alice = await store.import_record(User(id=7, name="alice", email="a@example.com", created_at=CREATED))
    assert (alice.id, alice.created_at, alice.email) == (7, CREATED, "a@example.com")
    key = await store.import_record(PreAuthKey(
        id=12, prefix="p" * 12, key_hash=b"h", user_id=7, reusable=True, tags=("tag:a",),
        expiration=CREATED + timedelta(days=400), created_at=CREATED))
    assert (key.id, key.created_at, key.expiration, key.tags) == (12, CREATED, CREATED + timedelta(days=400), ("tag:a",))
    spent = await store.import_record(PreAuthKey(id=13, prefix="q" * 12, key_hash=b"h", user_id=7, used=True,
                                                 created_at=CREATED))
    assert spent.used is True
    seen = CREATED + timedelta(hours=3)
    api = await store.import_record(ApiKey(id=4, prefix="r" * 12, key_hash=b"h", created_at=CREATED, last_seen=seen,
                                           expiration=CREATED + timedelta(days=90)))
    assert (api.id, api.created_at, api.last_seen) == (4, CREATED, seen)
    node = await store.import_record(a_node(30, 7, 1, auth_key_id=12))
    assert (node.id, node.created_at, node.user_id, node.auth_key_id) == (30, CREATED, 7, 12)
    assert (await store.get_node(30)).given_name == "h1"
    assert (await store.get_user(7)).created_at == CREATED

    # what the store makes next continues above (a PostgreSQL sequence would otherwise start at 1)
    assert (await store.create_user("bob")).id == 8
    assert (await store.create_preauth_key(7, "s" * 12, b"h")).id == 14
    assert (await store.create_api_key("t" * 12, b"h")).id == 5
    assert (await store.create_node(a_node(0, 7, 2))).id == 31


async def test_a_taken_id_or_name_is_a_conflict(store) -> None:
    await store.import_record(User(id=3, name="carol"))
    with pytest.raises(Conflict):
        await store.import_record(User(id=3, name="dave"))
    with pytest.raises(Conflict):
        await store.import_record(User(id=4, name="carol"))
    await store.import_record(a_node(5, 3, 1))
    with pytest.raises(Conflict):
        await store.import_record(a_node(5, 3, 2))
    with pytest.raises(Conflict):  # another id, the same machine key
        await store.import_record(a_node(6, 3, 1))
    with pytest.raises(NotFound):  # its owner must be there
        await store.import_record(PreAuthKey(id=1, prefix="x" * 12, key_hash=b"h", user_id=99))
    assert [u.name for u in await store.list_users()] == ["carol"]
    assert [n.id for n in await store.list_nodes()] == [5]


async def test_the_change_log_names_the_kept_ids(store) -> None:
    before = await store.latest_seq()
    await store.import_record(User(id=40, name="erin"))
    await store.import_record(a_node(41, 40, 3))
    kinds = {(c.kind, c.data.get("id")) for c in await store.changes_since(before)}
    assert ("user.created", 40) in kinds and ("node.created", 41) in kinds
