"""Coalescing a session's queued messages (shared/domain/mapbatch.py) changes no outcome.

Two properties: over random runs of delta messages, a client that applies the coalesced messages
ends where one applying them one by one does (a model of Tailscale's client: removals, then
upserts, then patches, within one MapResponse); and over random tailnets, policies and change
sequences driven through the fan-out, every session whose queue is coalesced at random flush
points ends with exactly the state one-by-one delivery gives, and both equal a fresh map.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from domain.test_fanout import (  # tests/ is on sys.path (pyproject: pythonpath)
    NOW, POLICIES, TAG_SETS, Client, assert_like_fresh_maps, fan_out, make_node, make_tailnet, open_one,
    open_sessions,
)
from trioscale.shared.domain.fanout import DERPMapSet, Message, NodeRemoved, NodeSet, OnlineSet, PolicySet, ShareSet
from trioscale.shared.domain import mapbatch
from trioscale.shared.domain.mapbatch import coalesce
from trioscale.shared.domain.policy import Policy
from trioscale.shared.model import User


class TailscaleModel:
    """What Tailscale's client does with one MapResponse (controlclient's map session): removals,
    then upserts (a whole node), then patches of known peers (unknown ones are ignored); Node,
    DERPMap, DNSConfig, PacketFilter, SSHPolicy replace; UserProfiles add up."""

    def __init__(self) -> None:
        self.peers: dict[int, dict[str, Any]] = {}
        self.replaced: dict[str, Any] = {}
        self.profiles: dict[Any, Any] = {}

    def apply(self, msg: dict[str, Any]) -> None:
        for pid in msg.get("PeersRemoved", ()):
            self.peers.pop(pid, None)
        for node in msg.get("PeersChanged", ()):
            self.peers[node["ID"]] = dict(node)
        for patch in msg.get("PeersChangedPatch", ()):
            peer = self.peers.get(patch["NodeID"])
            if peer is not None:
                peer.update({k: v for k, v in patch.items() if k != "NodeID"})
        for key in ("Node", "DERPMap", "DNSConfig", "PacketFilter", "SSHPolicy"):
            if key in msg:
                self.replaced[key] = msg[key]
        for profile in msg.get("UserProfiles", ()):
            self.profiles[profile["ID"]] = profile


IDS = st.integers(1, 6)
PEER = st.builds(lambda i, v: {"ID": i, "Name": f"n{i}", "Version": v}, IDS, st.integers(0, 9))
PATCH = st.builds(lambda i, kv: {"NodeID": i, **kv}, IDS,
                  st.dictionaries(st.sampled_from(["Endpoints", "Online", "DERPRegion", "Key"]),
                                  st.integers(0, 9), min_size=1, max_size=3))
DELTA = st.fixed_dictionaries({}, optional={
    "PeersRemoved": st.lists(IDS, min_size=1, max_size=3, unique=True),
    "PeersChanged": st.lists(PEER, min_size=1, max_size=3, unique_by=lambda p: p["ID"]),
    "PeersChangedPatch": st.lists(PATCH, min_size=1, max_size=3, unique_by=lambda p: p["NodeID"]),
    "Node": st.integers(0, 9).map(lambda v: {"ID": 100, "Version": v}),
    "PacketFilter": st.lists(st.integers(0, 3), max_size=2),
    "SSHPolicy": st.integers(0, 2).map(lambda v: {"rules": [v] * v}),
    "DERPMap": st.integers(0, 2).map(lambda v: {"Regions": {str(v): {}}}),
    "UserProfiles": st.lists(st.builds(lambda i, v: {"ID": i, "LoginName": f"u{v}"}, st.integers(1, 3),
                                       st.integers(0, 9)), max_size=2, unique_by=lambda p: p["ID"]),
    "Domain": st.just("example"),  # not foldable: passed on as it is, in its place
})


@settings(max_examples=300, deadline=None)
@given(start=st.lists(PEER, max_size=6, unique_by=lambda p: p["ID"]), run=st.lists(DELTA, max_size=8))
def test_a_coalesced_run_has_the_effect_of_its_messages_one_by_one(start, run):
    one_by_one, batched = TailscaleModel(), TailscaleModel()
    for model in (one_by_one, batched):
        model.apply({"PeersChanged": copy.deepcopy(start)})
    messages = [Message(copy.deepcopy(body)) for body in run]
    for message in messages:
        one_by_one.apply(json.loads(message.json()))
    out = coalesce(messages)
    assert len(out) <= len(messages)
    if all("Domain" not in body for body in run):
        assert len(out) == min(1, len(messages))  # a run of deltas folds into one
    for message in out:
        body = json.loads(message.json())
        if all(message is not m for m in messages):  # a folded body, not one passed on
            removed = set(body.get("PeersRemoved", ()))
            # a peer appears in one place of it: never removed and upserted or patched at once
            assert not removed & {p["ID"] for p in body.get("PeersChanged", ())}
            assert not removed & {p["NodeID"] for p in body.get("PeersChangedPatch", ())}
        batched.apply(body)
    assert batched.peers == one_by_one.peers
    assert batched.replaced == one_by_one.replaced
    assert batched.profiles == one_by_one.profiles


@settings(max_examples=200, deadline=None)
@given(run=st.lists(DELTA, min_size=2, max_size=8), cut=st.integers(0, 7))
def test_folds_sharing_item_texts_are_the_bodies_folded_alone_byte_for_byte(run, cut):
    messages = [Message(copy.deepcopy(body)) for body in run]
    items: mapbatch.ItemTexts = {}
    # two runs of one pass: the whole run, and a later session's tail of it
    for part in (messages, messages[cut % len(messages):]):
        alone = [m.json() for m in coalesce(part)]
        shared = [m.json() for m in coalesce(part, items)]
        assert shared == alone


def test_an_item_shared_by_two_folds_is_encoded_once(monkeypatch):
    peers = [Message({"PeersChanged": [{"ID": i, "Name": f"n{i}"}]}) for i in range(2, 8)]
    patch = Message({"PeersChangedPatch": [{"NodeID": 9, "Online": True}]})
    items: mapbatch.ItemTexts = {}
    coalesce([*peers, patch], items)
    encoded = []
    real = mapbatch.dumps
    monkeypatch.setattr(mapbatch, "dumps", lambda obj: encoded.append(obj) or real(obj))
    (tail,) = coalesce([*peers[3:], patch], items)  # a session that opened later
    assert json.loads(tail.json())["PeersChanged"] == [{"ID": i, "Name": f"n{i}"} for i in range(5, 8)]
    assert encoded == []


def test_one_message_is_passed_on_as_it_is_and_shares_its_frame():
    message = Message({"PeersChangedPatch": [{"NodeID": 1, "Online": True}]})
    assert coalesce([message]) == [message]
    assert coalesce([]) == []


def test_a_join_storms_deltas_fold_into_one_body():
    joins = [Message({"PeersChanged": [{"ID": i}], "UserProfiles": [{"ID": 1, "LoginName": "u"}]})
             for i in range(2, 6)]
    online = [Message({"PeersChangedPatch": [{"NodeID": i, "Online": True}]}) for i in range(2, 6)]
    (out,) = coalesce([m for pair in zip(joins, online) for m in pair])
    body = json.loads(out.json())
    assert [p["ID"] for p in body["PeersChanged"]] == [2, 3, 4, 5]
    assert [p["NodeID"] for p in body["PeersChangedPatch"]] == [2, 3, 4, 5]
    assert body["UserProfiles"] == [{"ID": 1, "LoginName": "u"}]


# -- the fan-out's messages, coalesced at random flush points -------------------------------------------
KINDS = ["bare", "disco", "new", "endpoints", "tag", "untag", "user", "routes", "remove", "offline", "online",
         "policy", "share", "derp", "flush"]


class BatchedClient(Client):
    """The test client, except that a removal of a peer it does not have is a no-op, as in
    Tailscale's client (a map delete): a fold cannot tell whether a peer upserted and then
    removed within it was known before, so it says PeersRemoved either way."""

    def receive(self, msg: dict[str, Any]) -> None:
        if "PeersRemoved" in msg:
            msg = {**msg, "PeersRemoved": [p for p in msg["PeersRemoved"] if p in self.peers]}
        super().receive(msg)


def _batched(client: Client) -> BatchedClient:
    out = copy.deepcopy(client)
    out.__class__ = BatchedClient
    return out


def _deliver_batched(pending: dict, clients: dict, view) -> None:
    for message in coalesce(pending.pop(view, [])):
        clients[view].receive(json.loads(message.json()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=2, max_value=6),
    seed_tags=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    seed_users=st.lists(st.integers(1, 3), min_size=6, max_size=6),
    start=st.integers(0, len(POLICIES) - 1),
    data=st.data(),
)
def test_coalesced_delivery_ends_where_one_by_one_delivery_does(n, seed_tags, seed_users, start, data):
    steps = data.draw(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 1000), st.integers(0, 1000)),
                               max_size=14), label="steps")
    users = [User(id=i + 1, name=f"u{i}", email=f"u{i}@example.com") for i in range(3)]
    nodes = [make_node(i, seed_users[i - 1], TAG_SETS[seed_tags[i - 1]]) for i in range(1, n + 1)]
    tailnet = make_tailnet(nodes, users, POLICIES[start])
    sessions, one = open_sessions(tailnet)
    batched = {view: _batched(client) for view, client in one.items()}
    pending: dict[Any, list[Message]] = {}
    next_id = n + 1
    for kind, a, b in steps:
        if kind == "flush":
            for view in list(pending):
                _deliver_batched(pending, batched, view)
            continue
        ids = sorted(tailnet.nodes)
        target = tailnet.nodes[ids[a % len(ids)]] if ids else None
        change: Any
        if kind in ("new", "bare") or target is None:
            # "bare": registered, not yet announceable (no disco key until its first map request)
            node = make_node(next_id, 1 + b % 3, TAG_SETS[a % 4], routes=bool(b % 2))
            change = NodeSet(node.replace(disco_key=None) if kind == "bare" else node)
            next_id += 1
        elif kind == "disco":
            change = NodeSet(target.replace(disco_key=bytes([b % 200 + 1]) * 32), ("disco_key",))
        elif kind == "endpoints":
            change = NodeSet(target.replace(endpoints=(f"192.0.2.{b % 250}:41641",)), ("endpoints",))
        elif kind == "tag":
            change = NodeSet(target.replace(tags=TAG_SETS[2 + b % 2]))
        elif kind == "untag":
            change = NodeSet(target.replace(tags=()))
        elif kind == "user":
            change = NodeSet(target.replace(user_id=1 + b % 3))
        elif kind == "routes":
            routes = () if target.approved_routes else ("10.1.0.0/16",)
            change = NodeSet(target.replace(hostinfo={"RoutableIPs": list(routes)} if routes else {},
                                            approved_routes=routes))
        elif kind == "remove":
            for view in sessions.pop(target.id, []):
                pending.pop(view, None)  # its own sessions are closed first
            change = NodeRemoved(target.id)
        elif kind in ("offline", "online"):
            change = OnlineSet(target.id, kind == "online")
        elif kind == "policy":
            text = POLICIES[b % len(POLICIES)]
            change = PolicySet(Policy.parse(text) if text else None, text)
        elif kind == "share":
            change = ShareSet(target.id, 1 + b % 3, bool(b % 2))
        else:
            change = DERPMapSet({"Regions": {str(900 + b % 3): {"RegionID": 900 + b % 3, "Nodes": []}}})
        for view, message in fan_out(tailnet, sessions, change, NOW):
            one[view].receive(json.loads(message.json()))
            pending.setdefault(view, []).append(message)
        if isinstance(change, NodeSet) and change.node.id not in sessions:  # a new node connects too
            view, client = open_one(tailnet, change.node.id)
            sessions[change.node.id] = [view]
            one[view] = client
            batched[view] = _batched(client)
    for view in list(pending):
        _deliver_batched(pending, batched, view)
    for views in sessions.values():
        for view in views:
            assert batched[view].state() == one[view].state(), view.node_id
    assert_like_fresh_maps(tailnet, sessions, one, "end")
