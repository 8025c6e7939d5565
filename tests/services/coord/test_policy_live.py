"""The live policy in the coordinator, driven in memory (fake map streams over a real SQLite store):
policy changes reach connected nodes as new filters and peer changes, tags, routes and HA
failover, sharing, and the policy file source."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from coordhelpers import POLICY, FakeResponse, Machine, call, settled
from trioscale.services.coord import policysource
from trioscale.services.coord.coordinator import Coordinator
from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.netmap import Settings
from trioscale.shared.domain.policy import PolicyError
from trioscale.shared.domain.routes import elect_primaries, normalize_routes
from trioscale.services.coord.handlers import ControlHandlers
from trioscale.shared.domain.policy.host import parse_and_check
from trioscale.services.coord.sessions import frame
from trioscale.shared.domain import secrets
from trioscale.shared.store.sqlite import SqliteStore

#: the issue's promise: a policy change reaches connected nodes within 1 s
DEADLINE = 1.0

WEB_FOR_GROUP_X = """{
  // web:80 for group:x only
  "groups": {"group:x": ["alice@"]},
  "tagOwners": {"tag:web": ["alice@"], "tag:router": ["alice@"]},
  "acls": [{"action": "accept", "src": ["group:x"], "dst": ["tag:web:80"]}],
}"""
WEB_FOR_ALL = """{
  "groups": {"group:x": ["alice@", "bob@"]},
  "tagOwners": {"tag:web": ["alice@"], "tag:router": ["alice@"]},
  "acls": [{"action": "accept", "src": ["group:x"], "dst": ["tag:web:80"]}],
}"""


class Env:
    def __init__(self, store, coord, handlers, nursery):
        self.store, self.coord, self.handlers, self.nursery = store, coord, handlers, nursery
        self.keys: dict[str, str] = {}

    async def key(self, user: str, tags: tuple[str, ...] = ()) -> str:
        name = f"{user}:{','.join(tags)}"
        if name not in self.keys:
            u = await self.store.get_user_by_name(user) or await self.store.create_user(user)
            new = secrets.generate_preauth_key()
            await self.store.create_preauth_key(u.id, new.prefix, new.key_hash, reusable=True, tags=tags)
            self.keys[name] = new.text
        return self.keys[name]

    async def join(self, hostname: str, user: str, tags: tuple[str, ...] = (), **hostinfo) -> tuple[Machine, FakeResponse]:
        m = Machine(hostname)
        body = m.register_body(await self.key(user, tags))
        body["Hostinfo"].update(hostinfo)
        resp = await call(self.handlers, m, "/machine/register", body)
        assert resp.json().get("MachineAuthorized") is True, resp.json()
        return m, await self.stream(m, **hostinfo)

    async def stream(self, m: Machine, **hostinfo) -> FakeResponse:
        resp = FakeResponse()
        scope = trio.CancelScope()
        body = m.map_body()
        body["Hostinfo"].update(hostinfo)

        async def run():
            with scope:
                await self.handlers.noise(m.request("/machine/map", body), resp)

        self.nursery.start_soon(run)
        with trio.fail_after(2):
            await resp.arrived.wait()
        resp.scope = scope
        return resp

    async def node_id(self, m: Machine) -> int:
        return (await self.store.get_node_by_machine_key(m.machine_key)).id

    async def set_policy(self, text: str) -> None:
        parse_and_check(text, await self.store.list_users(), await self.store.list_nodes())
        await self.store.set_policy(text)


@pytest.fixture
async def env(nursery):
    store = await SqliteStore.open(":memory:")
    coord = Coordinator(store, Settings(base_domain="ts.test"),
                        build_derp_map=lambda relays: tailcfg.derp_map(relays),
                        ephemeral_timeout=timedelta(seconds=30))
    await nursery.start(coord.run)
    yield Env(store, coord, ControlHandlers(coord, POLICY), nursery)
    await store.aclose()


def peers_of(stream: FakeResponse) -> dict[int, dict]:
    """The client's peer table after every message so far (Peers / PeersChanged / PeersRemoved)."""
    peers: dict[int, dict] = {}
    for m in stream.messages():
        if m.get("Peers"):
            peers = {p["ID"]: p for p in m["Peers"]}
        for p in m.get("PeersChanged") or []:
            peers[p["ID"]] = p
        for i in m.get("PeersRemoved") or []:
            peers.pop(i, None)
    return peers


