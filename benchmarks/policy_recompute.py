#!/usr/bin/env python3
"""Policy recompute: how long the coordinator takes, with N nodes each holding a map session, to work
out and queue every node's update after (a) one policy change and (b) one node joining.

Run by hand (not a test). Everything is in memory and goes through the coordinator's own code: a
`Coordinator` whose Tailnet holds N nodes, N map sessions registered as `open_session` would leave
them (announced peers, last PacketFilter / SSHPolicy, router views), then

* policy change: `parse_and_check` (what the admin API does before storing a version: parse,
  compile against the tailnet, run the policy's tests), then `Coordinator.install_policy` (swap the
  compiled policy, diff every session, queue the messages), then encoding every distinct queued
  message (JSON; identical messages are encoded once);
* node join: `fanout.fan_out(..., NodeSet(node), ...)` as `Coordinator.apply` calls it for "node.created"
  (engine index update, per-session peer deltas, every other node's filter compared and the changed
  ones queued), then encoding.

The tailnet: U users with N/U nodes each, 2 % of nodes tagged tag:web, 1 % tag:db. Policy:
members reach their own devices (autogroup:self), group:eng (half the users) reaches tag:web:80,443,
tag:web reaches tag:db:5432. The change adds group:ops (a quarter of the users) to tag:web:22.

    .venv/bin/python benchmarks/policy_recompute.py --nodes 1000 10000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

from trioscale.services.coord.coordinator import Coordinator
from trioscale.services.coord.sessions import MapSession, frame
from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.fanout import NodeSet, fan_out, remember_first_map
from trioscale.shared.domain.netmap import Settings
from trioscale.shared.domain.peerset import PeerSet
from trioscale.shared.domain.policy import Policy
from trioscale.shared.domain.policy.host import parse_and_check
from trioscale.shared.model import Node, User

USERS_PER_1000 = 50


def policy_text(users: list[User], change: bool) -> str:
    eng = [f"{u.name}@" for u in users[: len(users) // 2]]
    ops = [f"{u.name}@" for u in users[len(users) // 2: len(users) // 2 + len(users) // 4]]
    acls = [
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
        {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:80,443"]},
        {"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]},
    ]
    if change:
        acls.append({"action": "accept", "src": ["group:ops"], "dst": ["tag:web:22"]})
    doc = {
        "groups": {"group:eng": eng, "group:ops": ops},
        "tagOwners": {"tag:web": ["group:eng"], "tag:db": ["group:eng"]},
        "acls": acls,
        "tests": [{"src": eng[0], "accept": ["tag:web:443"]}],
    }
    return json.dumps(doc, indent=1)


def make_node(i: int, user: User, tags: tuple[str, ...]) -> Node:
    return Node(
        id=i, machine_key=i.to_bytes(32, "big"), node_key=(i + 10**7).to_bytes(32, "big"), user_id=user.id,
        hostname=f"n{i}", given_name=f"n{i}", ipv4=f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}",
        ipv6=f"fd7a:115c:a1e0::{i:x}", disco_key=(i + 2 * 10**7).to_bytes(32, "big"),
        endpoints=("192.0.2.1:41641",), home_derp=900, tags=tags,
    )


def build(n: int) -> tuple[Coordinator, list[User]]:
    coord = Coordinator(None, Settings(base_domain="bench.test"), build_derp_map=lambda r: tailcfg.derp_map(r))  # type: ignore[arg-type]
    nusers = max(4, n * USERS_PER_1000 // 1000)
    users = [User(id=u + 1, name=f"user{u}") for u in range(nusers)]
    coord.tailnet.users = {u.id: u for u in users}
    for i in range(1, n + 1):
        tags: tuple[str, ...] = ()
        if i % 50 == 0:
            tags = ("tag:web",)
        elif i % 100 == 1:
            tags = ("tag:db",)
        coord.tailnet.nodes[i] = make_node(i, users[i % nusers], tags)
    policy = Policy.parse(policy_text(users, change=False))
    coord.policy.load(users, coord.tailnet.nodes.values(), [], policy, None, None)
    coord.tailnet.online.update(coord.tailnet.nodes)
    # N sessions as open_session leaves them (without encoding N first maps)
    tailnet = coord.tailnet
    for nid, node in tailnet.nodes.items():
        session = MapSession(nid, None)
        session.sent = PeerSet(p for p in coord.policy.visible_ids(nid) if p != nid)
        first = {"PacketFilter": tailnet.packet_filter(node), "Node": tailnet.self_json(node, coord.now())}
        ssh = tailnet.ssh_policy(node)
        if ssh is not None:
            first["SSHPolicy"] = ssh
        remember_first_map(tailnet, session, first)
        coord.sessions.add(session)
    return coord, users


def drain(coord: Coordinator) -> tuple[int, int, float, int]:
    """(messages queued, distinct messages, seconds to encode them, bytes of one distinct copy each)."""
    t = time.perf_counter()
    total = 0
    distinct: dict[int, int] = {}
    for sessions in coord.sessions.by_node.values():
        for s in sessions:
            for m in s.queue:
                total += 1
                if id(m) not in distinct:
                    distinct[id(m)] = len(frame(m, None))
            s.queue.clear()
    return total, len(distinct), time.perf_counter() - t, sum(distinct.values())


def run(n: int) -> dict:
    t0 = time.perf_counter()
    coord, users = build(n)
    setup = time.perf_counter() - t0
    gc.collect()
    avg_peers = sum(len(s.sent) for ss in coord.sessions.by_node.values() for s in ss) / n

    text = policy_text(users, change=True)
    t = time.perf_counter()
    parse_and_check(text, users, coord.tailnet.nodes.values())
    check = time.perf_counter() - t
    t = time.perf_counter()
    coord.install_policy(Policy.parse(text), text, 2)
    apply = time.perf_counter() - t
    p_total, p_distinct, p_encode, p_bytes = drain(coord)

    new = make_node(n + 1, users[0], ())
    t = time.perf_counter()
    coord.sessions.deliver(fan_out(coord.tailnet, coord.sessions.by_node, NodeSet(new), coord.now()))
    join = time.perf_counter() - t
    j_total, j_distinct, j_encode, j_bytes = drain(coord)

    return {
        "nodes": n, "users": len(users), "setup_s": round(setup, 2), "avg_peers": round(avg_peers, 1),
        "policy_check_s": round(check, 3), "policy_apply_s": round(apply, 3), "policy_encode_s": round(p_encode, 3),
        "policy_total_s": round(check + apply + p_encode, 3), "policy_messages": p_total,
        "policy_distinct": p_distinct, "policy_distinct_bytes": p_bytes,
        "join_apply_s": round(join, 3), "join_encode_s": round(j_encode, 3),
        "join_total_s": round(join + j_encode, 3), "join_messages": j_total, "join_distinct": j_distinct,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    for n in args.nodes:
        result = run(n)
        print(json.dumps(result))
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps({"benchmark": "policy_recompute", **result}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
