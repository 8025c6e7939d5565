"""The policy engine's API on small tailnets (the corpus covers Tailscale's semantics at large)."""

from __future__ import annotations

import json

from trioscale.shared.domain.policy import NodeInfo, Policy, UserInfo, compile_policy

USERS = [UserInfo(1, "alice", "alice@example.com"), UserInfo(2, "bob", "bob@example.com")]


def node(i: int, user: int | None = None, tags: tuple[str, ...] = (), **kw) -> NodeInfo:
    return NodeInfo(i, f"n{i}", user, tags, f"100.64.0.{i}", f"fd7a:115c:a1e0::{i}", **kw)


NODES = [node(1, 1), node(2, 1), node(3, 2), node(4, tags=("tag:srv",)),
         node(5, tags=("tag:router",), routable_ips=("10.1.0.0/16", "0.0.0.0/0", "::/0"))]


def compiled(policy: dict | None):
    return compile_policy(Policy.parse(json.dumps(policy)) if policy is not None else None, USERS, NODES)


def test_no_policy_allows_all() -> None:
    c = compiled(None)
    assert c.visible_peers(1) == {2, 3, 4, 5}
    assert c.packet_filter(1)[0]["DstPorts"] == [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]


def test_empty_acls_deny_all() -> None:
    c = compiled({"acls": []})
    assert c.packet_filter(1) == []
    assert c.visible_peers(1) == set()


def test_autogroup_self_only_same_user_untagged() -> None:
    c = compiled({"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:22"]}]})
    assert c.visible_peers(1) == {2}
    assert c.visible_peers(3) == set()
    (rule,) = c.packet_filter(1)
    assert sorted(rule["SrcIPs"]) == ["100.64.0.1", "100.64.0.2", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"]
    assert c.packet_filter(4) == []


def test_visibility_is_either_direction() -> None:
    c = compiled({"tagOwners": {"tag:srv": []},
                  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:srv:443"]}]})
    assert c.can_see(1, 4) and c.can_see(4, 1)
    assert not c.can_see(3, 4)
    assert c.packet_filter(1) == []
    assert c.packet_filter(4)[0]["DstPorts"][0] == {"IP": "100.64.0.4", "Ports": {"First": 443, "Last": 443}}


def test_auto_approvers_and_exit_routes_together() -> None:
    c = compiled({"tagOwners": {"tag:router": []},
                  "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:router"]},
                  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]})
    assert c.auto_approved_routes(NODES[4]) == ["10.1.0.0/16", "0.0.0.0/0", "::/0"]
    assert c.primary_routes(5) == ["10.1.0.0/16"]
    assert set(c.allowed_ips(1, 5)) >= {"10.1.0.0/16", "0.0.0.0/0", "::/0"}


