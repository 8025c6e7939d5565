"""`ssh` rules → the tailcfg.SSHPolicy each destination node is sent.

Per destination node, in policy order, every rule whose dst covers the node becomes SSHRules whose
principals are the source nodes' addresses ({"nodeIP": ...}). `users` becomes sshUsers: each
listed login maps to itself, `autogroup:nonroot` is {"*": "="}, and root is denied ("root": "")
unless listed. `check` rules hand the decision to the control server (holdAndDelegate) and are
sent ahead of `accept` rules.

`localpart:*@domain` splits a rule per source user: each user's devices get the plain rule plus
one mapping the user's local part to itself when the user's e-mail is in that domain; tagged
sources share one plain rule. Such a rule also reaches the source nodes themselves (see
`_self_access`). The domain must be the tailnet's own (`check_tailnet_domains`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from .errors import PolicyError
from .model import Alias, SSHRule, UserInfo


class Compiled(Protocol):
    """What SSH rules read of a compiled policy (compile.CompiledPolicy, which calls in here)."""

    p: Any
    net: Any
    _node_cache: dict[Any, Any]

    def alias_nodes(self, alias: Alias) -> Any: ...

ACCEPT_ACTION = {
    "accept": True,
    "allowAgentForwarding": True,
    "allowLocalPortForwarding": True,
    "allowRemotePortForwarding": True,
}
#: where a destination node asks about a session a `check` rule holds (services/coord/sshcheck.py)
ACTION_PATH = "/machine/ssh/action/{src}/to/{dst}"
CHECK_URL = "{base}" + ACTION_PATH.format(src="$SRC_NODE_ID", dst="$DST_NODE_ID") + "?local_user=$LOCAL_USER"
LOCALPART = "localpart:"
NOT_ASSOCIATED = "{} is not associated with this Tailnet and cannot be used in user:*@<domain> expressions"


def localpart_domain(user: str) -> str | None:
    """The domain of a well-formed `localpart:*@<domain>`, else None.

    Tailscale takes any other `localpart:` spelling (no @, an empty domain, a local part other
    than `*`) as a literal login name, so those are not errors but plain users."""
    if not user.startswith(LOCALPART):
        return None
    local, at, domain = user[len(LOCALPART):].rpartition("@")
    if not at or local != "*" or not domain:
        return None
    return domain


def _action(rule: SSHRule, control_url: str) -> dict[str, Any]:
    if rule.action == "check":
        return {"holdAndDelegate": CHECK_URL.format(base=control_url.rstrip("/"))}
    return dict(ACCEPT_ACTION)


def _ssh_users(rule: SSHRule) -> dict[str, str]:
    users: dict[str, str] = {}
    for u in rule.users:
        if u == "autogroup:nonroot":
            users["*"] = "="
        elif localpart_domain(u) is None:
            users[u] = u
    users.setdefault("root", "")
    return users


def _email_local_part(user: UserInfo | None, domains: set[str]) -> str | None:
    if user is None or not user.email:
        return None
    local, _, domain = user.email.rpartition("@")
    return local if local and domain.lower() in domains else None


@dataclass(frozen=True, slots=True)
class _Sources:
    """A rule's source nodes as Tailscale groups them: per user (by id) and the tagged ones."""

    by_user: dict[int, tuple[int, ...]]
    tagged: tuple[int, ...]
    all: frozenset[int]
    #: autogroup:tagged is the concatenation of every tag's member list, so a node listed under N
    #: tags appears N times among the principals (the captures show the repeats)
    repeat_per_tag: bool


def _sources(c: Compiled, index: int, rule: SSHRule) -> _Sources:
    key = ("ssh-sources", index)
    got = c._node_cache.get(key)
    if got is None:  # per tailnet state, like the other node caches (dropped on every change)
        nodes = set().union(*(c.alias_nodes(a) for a in rule.srcs))
        by_user: dict[int, list[int]] = {}
        tagged = []
        for nid in sorted(nodes):
            info = c.net.nodes[nid].info
            if info.tags:
                tagged.append(nid)
            elif info.user_id is not None:
                by_user.setdefault(info.user_id, []).append(nid)
        repeat = any(a.kind == "autogroup" and a.value == "tagged" for a in rule.srcs)
        got = _Sources({u: tuple(n) for u, n in sorted(by_user.items())}, tuple(tagged), frozenset(nodes), repeat)
        c._node_cache[key] = got
    return got