def filter_of(stream: FakeResponse):
    out = None
    for m in stream.messages():
        if "PacketFilter" in m:
            out = m["PacketFilter"]
    return out


def self_of(stream: FakeResponse) -> dict:
    out = {}
    for m in stream.messages():
        if m.get("Node"):
            out = m["Node"]
    return out


async def eventually(predicate, timeout: float = DEADLINE, what: str = "condition"):
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(0.01)
    raise AssertionError(f"not within {timeout}s: {what}")


def src_ips(filt) -> set[str]:
    return {ip for rule in filt or [] for ip in rule.get("SrcIPs", [])}


async def test_policy_change_reaches_connected_nodes_within_a_second(env):
    await env.set_policy(WEB_FOR_GROUP_X)
    web_m, web = await env.join("web", "alice", ("tag:web",))
    a_m, a = await env.join("a1", "alice")
    b_m, b = await env.join("b1", "bob")
    web_id, a_id, b_id = [await env.node_id(x) for x in (web_m, a_m, b_m)]
    await eventually(lambda: set(peers_of(web)) == {a_id}, what="web sees a1 only")
    assert set(peers_of(a)) == {web_id}
    assert peers_of(b) == {}
    assert filter_of(b) == []  # deny all inbound, sent as such
    assert src_ips(filter_of(web)) == {"100.64.0.2", "fd7a:115c:a1e0::2"}
    assert filter_of(web)[0]["DstPorts"][0]["Ports"] == {"First": 80, "Last": 80}

    start = trio.current_time()
    await env.set_policy(WEB_FOR_ALL)
    await eventually(lambda: b_id in peers_of(web) and web_id in peers_of(b)
                     and "100.64.0.3" in src_ips(filter_of(web)), what="bob allowed to web")
    assert trio.current_time() - start < DEADLINE
    assert set(peers_of(b)) == {web_id}  # b1 sees web only, not a1
    # web got the new filter, then b1 as a changed peer, or both in one coalesced MapResponse
    # (sessions.framed), which a client applies at once: the filter never lags the peers
    msgs = web.messages()
    i_filter = max(i for i, m in enumerate(msgs) if "PacketFilter" in m)
    i_peer = max(i for i, m in enumerate(msgs) if any(p["ID"] == b_id for p in m.get("PeersChanged", [])))
    assert i_filter <= i_peer and [p["ID"] for p in msgs[i_peer]["PeersChanged"]] == [b_id]

    # back: b1 is removed from web's map and web from b1's; b1's filter stays deny-all
    await env.set_policy(WEB_FOR_GROUP_X)
    await eventually(lambda: b_id not in peers_of(web) and web_id not in peers_of(b), what="bob removed")
    assert "100.64.0.3" not in src_ips(filter_of(web))


async def test_deny_all_and_back_to_no_policy(env):
    a_m, a = await env.join("a1", "alice")
    b_m, b = await env.join("b1", "bob")
    b_id = await env.node_id(b_m)
    await eventually(lambda: b_id in peers_of(a), what="no policy: all visible")
    assert filter_of(a) and filter_of(a)[0]["DstPorts"][0]["IP"] == "*"
    await env.set_policy('{"acls": []}')
    await eventually(lambda: filter_of(a) == [] and filter_of(b) == [] and not peers_of(a) and not peers_of(b),
                     what="deny all")