def test_incremental_node_change() -> None:
    c = compiled({"tagOwners": {"tag:srv": []},
                  "acls": [{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:srv:*"]}]})
    assert c.visible_peers(4) == {3}
    c.set_node(NodeInfo(6, "n6", 2, (), "100.64.0.6", None))
    assert c.visible_peers(4) == {3, 6}
    c.remove_node(3)
    assert c.visible_peers(4) == {6}
    assert c.with_policy(None).visible_peers(4) == {1, 2, 5, 6}


# -- via grants and HA secondaries (the corpus has the rest; it is not in CI) ------------------------

VIA_NODES = [
    node(1, 1), node(2, 2),
    node(3, tags=("tag:hq",), routable_ips=("10.1.0.0/16",), approved_routes=("10.1.0.0/16",)),
    node(4, tags=("tag:eu",), routable_ips=("10.1.0.0/16",), approved_routes=("10.1.0.0/16",)),
    node(5, tags=("tag:eu",), routable_ips=("10.1.0.0/16",), approved_routes=("10.1.0.0/16",)),
    node(6, tags=("tag:eu",), routable_ips=("0.0.0.0/0", "::/0"), approved_routes=("0.0.0.0/0", "::/0")),
    node(7, tags=("tag:hq",), routable_ips=("0.0.0.0/0", "::/0"), approved_routes=("0.0.0.0/0", "::/0")),
]
VIA_POLICY = {
    "tagOwners": {"tag:hq": [], "tag:eu": []},
    "grants": [
        {"src": ["alice@example.com"], "dst": ["10.1.0.0/16"], "ip": ["*"]},
        {"src": ["bob@example.com"], "dst": ["10.0.0.0/8", "tag:hq"], "ip": ["tcp:443"], "via": ["tag:eu"]},
        {"src": ["bob@example.com"], "dst": ["autogroup:internet"], "ip": ["*"], "via": ["tag:eu"]},
    ],
}


def via_compiled(policy: dict = VIA_POLICY):
    return compile_policy(Policy.parse(json.dumps(policy)), USERS, VIA_NODES)


def subnet_from(c, viewer: int) -> list[int]:
    return [p for p in sorted(c.visible_peers(viewer)) if "10.1.0.0/16" in c.peer_primary_routes(viewer, p)]


def test_via_grant_rule_is_on_the_via_routers_only() -> None:
    c = via_compiled()
    bob = ["100.64.0.2", "fd7a:115c:a1e0::2"]
    want = {"SrcIPs": bob, "DstPorts": [{"IP": "10.0.0.0/8", "Ports": {"First": 443, "Last": 443}}], "IPProto": [6]}
    for router in (4, 5):
        assert want in c.packet_filter(router)  # the prefix as written, broader than the route
    assert all(r["SrcIPs"] != bob for r in c.packet_filter(3))  # not via-tagged: nothing for bob
    assert any(d["IP"] == "11.0.0.0/8" for r in c.packet_filter(6) for d in r["DstPorts"])  # internet
    assert all(r["SrcIPs"] != bob for r in c.packet_filter(7))
    # bob sees the via routers, not the other router, and tag:hq as a via dst gives nothing
    assert c.visible_peers(2) == {4, 5, 6}


def test_via_grant_steers_each_source_to_one_via_router() -> None:
    c = via_compiled()
    assert subnet_from(c, 1) == [3]  # alice: the prefix's HA primary
    assert subnet_from(c, 2) == [4]  # bob: the first eu router, though 3 is the HA primary
    assert "0.0.0.0/0" in c.allowed_ips(2, 6)  # bob is offered the eu exit node only
    assert not c.can_see(2, 7)


def test_via_choice_fails_over_to_an_online_router() -> None:
    c = via_compiled()
    c.net.online = {1, 2, 3, 5, 6, 7}  # router 4 is offline
    assert c.via_primary(("tag:eu",), c.net.subnet_routes_of(4)[0]) == 5
    assert subnet_from(c, 2) == [5]


def test_grant_without_via_for_the_same_source_brings_back_the_ha_primary() -> None:
    policy = json.loads(json.dumps(VIA_POLICY))
    policy["grants"].append({"src": ["bob@example.com"], "dst": ["10.1.0.0/16"], "ip": ["*"]})
    c = via_compiled(policy)
    assert subnet_from(c, 2) == [3]


def test_ha_secondary_is_told_the_primary_of_its_own_prefix() -> None:
    c = via_compiled({"tagOwners": {"tag:hq": [], "tag:eu": []},
                      "grants": [{"src": ["tag:eu", "tag:hq"], "dst": ["tag:eu", "tag:hq"], "ip": ["*"]}]})
    assert c.primary_routes(3) == ["10.1.0.0/16"]
    assert subnet_from(c, 4) == [3]  # no grant gives 4 the prefix, but it serves it too
    assert subnet_from(c, 7) == []  # not a router of the prefix: nothing


# -- grant details the captures show -------------------------------------------------------------

def cap_rules(c, node_id: int) -> list[dict]:
    return [r for r in c.packet_filter(node_id) if "CapGrant" in r]


def test_danger_all_source_is_written_as_a_star() -> None:
    c = compiled({"tagOwners": {"tag:srv": []},
                  "grants": [{"src": ["autogroup:danger-all"], "dst": ["tag:srv"], "ip": ["tcp:22"]}]})
    (rule,) = c.packet_filter(4)
    assert rule["SrcIPs"] == ["*"]


def test_user_wildcard_by_domain() -> None:
    users = USERS + [UserInfo(3, "carol", "carol@other.org")]
    nodes = NODES + [node(6, 3)]
    c = compile_policy(Policy.parse(json.dumps(
        {"tagOwners": {"tag:srv": []},
         "grants": [{"src": ["user:*@example.com"], "dst": ["tag:srv"], "ip": ["tcp:22"]}]})), users, nodes)
    (rule,) = c.packet_filter(4)
    assert set(rule["SrcIPs"]) == {f"100.64.0.{i}" for i in (1, 2, 3)} | {f"fd7a:115c:a1e0::{i}" for i in (1, 2, 3)}


def test_app_grant_from_an_empty_group_still_sends_the_capgrant() -> None:
    app = {"example.com/cap/x": [{}]}
    c = compiled({"groups": {"group:none": []}, "grants": [{"src": ["group:none"], "dst": ["*"], "app": app}]})
    assert cap_rules(c, 1) == [{"SrcIPs": [], "CapGrant": [{"Dsts": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
                                                             "CapMap": app}]}]
    assert cap_rules(compiled({"grants": [{"src": [], "dst": ["*"], "app": app}]}), 1) == []


def test_companion_capabilities_one_rule_each_and_self_destinations() -> None:
    c = compiled({"grants": [{"src": ["autogroup:member"], "dst": ["autogroup:self"],
                              "app": {"tailscale.com/cap/drive": [{}], "tailscale.com/cap/relay": [{}]}}]})
    companions = [r for r in cap_rules(c, 1) if None in r["CapGrant"][0]["CapMap"].values()]
    assert sorted(k for r in companions for k in r["CapGrant"][0]["CapMap"]) == [
        "tailscale.com/cap/drive-sharer", "tailscale.com/cap/relay-target"]
    for r in companions:  # from alice's own devices, her autogroup:self
        assert set(r["SrcIPs"]) == {"100.64.0.1", "100.64.0.2", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"}


def test_via_grant_app_capabilities_are_not_sent() -> None:
    c = via_compiled({"tagOwners": {"tag:hq": [], "tag:eu": []},
                      "grants": [{"src": ["*"], "dst": ["10.1.0.0/16"], "via": ["tag:eu"], "ip": ["tcp:80"],
                                  "app": {"example.com/cap/x": [{}]}}]})
    assert cap_rules(c, 4) == [] and c.packet_filter(4)


def test_autogroup_self_is_not_a_node_attribute_target() -> None:
    import pytest

    from trioscale.shared.domain.policy import PolicyError

    with pytest.raises(PolicyError, match="autogroup:self cannot be a target"):
        Policy.parse(json.dumps({"nodeAttrs": [{"target": ["autogroup:self"], "attr": ["randomize-client-port"]}]}))


def test_role_autogroups_follow_user_roles() -> None:
    users = [UserInfo(1, "alice", "alice@example.com", roles=("admin", "owner")), UserInfo(2, "bob", "bob@example.com")]
    c = compile_policy(Policy.parse(json.dumps(
        {"nodeAttrs": [{"target": ["autogroup:admin"], "attr": ["randomize-client-port"]}]})), users, NODES)
    assert "randomize-client-port" in c.cap_map(1) and "randomize-client-port" not in c.cap_map(3)
    assert "randomize-client-port" not in c.cap_map(4)  # tagged: owned by its tags, not by alice


def _ssh_compiled(ssh: list[dict], users: list[UserInfo] | None = None, nodes: list[NodeInfo] | None = None):
    policy = {"tagOwners": {"tag:srv": [], "tag:router": []}, "ssh": ssh}
    return compile_policy(Policy.parse(json.dumps(policy)), users or USERS, nodes or NODES)


def _ssh_view(c, node_id: int) -> list[tuple[list[str], dict, bool]]:
    return [([p["nodeIP"] for p in r["principals"]], r["sshUsers"], "holdAndDelegate" in r["action"])
            for r in c.ssh_policy(node_id)["rules"]]


def test_ssh_localpart_splits_per_user_and_reaches_the_sources_themselves() -> None:
    users = [UserInfo(1, "alice", "alice@example.com"), UserInfo(2, "bob", "bob@example.org")]
    c = _ssh_compiled([{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:srv"],
                        "users": ["localpart:*@example.com"]}], users)
    alice = ["100.64.0.1", "fd7a:115c:a1e0::1", "100.64.0.2", "fd7a:115c:a1e0::2"]
    bob = ["100.64.0.3", "fd7a:115c:a1e0::3"]
    assert _ssh_view(c, 4) == [(alice, {"root": ""}, False), (alice, {"alice": "alice"}, False),
                               (bob, {"root": ""}, False)]
    assert _ssh_view(c, 1) == [(alice, {"root": ""}, False), (alice, {"alice": "alice"}, False)]
    assert _ssh_view(c, 3) == [(bob, {"root": ""}, False)]
    assert _ssh_view(c, 5) == []  # neither a destination nor a source


def test_ssh_check_rules_come_first_and_autogroup_tagged_repeats_per_tag() -> None:
    nodes = NODES[:4] + [node(5, tags=("tag:srv", "tag:router"))]
    c = _ssh_compiled([{"action": "accept", "src": ["autogroup:tagged"], "dst": ["tag:srv"], "users": ["root"]},
                       {"action": "check", "src": ["bob@example.com"], "dst": ["tag:srv"], "users": [" root"]}],
                      nodes=nodes)
    tagged = ["100.64.0.4", "fd7a:115c:a1e0::4"] + ["100.64.0.5", "fd7a:115c:a1e0::5"] * 2
    assert _ssh_view(c, 4) == [(["100.64.0.3", "fd7a:115c:a1e0::3"], {"root": "root"}, True),
                               (tagged, {"root": "root"}, False)]


def test_ssh_malformed_localpart_is_a_literal_login() -> None:
    from trioscale.shared.domain.policy.ssh import localpart_domain

    assert localpart_domain("localpart:*@example.com") == "example.com"
    for literal in ("localpart:*@", "localpart:*", "localpart:x@example.com", "root"):
        assert localpart_domain(literal) is None
    c = _ssh_compiled([{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:srv"], "users": ["localpart:*@"]}])
    assert _ssh_view(c, 4) == [(["100.64.0.3", "fd7a:115c:a1e0::3"], {"localpart:*@": "localpart:*@", "root": ""}, False)]


def test_ssh_domains_must_be_the_owners() -> None:
    import pytest

    from trioscale.shared.domain.policy import PolicyError
    from trioscale.shared.domain.policy.ssh import check_tailnet_domains

    owned = [UserInfo(1, "alice", "alice@example.com", roles=("owner",)), UserInfo(2, "bob", "bob@example.org")]
    ok = {"action": "accept", "src": ["user:*@example.com"], "dst": ["tag:srv"], "users": ["localpart:*@example.com"]}
    check_tailnet_domains(_ssh_compiled([ok], owned))
    for bad in ({**ok, "src": ["user:*@example.org"]}, {**ok, "users": ["localpart:*@EXAMPLE.COM"]}):
        with pytest.raises(PolicyError, match="is not associated with this Tailnet"):
            check_tailnet_domains(_ssh_compiled([bad], owned))
        check_tailnet_domains(_ssh_compiled([bad]))  # no owner, no tailnet domain: nothing to refuse


def test_a_wildcard_class_sees_every_node_as_it_stands() -> None:
    c = compiled({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]})
    net = c.net
    peers = c.class_peers(c.visibility_class(1))
    assert peers is net.every_node  # the live view, not a copy made at each join
    c.set_node(node(6, 2))
    assert 6 in c.class_peers(c.visibility_class(1)) and len(peers) == 6
    assert net.id_mask == sum(1 << i for i in range(1, 7))
    c.set_node(node(6, 1))  # set again: the same nodes, no departure
    assert net.departures == 0 and net.id_mask == sum(1 << i for i in range(1, 7))
    c.remove_node(2)
    assert net.departures == 1 and net.id_mask == sum(1 << i for i in (1, 3, 4, 5, 6))
    assert c.visible_peers(1) == {3, 4, 5, 6}
    narrow = compiled({"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["bob@example.com:*"]}]})
    assert narrow.class_peers(narrow.visibility_class(1)) == frozenset({3})