class _RuleEmitter:
    """Builds the SSHRules one policy rule gives one destination node."""

    def __init__(self, c: Compiled, rule: SSHRule, control_url: str) -> None:
        self.c = c
        self.rule = rule
        self.action = _action(rule, control_url)
        self.users = _ssh_users(rule)
        self.domains = {d.lower() for u in rule.users if (d := localpart_domain(u)) is not None}
        self.out: list[dict[str, Any]] = []

    def principals(self, nodes: Iterable[int], repeat_per_tag: bool = False) -> list[dict[str, str]]:
        out = []
        for nid in nodes:
            st = self.c.net.nodes[nid]
            times = len(st.info.tags) if repeat_per_tag and st.info.tags else 1
            out += [{"nodeIP": ip} for _ in range(times) for ip in st.ips]
        return out

    def _rule(self, principals: list[dict[str, str]], users: dict[str, str]) -> None:
        r: dict[str, Any] = {"principals": principals, "sshUsers": users, "action": dict(self.action)}
        if self.rule.accept_env:
            r["acceptEnv"] = list(self.rule.accept_env)
        self.out.append(r)

    def emit(self, principals: list[dict[str, str]], user_id: int | None = None) -> None:
        """The plain rule, then (first match wins, so after it) the user's local-part mapping."""
        if not principals:
            return
        self._rule(list(principals), dict(self.users))
        if user_id is not None and self.domains:
            local = _email_local_part(self.c.net.users.get(user_id), self.domains)
            if local is not None:
                self._rule(list(principals), {local: local})

    def emit_user(self, src: _Sources, user_id: int) -> None:
        self.emit(self.principals(src.by_user.get(user_id, ())), user_id)

    def emit_all(self, src: _Sources) -> None:
        if self.domains:  # one rule pair per user, so each gets only their own local part
            for uid in src.by_user:
                self.emit_user(src, uid)
            self.emit(self.principals(src.tagged, src.repeat_per_tag))
            return
        users_nodes = [nid for nodes in src.by_user.values() for nid in nodes]
        self.emit(self.principals(users_nodes) + self.principals(src.tagged, src.repeat_per_tag))


def _is_self(a: Any) -> bool:
    return a.kind == "autogroup" and a.value == "self"


def _self_access(em: _RuleEmitter, src: _Sources, node_id: int) -> None:
    """A localpart rule also reaches a source node that is not among its destinations.

    Tailscale does this (every localpart capture shows it; plain rules never do): a tagged source
    gets one plain rule from its own addresses, a user's device the rule pair from its user's
    source devices."""
    info = em.c.net.nodes[node_id].info
    if info.tags:
        em.emit(em.principals([node_id]))
    elif info.user_id is not None:
        em.emit_user(src, info.user_id)


def _rules_for(c: Compiled, index: int, rule: SSHRule, node_id: int, control_url: str) -> list[dict[str, Any]]:
    src = _sources(c, index, rule)
    if not src.all:
        return []
    info = c.net.nodes[node_id].info
    em = _RuleEmitter(c, rule, control_url)
    if any(_is_self(a) for a in rule.dsts) and not info.tags and info.user_id is not None:
        em.emit_user(src, info.user_id)
    others = [a for a in rule.dsts if not _is_self(a)]
    if others:
        if any(a.kind == "wildcard" or node_id in c.alias_nodes(a) for a in others):
            em.emit_all(src)
        elif em.domains and node_id in src.all:
            _self_access(em, src, node_id)
    return em.out


def ssh_policy(c: Compiled, node_id: int, control_url: str = "https://unused") -> dict[str, Any]:
    p = c.p
    rules: list[dict[str, Any]] = []
    if p is None:
        return {"rules": rules}
    for index, rule in enumerate(p.ssh):
        rules += _rules_for(c, index, rule, node_id, control_url)
    # the most restrictive first: a session a check rule covers must be checked even when a later
    # accept rule would let it in (Tailscale orders them so regardless of the policy's order)
    rules.sort(key=lambda r: "holdAndDelegate" not in r["action"])
    return {"rules": rules}


def tailnet_domain(users: Iterable[UserInfo]) -> str | None:
    """The domain of the tailnet: its owner's e-mail domain, None when no owner is known.

    On Tailscale a tailnet belongs to a domain (the owner's, for a personal one); users invited
    from elsewhere do not make theirs part of it. A self-hosted tailnet without an owner has no
    such domain, and then nothing is refused."""
    for user in users:
        if "owner" in user.roles and "@" in user.email:
            return user.email.rpartition("@")[2]
    return None


def check_tailnet_domains(c: Compiled) -> None:
    """Refuse `user:*@<domain>` sources and `localpart:*@<domain>` users outside the tailnet's
    domain. The comparison is exact: Tailscale refuses even a differently cased spelling."""
    own = tailnet_domain(c.net.users.values())
    if c.p is None or own is None:
        return
    for rule in c.p.ssh:
        for a in rule.srcs:
            if a.kind == "user" and a.value.startswith("*@") and a.value[2:] != own:
                raise PolicyError("[ssh] " + NOT_ASSOCIATED.format(a.value[2:]))
        for u in rule.users:
            domain = localpart_domain(u)
            if domain is not None and domain != own:
                raise PolicyError(NOT_ASSOCIATED.format(domain))