async def test_identical_messages_are_encoded_once(env):
    from trioscale.shared.domain.policy import Policy

    await env.set_policy('{"acls": [{"action": "accept", "src": ["bob@"], "dst": ["*:22"]}]}')
    for i in range(3):
        await env.join(f"b{i}", "bob")
    sessions = [s for sid in sorted(env.coord.sessions.by_node) for s in env.coord.sessions.by_node[sid]]
    await eventually(lambda: all(len(s.sent) == 2 for s in sessions))
    for s in sessions:  # queue instead of writing at once, so the test can look at the messages
        s.response = None
    # a policy change that alters the filter the same way for everyone, and nobody's peers
    env.coord.install_policy(Policy.parse('{"acls": [{"action": "accept", "src": ["bob@"], "dst": ["*:22,80"]}]}'), None)
    queued = [s.queue[-1] for s in sessions]
    assert all(q is queued[0] for q in queued)  # one message object (encoded once) for all three
    body = json.loads(frame(queued[0], None)[4:])
    assert set(body) == {"PacketFilter"}
    assert frame(queued[0], None) is frame(queued[0], None)


async def test_new_node_in_a_group_updates_other_nodes_filters(env):
    await env.set_policy(WEB_FOR_GROUP_X)
    web_m, web = await env.join("web", "alice", ("tag:web",))
    await env.join("a1", "alice")
    await eventually(lambda: "100.64.0.2" in src_ips(filter_of(web)))
    a2_m, _ = await env.join("a2", "alice")
    await eventually(lambda: "100.64.0.3" in src_ips(filter_of(web)), what="web's filter has a2")
    await eventually(lambda: len(peers_of(web)) == 2)
    # a node of another user joining changes nothing for web
    n = len(web.messages())
    await env.join("b1", "bob")
    await settled(env.coord, web)
    assert all("PacketFilter" not in m for m in web.messages()[n:])


async def test_tagging_a_node_changes_owner_expiry_and_visibility(env):
    await env.set_policy(WEB_FOR_GROUP_X)
    web_m, web = await env.join("web", "alice")  # untagged yet: nobody may reach it
    a_m, a = await env.join("a1", "alice")
    web_id = await env.node_id(web_m)
    assert web_id not in peers_of(a)
    await env.store.update_node(web_id, tags=("tag:web",), expiry=None)
    await eventually(lambda: web_id in peers_of(a), what="tagged web visible to alice")
    assert peers_of(a)[web_id]["User"] == tailcfg.TAGGED_DEVICES_USER_ID
    assert peers_of(a)[web_id]["Tags"] == ["tag:web"]
    await eventually(lambda: self_of(web).get("Tags") == ["tag:web"])
    await eventually(lambda: src_ips(filter_of(web)) == {"100.64.0.2", "fd7a:115c:a1e0::2"})


async def test_requested_tags_checked_against_tag_owners(env):
    await env.set_policy(WEB_FOR_GROUP_X)
    ok_m, _ = await env.join("web", "alice", RequestTags=["tag:web"])
    ok_id = await env.node_id(ok_m)
    with trio.fail_after(2):
        while (await env.store.get_node(ok_id)).tags != ("tag:web",):
            await trio.sleep(0.02)
    assert (await env.store.get_node(ok_id)).expiry is None
    # bob does not own tag:web: the registration is refused, as Tailscale refuses it
    bad = Machine("other")
    body = bad.register_body(await env.key("bob"))
    body["Hostinfo"]["RequestTags"] = ["tag:web"]
    resp = await call(env.handlers, bad, "/machine/register", body)
    assert resp.json() == {"Error": "requested tags [tag:web] are invalid or not permitted"}
    assert await env.store.get_node_by_machine_key(bad.machine_key) is None
    # asking later (a map request's Hostinfo) is refused too, and logged
    b_m, _ = await env.join("b1", "bob")
    b_id = await env.node_id(b_m)
    await call(env.handlers, b_m, "/machine/map", b_m.map_body(stream=False, OmitPeers=True,
                                                               Hostinfo={"Hostname": "b1", "RequestTags": ["tag:web"]}))
    await settled(env.coord)  # the Hostinfo change is applied: the tag write would have been made then
    assert (await env.store.get_node(b_id)).tags == ()


