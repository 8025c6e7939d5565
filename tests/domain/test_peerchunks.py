"""First maps assembled from kept chunks of peer JSON (shared/domain/peerchunks.py) say exactly
what a first map built from scratch says, however the tailnet changed between them, and their
zstd form (one frame per piece) decodes to the same JSON."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from domain.test_fanout import NOW, POLICIES, TAG_SETS, make_tailnet  # tests/ is on sys.path
from trioscale.services.coord.sessions import frame
from trioscale.shared.domain import fanout, peerchunks
from trioscale.shared.domain.fanout import NodeRemoved, NodeSet, OnlineSet, PolicySet, SessionView
from trioscale.shared.domain.policy import Policy
from trioscale.shared.model import Node, User
from trioscale.shared.proto import mapframe

USERS = [User(id=i + 1, name=f"u{i}", email=f"u{i}@example.com") for i in range(3)]


def make_node(i: int, user_id: int, tags: tuple[str, ...] = ()) -> Node:
    """A node whose id may run past one byte (test_fanout's spell ids in key bytes)."""
    key = i.to_bytes(2, "big")
    return Node(id=i, machine_key=b"m" + key * 15 + b"m", node_key=b"n" + key * 15 + b"n", user_id=user_id,
                hostname=f"n{i}", given_name=f"n{i}", ipv4=f"100.64.{i // 250}.{i % 250 + 1}",
                ipv6=f"fd7a:115c:a1e0::{i:x}", disco_key=b"d" + key * 15 + b"d", tags=tags, created_at=NOW)


STEPS = ["endpoints", "no-disco", "offline", "online", "expire-soon", "expired", "new", "remove", "tag",
         "policy", "time"]


def assert_same_first_maps(tailnet, viewers, now) -> None:
    for vid in viewers:
        built = SessionView(vid)
        fresh = fanout.first_map(tailnet, built, now)
        pieced = SessionView(vid)
        message = fanout.first_map_message(tailnet, pieced, now)
        zstd = frame(message, mapframe.ZSTD)
        assert json.loads(message.json()) == json.loads(json.dumps(fresh)), f"viewer {vid}"
        (decoded,) = mapframe.MapStreamDecoder(mapframe.ZSTD).receive_data(zstd)
        assert decoded == message.json()
        assert set(pieced.sent) == set(built.sent)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.sets(st.integers(1, 250), min_size=2, max_size=40),
    policy=st.sampled_from([False, *range(len(POLICIES))]),
    data=st.data(),
)
def test_first_maps_from_kept_chunks_equal_fresh_ones(ids, policy, data):
    nodes = [make_node(i, 1 + i % 3, TAG_SETS[i % 4] if policy is not False else ()) for i in sorted(ids)]
    tailnet = make_tailnet(nodes, USERS, POLICIES[policy] if policy is not False else None,
                           policy=policy is not False)
    now = NOW
    steps = data.draw(st.lists(st.tuples(st.sampled_from(STEPS), st.integers(0, 1000)), max_size=10), label="steps")
    assert_same_first_maps(tailnet, sorted(tailnet.nodes)[:3], now)
    free = [i for i in range(1, 251) if i not in ids]
    for kind, a in steps:
        order = sorted(tailnet.nodes)
        target = tailnet.nodes[order[a % len(order)]]
        change: Any = None
        if kind == "endpoints":
            change = NodeSet(target.replace(endpoints=(f"192.0.2.{a % 250}:41641",)), ("endpoints",))
        elif kind == "no-disco":
            change = NodeSet(target.replace(disco_key=None), ("disco_key",))
        elif kind in ("offline", "online"):
            change = OnlineSet(target.id, kind == "online")
        elif kind == "expire-soon":
            change = NodeSet(target.replace(expiry=now + timedelta(seconds=1 + a % 5)), ("expiry",))
        elif kind == "expired":
            change = NodeSet(target.replace(expiry=now - timedelta(seconds=1)), ("expiry",))
        elif kind == "new" and free:
            change = NodeSet(make_node(free.pop(a % len(free)), 1 + a % 3))
        elif kind == "remove" and len(order) > 2:
            change = NodeRemoved(target.id)
        elif kind == "tag" and policy is not False:
            change = NodeSet(target.replace(tags=TAG_SETS[2 + a % 2]))
        elif kind == "policy" and policy is not False:
            text = POLICIES[a % len(POLICIES)]
            change = PolicySet(Policy.parse(text) if text else None, text)
        elif kind == "time":
            now += timedelta(seconds=a % 7)  # keys set to expire soon may have expired now
        if change is not None:
            fanout.fan_out(tailnet, {}, change, now)
        order = sorted(tailnet.nodes)
        assert_same_first_maps(tailnet, [order[0], order[a % len(order)], order[-1]], now)


