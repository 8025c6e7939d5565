"""`ssh` rules → the tailcfg.SSHPolicy each destination node is sent.

Per destination node, in policy order, every rule whose dst covers the node becomes one
SSHRule whose principals are the source nodes' addresses ({"nodeIP": ...}). `users` becomes
sshUsers: each listed login maps to itself, `autogroup:nonroot` is {"*": "="}, and root is
denied ("root": "") unless listed. `localpart:*@domain` splits the rule per source node: the node
gets the plain rule plus one mapping its user's local part to itself when the user's email is in
that domain. `check` rules hand the decision to the control server (holdAndDelegate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .model import SSHRule

if TYPE_CHECKING:  # pragma: no cover
    from .compile import CompiledPolicy

ACCEPT_ACTION = {
    "accept": True,
    "allowAgentForwarding": True,
    "allowLocalPortForwarding": True,
    "allowRemotePortForwarding": True,
}
CHECK_URL = "{base}/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"


def _action(rule: SSHRule, control_url: str) -> dict[str, Any]:
    if rule.action == "check":
        return {"holdAndDelegate": CHECK_URL.format(base=control_url.rstrip("/"))}
    return dict(ACCEPT_ACTION)


def _ssh_users(rule: SSHRule) -> dict[str, str]:
    users: dict[str, str] = {}
    for u in rule.users:
        if u == "autogroup:nonroot":
            users["*"] = "="
        elif u.startswith("localpart:*@"):
            continue
        else:
            users[u] = u
    users.setdefault("root", "")
    return users


def ssh_policy(c: "CompiledPolicy", node_id: int, control_url: str = "https://unused") -> dict[str, Any]:
    p = c.p
    rules: list[dict[str, Any]] = []
    if p is None:
        return {"rules": rules}
    st = c.net.nodes[node_id]
    for rule in p.ssh:
        src_nodes = set().union(*(c.alias_nodes(a) for a in rule.srcs))
        principals_nodes: set[int] = set()
        for a in rule.dsts:
            if a.kind == "autogroup" and a.value == "self":
                if not st.info.tags and st.info.user_id is not None:
                    principals_nodes |= src_nodes & c.net.by_user.get(st.info.user_id, set())
            elif a.kind == "wildcard" or node_id in c.alias_nodes(a):
                principals_nodes |= src_nodes
        if not principals_nodes:
            continue
        action = _action(rule, control_url)
        users = _ssh_users(rule)
        domains = [u[len("localpart:*@"):].lower() for u in rule.users if u.startswith("localpart:*@")]

        def mk(nodes: list[int], ssh_users: dict[str, str]) -> dict[str, Any]:
            r: dict[str, Any] = {
                "principals": [
                    {"nodeIP": ip} for nid in nodes for ip in c.net.nodes[nid].ips
                ],
                "sshUsers": ssh_users,
                "action": dict(action),
            }
            if rule.accept_env:
                r["acceptEnv"] = list(rule.accept_env)
            return r

        ordered = sorted(principals_nodes)
        if not domains:
            rules.append(mk(ordered, users))
            continue
        for nid in ordered:
            rules.append(mk([nid], dict(users)))
            info = c.net.nodes[nid].info
            user = c.net.users.get(info.user_id) if info.user_id is not None and not info.tags else None
            if user is not None and user.email:
                local, _, domain = user.email.partition("@")
                if domain.lower() in domains:
                    rules.append(mk([nid], {local: local}))
    return {"rules": rules}