ROUTES_POLICY = """{
  "tagOwners": {"tag:router": ["alice@"]},
  "autoApprovers": {"routes": {"10.33.0.0/16": ["tag:router"]}, "exitNode": ["tag:router"]},
  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["10.33.0.0/16:*", "tag:router:*", "autogroup:internet:*"]}],
}"""


async def test_auto_approved_route_is_primary_for_allowed_peers(env):
    await env.set_policy(ROUTES_POLICY)
    r_m, r = await env.join("router", "alice", ("tag:router",), RoutableIPs=["10.33.0.0/16"])
    a_m, a = await env.join("a1", "alice")
    b_m, b = await env.join("b1", "bob")
    r_id = await env.node_id(r_m)
    with trio.fail_after(2):
        while (await env.store.get_node(r_id)).approved_routes != ("10.33.0.0/16",):
            await trio.sleep(0.02)
    await eventually(lambda: peers_of(a).get(r_id, {}).get("PrimaryRoutes") == ["10.33.0.0/16"], what="primary route")
    assert "10.33.0.0/16" in peers_of(a)[r_id]["AllowedIPs"]
    assert r_id not in peers_of(b)  # bob may not use it
    assert self_of(r).get("PrimaryRoutes") == ["10.33.0.0/16"]


async def test_exit_routes_approved_together_and_manual_approval(env):
    assert normalize_routes(["0.0.0.0/0"]) == ("0.0.0.0/0", "::/0")
    assert normalize_routes(["10.1.2.3/8", "::/0", ""]) == ("0.0.0.0/0", "10.0.0.0/8", "::/0")
    await env.set_policy(ROUTES_POLICY)
    x_m, x = await env.join("exit", "alice", RoutableIPs=["0.0.0.0/0", "::/0", "192.168.7.0/24"])
    a_m, a = await env.join("a1", "alice")
    x_id = await env.node_id(x_m)
    await settled(env.coord)  # the node's creation is applied: an auto-approval would have been written then
    assert (await env.store.get_node(x_id)).approved_routes == ()  # alice's own node: no autoApprover
    await env.store.update_node(x_id, approved_routes=normalize_routes(["0.0.0.0/0"]))
    await eventually(lambda: {"0.0.0.0/0", "::/0"} <= set(peers_of(a).get(x_id, {}).get("AllowedIPs", [])),
                     what="exit routes in AllowedIPs")
    assert "192.168.7.0/24" not in peers_of(a)[x_id]["AllowedIPs"]  # not approved
    assert peers_of(a)[x_id].get("CapMap", {}).get("suggest-exit-node") == []


def test_election_is_sticky():
    owners = {"10.0.0.0/8": {1, 2}}
    first = elect_primaries(owners, {1, 2}, {})
    assert first == {"10.0.0.0/8": 1}
    failover = elect_primaries(owners, {2}, first)
    assert failover == {"10.0.0.0/8": 2}
    back = elect_primaries(owners, {1, 2}, failover)
    assert back == {"10.0.0.0/8": 2}  # no flapping back
    nobody = elect_primaries(owners, set(), back)
    assert nobody == {"10.0.0.0/8": 2}
    assert elect_primaries({"p": {3, 4}}, set(), {"p": 9}) == {"p": 3}


async def test_ha_failover_without_flap_back(env):
    await env.set_policy(ROUTES_POLICY)
    r1_m, r1 = await env.join("r1", "alice", ("tag:router",), RoutableIPs=["10.33.0.0/16"])
    r2_m, r2 = await env.join("r2", "alice", ("tag:router",), RoutableIPs=["10.33.0.0/16"])
    a_m, a = await env.join("a1", "alice")
    r1_id, r2_id = await env.node_id(r1_m), await env.node_id(r2_m)

    def primary():
        return [i for i, p in peers_of(a).items() if p.get("PrimaryRoutes") == ["10.33.0.0/16"]]

    await eventually(lambda: primary() == [r1_id], timeout=2, what="r1 primary")
    assert "10.33.0.0/16" not in peers_of(a)[r2_id]["AllowedIPs"]
    r1.scope.cancel()  # r1's map session ends: offline
    await eventually(lambda: primary() == [r2_id], timeout=15, what="r2 takes over")
    r1b = await env.stream(r1_m, RoutableIPs=["10.33.0.0/16"])
    await eventually(lambda: r1_id in env.coord.tailnet.online, timeout=2)
    await settled(env.coord, a)
    assert primary() == [r2_id]  # r1 is back but r2 keeps the role
    assert self_of(r1b).get("PrimaryRoutes") is None


