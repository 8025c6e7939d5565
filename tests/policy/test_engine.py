"""The policy engine's API on small tailnets (the corpus covers Tailscale's semantics at large)."""

from __future__ import annotations

import json

from trioscale.services.coord.domain.policy import NodeInfo, Policy, UserInfo, compile_policy

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
