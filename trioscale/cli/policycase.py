"""What `trioscale debug policy-case FILE -o json` computes: one policy conformance case run through the engine.

`run_case(path)` returns what the engine computes, in the shape of the case's `expect` (hostname →
packet_filter_rules, peers, ssh_policy, self_cap_map, self_allowed_ips, self_primary_routes) plus
two top-level keys, `"accepted"` (bool) and `"error"` (the rejection reason or None). When the
policy is rejected only those two keys are present. `python -m trioscale.cli.policycase FILE` prints it as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.policy import (
    NodeInfo,
    Policy,
    PolicyError,
    UserInfo,
    compile_policy,
)
from trioscale.shared.domain.policy.acltests import run_policy_tests


def node_order(case: dict[str, Any]) -> list[str]:
    """Hostnames in registration order.

    The corpus does not record when each node registered, but Tailscale makes the first
    registered advertiser of a route its primary (HA routes). So nodes that Tailscale reported as
    a primary router come first, the rest follow in the topology's order.
    """
    names = list(case["topology"]["nodes"])
    primaries: set[str] = set()
    for name, exp in (case.get("expect") or {}).items():
        if exp.get("self_primary_routes"):
            primaries.add(name)
        for peer in exp.get("peers") or []:
            if peer.get("PrimaryRoutes"):
                primaries.add(peer["name"])
    return [n for n in names if n in primaries] + [n for n in names if n not in primaries]


#: self capabilities Tailscale's SaaS gives a user's devices by the user's tailnet role
ROLE_CAPS = {tailcfg.CAP_IS_OWNER: "owner", tailcfg.CAP_IS_ADMIN: "admin"}


def user_roles(case: dict[str, Any]) -> dict[str, set[str]]:
    """Tailnet roles by user name. The corpus does not list them, but each user's (untagged)
    devices carry is-owner / is-admin in their own CapMap, which is where the roles show."""
    out: dict[str, set[str]] = {}
    nodes = case["topology"]["nodes"]
    for name, exp in (case.get("expect") or {}).items():
        n = nodes.get(name) or {}
        if n.get("tags") or not n.get("user"):
            continue
        for cap, role in ROLE_CAPS.items():
            if cap in (exp.get("self_cap_map") or {}):
                out.setdefault(n["user"], set()).add(role)
    return out


def build_tailnet(case: dict[str, Any]) -> tuple[list[UserInfo], list[NodeInfo], dict[int, str]]:
    topo = case["topology"]
    roles = user_roles(case)
    users = [UserInfo(id=u["id"], name=u["name"], email=u.get("email", ""),
                      roles=tuple(sorted(roles.get(u["name"], ())))) for u in topo["users"]]
    by_name = {u.name: u.id for u in users}
    nodes = []
    names: dict[int, str] = {}
    for i, name in enumerate(node_order(case), start=1):
        n = topo["nodes"][name]
        tags = tuple(n.get("tags") or ())
        nodes.append(
            NodeInfo(
                id=i,
                name=name,
                user_id=None if tags else by_name.get(n.get("user", "")),
                tags=tags,
                ipv4=n.get("ipv4"),
                ipv6=n.get("ipv6"),
                routable_ips=tuple(n.get("routable_ips") or ()),
                approved_routes=tuple(n.get("approved_routes") or ()),
            )
        )
        names[i] = name
    return users, nodes, names


def run_case(path: str | Path) -> dict[str, Any]:
    case = json.loads(Path(path).read_text())
    users, nodes, names = build_tailnet(case)
    text = case["policy"]
    out: dict[str, Any] = {"accepted": True, "error": None}
    try:
        policy = Policy.parse(text)
        compiled = compile_policy(policy, users, nodes)
        run_policy_tests(compiled)
    except PolicyError as exc:
        out["accepted"] = False
        out["error"] = exc.message
        return out
    for node in nodes:
        nid = node.id
        peers = []
        for pid in sorted(compiled.visible_peers(nid), key=lambda i: names[i]):
            peers.append(
                {
                    "name": names[pid],
                    "AllowedIPs": sorted(compiled.allowed_ips(nid, pid)),
                    "PrimaryRoutes": sorted(compiled.peer_primary_routes(nid, pid)),
                    "CapMap": compiled.peer_cap_map(nid, pid),
                }
            )
        out[names[nid]] = {
            "packet_filter_rules": compiled.packet_filter(nid),
            "peers": peers,
            "ssh_policy": compiled.ssh_policy(nid),
            "self_cap_map": compiled.cap_map(nid),
            "self_allowed_ips": sorted(compiled.self_allowed_ips(nid)),
            "self_primary_routes": sorted(compiled.primary_routes(nid)),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trioscale.cli.policycase CASE.json", file=sys.stderr)
        return 2
    json.dump(run_case(args[0]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