VIA_POLICY = """{
  "tagOwners": {"tag:router": ["alice@"], "tag:site-b": ["alice@"]},
  "autoApprovers": {"routes": {"10.33.0.0/16": ["tag:router", "tag:site-b"]}},
  "grants": [
    {"src": ["*"], "dst": ["*"], "ip": ["*"]},
    // bob's traffic for 10.33.0.0/16 goes through the site-b routers only
    {"src": ["bob@"], "dst": ["10.33.0.0/16"], "via": ["tag:site-b"], "ip": ["*"]},
    {"src": ["alice@"], "dst": ["10.33.0.0/16"], "ip": ["*"]},
  ],
}"""


async def test_via_grant_steers_a_route_and_fails_over_within_its_routers(env):
    await env.set_policy(VIA_POLICY)
    r_m, r = await env.join("r", "alice", ("tag:router",), RoutableIPs=["10.33.0.0/16"])
    s1_m, s1 = await env.join("s1", "alice", ("tag:site-b",), RoutableIPs=["10.33.0.0/16"])
    s2_m, s2 = await env.join("s2", "alice", ("tag:site-b",), RoutableIPs=["10.33.0.0/16"])
    a_m, a = await env.join("a1", "alice")
    b_m, b = await env.join("b1", "bob")
    r_id, s1_id, s2_id = [await env.node_id(m) for m in (r_m, s1_m, s2_m)]

    def routers_of(stream):
        return sorted(i for i, p in peers_of(stream).items() if "10.33.0.0/16" in (p.get("PrimaryRoutes") or []))

    await eventually(lambda: routers_of(a) == [r_id], timeout=2, what="alice uses the HA primary")
    await eventually(lambda: routers_of(b) == [s1_id], timeout=2, what="bob goes via site-b")
    # the via grant's rule is on the site-b routers only
    bob_src = {a.split("/")[0] for a in peers_of(a)[await env.node_id(b_m)]["Addresses"]}

    def bob_to_subnet(stream):
        return [rule for rule in filter_of(stream) or [] if set(rule["SrcIPs"]) == bob_src
                and any(d["IP"] == "10.33.0.0/16" for d in rule["DstPorts"])]

    assert bob_to_subnet(s1) and bob_to_subnet(s2)
    assert not bob_to_subnet(r)
    # an HA secondary is told who the primary of its own prefix is
    await eventually(lambda: routers_of(s1) == [r_id], timeout=2, what="s1 sees r as the primary")
    s1.scope.cancel()  # s1 goes offline: bob moves to s2, alice stays on r
    await eventually(lambda: routers_of(b) == [s2_id], timeout=15, what="bob fails over to s2")
    assert routers_of(a) == [r_id]


SELF_ONLY = """{"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}"""


async def test_sharing_makes_a_node_visible_and_reachable_for_the_user(env):
    await env.set_policy(SELF_ONLY)
    web_m, web = await env.join("web", "alice")
    b_m, b = await env.join("b1", "bob")
    web_id, b_id = await env.node_id(web_m), await env.node_id(b_m)
    await settled(env.coord, b)
    assert web_id not in peers_of(b)
    bob = await env.store.get_user_by_name("bob")
    await env.store.add_share(web_id, bob.id)
    await eventually(lambda: web_id in peers_of(b) and b_id in peers_of(web), what="shared")
    await eventually(lambda: "100.64.0.2" in src_ips(filter_of(web)), what="bob may connect to web")
    assert "100.64.0.1" not in src_ips(filter_of(b))  # the shared node gains no way in to bob
    # a second bob node sees it at once
    b2_m, b2 = await env.join("b2", "bob")
    assert web_id in peers_of(b2)
    await env.store.remove_share(web_id, bob.id)
    await eventually(lambda: web_id not in peers_of(b) and web_id not in peers_of(b2) and not peers_of(web),
                     what="unshared")
    assert "100.64.0.2" not in src_ips(filter_of(web))