def test_a_chunk_is_kept_until_one_of_its_nodes_changes():
    nodes = [make_node(i, 1) for i in (1, 2, 70, 71, 140)]
    tailnet = make_tailnet(nodes, USERS, None, policy=False)
    fanout.first_map_message(tailnet, SessionView(1), NOW)
    kept = {k: c.fragment for k, c in tailnet.peer_chunks.items()}
    assert sorted(kept) == [1, 2]  # the viewer's own range is built for it alone
    fanout.first_map_message(tailnet, SessionView(140), NOW)
    assert tailnet.peer_chunks[1].fragment is kept[1]  # unchanged: the same piece, compressed once
    fanout.fan_out(tailnet, {}, NodeSet(tailnet.nodes[71].replace(endpoints=("192.0.2.1:1",)), ("endpoints",)), NOW)
    fanout.first_map_message(tailnet, SessionView(1), NOW)
    assert tailnet.peer_chunks[1].fragment is not kept[1] and tailnet.peer_chunks[2].fragment is kept[2]
    assert peerchunks.CHUNK_IDS == 64  # the ranges above assume it


def test_a_chunk_whose_key_expires_meanwhile_is_built_again():
    nodes = [make_node(i, 1) for i in (1, 70, 71)]
    nodes[2] = nodes[2].replace(expiry=NOW + timedelta(seconds=1))
    tailnet = make_tailnet(nodes, USERS, None, policy=False)
    assert_same_first_maps(tailnet, [1], NOW)
    later = NOW + timedelta(seconds=2)
    assert_same_first_maps(tailnet, [1], later)
    (peer,) = [p for p in json.loads(fanout.first_map_message(tailnet, SessionView(1), later).json())["Peers"]
               if p["ID"] == 71]
    assert peer.get("Expired") is True


def test_kept_chunks_follow_every_way_of_changing_nodes_and_online():
    """The node table and online set drop a range's kept chunk however they are changed: through
    the fan-out or not, one id at a time, in bulk, or replaced whole (a reload)."""
    nodes = [make_node(i, 1) for i in (1, 2, 70, 71, 140, 200)]
    tailnet = make_tailnet(nodes, USERS, None, policy=False)
    viewers = [1, 140]
    assert_same_first_maps(tailnet, viewers, NOW)
    edits = [
        lambda t: t.online.add(70),
        lambda t: t.online.discard(70),
        lambda t: t.online.update({71, 200}),
        lambda t: t.online.difference_update({200}),
        lambda t: t.online.__isub__({71}),
        lambda t: setattr(t, "online", {2, 70, 140}),
        lambda t: t.nodes.__setitem__(71, t.nodes[71].replace(endpoints=("192.0.2.7:1",))),
        lambda t: t.nodes.pop(200),
        lambda t: t.nodes.setdefault(201, make_node(201, 2)),
        lambda t: t.nodes.update({130: make_node(130, 3)}),
        lambda t: t.nodes.__delitem__(130),
        lambda t: setattr(t, "nodes", {i: n for i, n in t.nodes.items() if i != 2}),
        lambda t: t.online.clear(),
    ]
    for edit in edits:
        edit(tailnet)
        assert_same_first_maps(tailnet, viewers, NOW)
        held = {}
        for i in tailnet.nodes:
            held[i // peerchunks.CHUNK_IDS] = held.get(i // peerchunks.CHUNK_IDS, 0) + 1
        assert tailnet.nodes.ranges == held
    assert type(tailnet.online | {5}) is set  # derived sets are plain: they do not touch the cache


def test_an_in_place_operator_the_set_refuses_falls_back_as_for_a_set():
    online = peerchunks.ChunkedIds({}, {1})
    online |= {5: None}.keys()  # set.__ior__ takes only sets: Python falls back to `online | keys`
    assert online == {1, 5}
