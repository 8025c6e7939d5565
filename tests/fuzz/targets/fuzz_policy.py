"""HuJSON policy: shared/domain/policy/hujson.py, then the policy parser and compiler as the
coordinator uses them (policy.host.parse_and_check, then PolicyHost answering every map question).

Invariants: only PolicyError escapes hujson.loads and parse_and_check (that is what the admin API
turns into a 400 with line and column); a value hujson accepts round-trips through JSON text; an
accepted policy compiles and answers packet filter, SSH policy, cap map and peer views for every node
without raising.
"""

from __future__ import annotations

import json

from trioscale.shared.domain.policy import hujson
from trioscale.shared.domain.policy.errors import PolicyError
from trioscale.shared.domain.policy.host import PolicyHost, parse_and_check
from trioscale.shared.model import Node, User

INSTRUMENT = ("trioscale.shared.domain.policy",)
MAX_LEN = 4096  # real policies are larger, but every construct fits in a few KB

_USERS = [User(1, "alice", email="alice@example.com"), User(2, "bob", email="bob@example.com")]
_NODES = [
    Node(1, b"m" * 32, b"n" * 32, 1, "laptop", "laptop", "100.64.0.1", "fd7a:115c:a1e0::1"),
    Node(2, b"M" * 32, b"N" * 32, 2, "server", "server", "100.64.0.2", "fd7a:115c:a1e0::2", tags=("tag:prod",),
         hostinfo={"RoutableIPs": ["10.0.0.0/24", "0.0.0.0/0", "::/0"]}, approved_routes=("10.0.0.0/24",)),
    Node(3, b"x" * 32, b"y" * 32, 1, "router", "router", "100.64.0.3", None,
         hostinfo={"RoutableIPs": ["10.0.0.0/24"]}),
]


def test_one_input(data: bytes) -> None:
    try:
        value = hujson.loads(data)
    except PolicyError:
        return
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError:  # an overflowing float became inf: JSON has no spelling for it
        text = None
    if text is not None:
        assert hujson.loads(text) == value
    try:
        policy = parse_and_check(data.decode("utf-8"), _USERS, _NODES)
    except PolicyError:
        return
    host = PolicyHost(online=lambda: {1, 2, 3})
    host.load(_USERS, _NODES, [], policy, data.decode("utf-8"), 1)
    for node in _NODES:
        host.visible_ids(node.id)
        host.packet_filter(node.id)
        host.ssh_policy(node.id, "https://control.example")
        host.self_cap_map(node.id)
        host.self_view(node.id)
        host.auto_approved(node)
        host.tags_not_permitted(node.user_id, ("tag:prod", "tag:dev"))
        for peer in _NODES:
            if peer.id != node.id:
                host.can_see(node, peer)
                host.peer_view(node.id, peer.id)


def seeds() -> list[bytes]:
    return [
        b'{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}',
        b"""{
  // groups, tags, hosts
  "groups": {"group:eng": ["alice@example.com", "bob@"]},
  "tagOwners": {"tag:prod": ["group:eng"], "tag:dev": ["autogroup:admin"]},
  "hosts": {"lan": "10.0.0.0/24"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:prod:22,443", "lan:80-90"], "proto": "tcp"},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
  ],
  "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:prod"]}, "exitNode": ["alice@example.com"]},
  "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot", "root"], "checkPeriod": "12h"}],
  "nodeAttrs": [{"target": ["*"], "attr": ["funnel"]}],
  "tests": [{"src": "alice@example.com", "accept": ["100.64.0.2:22"], "deny": ["100.64.0.2:23"]}],
}""",
        b'{"tagOwners": {"tag:prod": ["alice@example.com"]}, "grants": [{"src": ["*"], "dst": ["tag:prod"], "ip": ["tcp:443", "icmp:*"], "app": {"example.com/cap/x": [{"a": 1}]}}]}',
        b'/* deny all */ {"acls": [], "randomizeClientPort": true, "disableIPv4": false,}',
        b'{"tagOwners": {"tag:prod": []}, "ssh": [{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:prod"], "users": ["root"]}],'
        b' "sshTests": [{"src": "bob@example.com", "dst": ["tag:prod"], "accept": ["root"]}]}',
    ]