async def test_policy_file_reload_keeps_previous_on_error(tmp_path: Path, nursery, caplog):
    path = tmp_path / "policy.hujson"
    path.write_text(WEB_FOR_GROUP_X)
    store = await SqliteStore.open(":memory:")
    coord = Coordinator(store, Settings(base_domain="ts.test"), build_derp_map=lambda r: tailcfg.derp_map(r),
                        policy_mode="file", policy_path=str(path))
    await nursery.start(coord.run)
    env = Env(store, coord, ControlHandlers(coord, POLICY), nursery)
    await nursery.start(lambda task_status: policysource.watch_policy_file(coord.policy_source, interval=0.05, task_status=task_status))
    web_m, web = await env.join("web", "alice", ("tag:web",))
    b_m, b = await env.join("b1", "bob")
    b_id = await env.node_id(b_m)
    assert b_id not in peers_of(web)
    path.write_text(WEB_FOR_ALL)
    await eventually(lambda: b_id in peers_of(web), timeout=2, what="file change applied")
    n = len(web.messages())
    path.write_text(WEB_FOR_ALL.replace('"acls"', '"acls" ,,'))  # a syntax error
    await eventually(lambda: "invalid, keeping the previous policy" in caplog.text, timeout=2,
                     what="the broken file read")
    assert "line 4" in caplog.text
    await settled(coord, web)
    assert len(web.messages()) == n + 1 and b_id in peers_of(web)  # nothing changed for clients (but the marker)
    path.write_text(WEB_FOR_ALL.replace("bob@", "nobody@"))
    await eventually(lambda: b_id not in peers_of(web), timeout=2, what="valid file applied again")
    await store.aclose()


async def test_invalid_policies_are_refused_with_the_reason(env):
    users, nodes = await env.store.list_users(), await env.store.list_nodes()
    cases = {
        '{"acls": [,]}': "line 1, column 11",
        '{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}': 'group not found: "group:nope"',
        '{"acls": [{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}]}': 'tag not found: "tag:nope"',
        '{"groups": {"group:x": ["alice@"]}, "acls": [{"action": "accept", "src": ["group:x"], "dst": ["*:22"]}],'
        ' "tests": [{"src": "bob@", "accept": ["alice@:22"]}]}': "tests[0]",
    }
    await env.key("alice")
    await env.key("bob")
    users = await env.store.list_users()
    for text, reason in cases.items():
        with pytest.raises(PolicyError) as exc:
            parse_and_check(text, users, nodes)
        assert reason in str(exc.value), (text, str(exc.value))


async def test_renaming_a_user_changes_what_selectors_naming_it_match(env):
    await env.set_policy(WEB_FOR_GROUP_X)
    web_m, web = await env.join("web", "alice", ("tag:web",))
    a_m, a = await env.join("a1", "alice")
    a_id = await env.node_id(a_m)
    await eventually(lambda: a_id in peers_of(web))
    n = len(env.coord.sessions.by_node)
    alice = await env.store.get_user_by_name("alice")
    await env.store.rename_user(alice.id, "alicia")  # "alice@" in group:x no longer names her
    await eventually(lambda: a_id not in peers_of(web) and filter_of(web) == [], what="renamed user loses access")
    assert len(env.coord.sessions.by_node) == n
    # creating a user (no nodes yet) costs no resync and changes nothing
    before = len(web.messages())
    await env.store.create_user("alice")
    await settled(env.coord, web)
    assert len(web.messages()) == before + 1  # the marker's only


# -- consistency: after any node change, every session holds exactly what a fresh map would say ---

CONSISTENCY_POLICIES = [
    None,
    '{"acls": []}',
    """{"groups": {"group:a": ["u0@", "u1@"]}, "tagOwners": {"tag:web": ["u0@"], "tag:db": ["u0@"]},
        "acls": [{"action": "accept", "src": ["group:a"], "dst": ["tag:web:80"]},
                 {"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]},
                 {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}""",
    """{"tagOwners": {"tag:web": ["u0@"], "tag:db": ["u0@"]},
        "grants": [{"src": ["u2@"], "dst": ["tag:db"], "ip": ["tcp:22"]},
                   {"src": ["autogroup:member"], "dst": ["tag:web"], "app": {"tailscale.com/cap/relay": [{}]}}]}""",
    # routers: tag:db nodes route 10.1.0.0/16; u1's traffic for it goes via the tag:web ones
    """{"tagOwners": {"tag:web": ["u0@"], "tag:db": ["u0@"]},
        "grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]},
                   {"src": ["autogroup:member"], "dst": ["10.1.0.0/16"], "ip": ["*"]},
                   {"src": ["u1@"], "dst": ["10.1.0.0/16"], "via": ["tag:web"], "ip": ["*"]}]}""",
    # tag:db nodes are IPv6 only, for themselves and for everyone who sees them
    """{"tagOwners": {"tag:web": ["u0@"], "tag:db": ["u0@"]},
        "nodeAttrs": [{"target": ["tag:db"], "attr": ["disable-ipv4"]}],
        "grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}]}""",
]


def _fake_coordinator(nodes, users, text):
    from trioscale.services.coord.sessions import MapSession
    from trioscale.shared.domain.fanout import first_map
    from trioscale.shared.domain.policy import Policy

    coord = Coordinator(None, Settings(base_domain="ts.test"), build_derp_map=lambda r: tailcfg.derp_map(r))  # type: ignore[arg-type]
    coord.tailnet.users = {u.id: u for u in users}
    coord.tailnet.nodes = {n.id: n for n in nodes}
    coord.policy.load(users, nodes, [], Policy.parse(text) if text else None, text, None)
    now = coord.now()
    for n in nodes:
        session = MapSession(n.id, None)
        first_map(coord.tailnet, session, now)
        coord.sessions.add(session)
    return coord


def _assert_consistent(coord, what):
    tailnet = coord.tailnet
    for vid, sessions in coord.sessions.by_node.items():
        viewer = tailnet.nodes[vid]
        for s in sessions:
            want_sent = {p.id for p in tailnet.visible_peers(viewer)}
            assert set(s.sent) == want_sent, (what, vid, set(s.sent) ^ want_sent)
            assert s.filter == tailnet.packet_filter(viewer), (what, vid)
            for pid in s.sent:  # the viewer-specific picture of every peer (None: the plain node)
                want = tailnet.peer_view(vid, tailnet.nodes[pid])
                assert s.views.get(pid) == want, (what, vid, pid, s.views.get(pid), want)


@pytest.mark.parametrize("text", CONSISTENCY_POLICIES, ids=["none", "deny", "acls", "grants", "via", "ipv4-off"])
def test_sessions_stay_consistent_through_node_changes(text):
    import random

    from trioscale.shared.model import Node, User

    rng = random.Random(7)
    users = [User(id=i + 1, name=f"u{i}") for i in range(4)]
    tag_sets = [(), (), ("tag:web",), ("tag:db",)]

    def node(i, user, tags):
        # every third node routes 10.1.0.0/16 (approved), so route views and HA/via choices move too
        routes = ("10.1.0.0/16",) if i % 3 == 0 else ()
        return Node(id=i, machine_key=bytes([i]) * 32, node_key=bytes([i + 100]) * 32, user_id=user,
                    hostname=f"n{i}", given_name=f"n{i}", ipv4=f"100.64.0.{i}", ipv6=f"fd7a:115c:a1e0::{i:x}",
                    disco_key=bytes([i + 50]) * 32, tags=tags,
                    hostinfo={"RoutableIPs": list(routes)} if routes else {}, approved_routes=routes)

    nodes = [node(i, rng.randrange(1, 5), rng.choice(tag_sets)) for i in range(1, 16)]
    coord = _fake_coordinator(nodes, users, text)
    _assert_consistent(coord, "start")
    next_id = 16
    for step in range(40):
        kind = rng.choice(["tag", "user", "new", "untag"])
        if kind == "new":
            new = node(next_id, rng.randrange(1, 5), rng.choice(tag_sets))
            next_id += 1
            old = None
        else:
            old = coord.tailnet.nodes[rng.choice(sorted(coord.tailnet.nodes))]
            if kind == "tag":
                new = old.replace(tags=rng.choice(tag_sets[2:]))
            elif kind == "untag":
                new = old.replace(tags=())
            else:
                new = old.replace(user_id=rng.randrange(1, 5))
        from trioscale.shared.domain.fanout import NodeSet, fan_out, first_map

        coord.sessions.deliver(fan_out(coord.tailnet, coord.sessions.by_node, NodeSet(new), coord.now()))
        if old is None:  # a new node connects too
            from trioscale.services.coord.sessions import MapSession

            session = MapSession(new.id, None)
            first_map(coord.tailnet, session, coord.now())
            coord.sessions.add(session)
        _assert_consistent(coord, f"step {step}: {kind} node {new.id}")


def test_sessions_stay_consistent_through_policy_changes():
    import itertools
    import random

    from trioscale.shared.domain.policy import Policy
    from trioscale.shared.model import Node, User

    rng = random.Random(11)
    users = [User(id=i + 1, name=f"u{i}") for i in range(4)]
    tag_sets = [(), (), ("tag:web",), ("tag:db",)]
    nodes = [Node(id=i, machine_key=bytes([i]) * 32, node_key=bytes([i + 100]) * 32, user_id=rng.randrange(1, 5),
                  hostname=f"n{i}", given_name=f"n{i}", ipv4=f"100.64.0.{i}", ipv6=f"fd7a:115c:a1e0::{i:x}",
                  disco_key=bytes([i + 50]) * 32, tags=rng.choice(tag_sets)) for i in range(1, 21)]
    coord = _fake_coordinator(nodes, users, None)
    for a, b in itertools.permutations(CONSISTENCY_POLICIES, 2):
        for text in (a, b):
            coord.install_policy(Policy.parse(text) if text else None, text)
            _assert_consistent(coord, f"policy {text!r}")


def test_filter_json_is_the_plain_encoding_with_shared_sources_encoded_once():
    from hypothesis import given
    from hypothesis import strategies as st

    from trioscale.shared.domain.fanout import dumps as _dumps, filter_json as _filter_json

    ips = st.lists(st.sampled_from(["100.64.0.1", "fd7a:115c:a1e0::1", "*", "10.0.0.0/8", "é"]), max_size=5)
    rule = st.fixed_dictionaries(
        {"SrcIPs": ips},
        optional={"DstPorts": st.lists(st.fixed_dictionaries({"IP": st.text(max_size=5),
                                                             "Ports": st.fixed_dictionaries({"First": st.integers(0, 65535), "Last": st.integers(0, 65535)})}), max_size=3),
                  "IPProto": st.lists(st.integers(0, 255), max_size=3),
                  "CapGrant": st.lists(st.fixed_dictionaries({"Dsts": ips, "CapMap": st.dictionaries(st.text(max_size=8), st.none())}), max_size=2)})

    @given(st.lists(rule, max_size=4))
    def same_text(filt):
        keys: dict = {}
        assert _filter_json(keys, filt) == _dumps(filt)
        shared = filt + filt  # the same SrcIPs lists twice: encoded from the cache the second time
        assert _filter_json(keys, shared) == _dumps(shared)

    same_text()
