"""Compiling a parsed policy against the tailnet: packet filters, peer visibility, routes, caps.

Shape of the work (10,000 nodes in mind):

* `TailnetIndex` keeps the nodes and the indexes every selector is answered from (tag → nodes,
  user → untagged nodes, tagged / untagged sets, effective routes, HA primaries). It is updated per
  node with `set_node` / `remove_node`; nothing is rebuilt from scratch when one node changes.
* `CompiledPolicy` holds the policy's rules in normalised form and, lazily, each rule's resolved
  source set (node ids + SrcIPs strings) and destination set. These caches are dropped when a node
  changes (cheap: they are recomputed from the indexes on the next query, one rule at a time).
* Per-node answers (packet filter, peers, SSH policy, caps) are computed on demand and cached per
  node until the next change.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from typing import Any

from .errors import PolicyError
from .model import (
    ALL_PORTS,
    EXIT_ROUTES,
    Alias,
    IPNetwork,
    IPSpec,
    NodeInfo,
    ParsedPolicy,
    Rule,
    UserInfo,
)
from .parse import parse_policy
from . import ssh

#: how Tailscale writes "every tailnet address" in SrcIPs (the CGNAT range without the
#: 100.115.92.0/23 block it reserves, and the tailnet ULA)
TAILNET_SRC = ("100.64.0.0-100.115.91.255", "100.115.94.0-100.127.255.255", "fd7a:115c:a1e0::/48")
TAILNET_V4 = ipaddress.ip_network("100.64.0.0/10")
TAILNET_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")

#: app capabilities that give the other side a companion capability (the peer relays / shares)
COMPANION_CAPS = {
    "tailscale.com/cap/relay": "tailscale.com/cap/relay-target",
    "tailscale.com/cap/drive": "tailscale.com/cap/drive-sharer",
}

ALLOW_ALL_FILTER = [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]


def _host_text(net: IPNetwork) -> str:
    """A prefix the way Tailscale writes it in SrcIPs / DstPorts: bare address for a single host."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _internet_prefixes() -> tuple[IPNetwork, ...]:
    """Everything but private, CGNAT, link-local, multicast and the tailnet's own ranges."""
    v4_excl = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.168.0.0/16", "224.0.0.0/3",
    ]
    v6_excl = ["fc00::/7", "fe80::/10", "ff00::/8", "::/3", "4000::/2", "8000::/1"]
    out: list[IPNetwork] = []
    for universe, excl in (("0.0.0.0/0", v4_excl), ("::/0", v6_excl)):
        nets = [ipaddress.ip_network(universe)]
        for e in excl:
            en = ipaddress.ip_network(e)
            nxt = []
            for n in nets:
                if n.overlaps(en):
                    if en.subnet_of(n):
                        nxt.extend(n.address_exclude(en))
                    # n inside en: dropped
                else:
                    nxt.append(n)
            nets = nxt
        out.extend(ipaddress.collapse_addresses(nets))  # type: ignore[arg-type]
    return tuple(out)


INTERNET = _internet_prefixes()


class Policy:
    """A parsed, validated policy. `Policy.parse(text)` raises PolicyError(message, line, column)."""

    def __init__(self, parsed: ParsedPolicy, text: str | None = None) -> None:
        self.parsed = parsed
        self.text = text

    @classmethod
    def parse(cls, text: str | bytes | dict[str, Any]) -> "Policy":
        return cls(parse_policy(text), text if isinstance(text, str) else None)


# ---------------------------------------------------------------------------------------------
# the tailnet's indexes
# ---------------------------------------------------------------------------------------------


@dataclass
class _NodeState:
    info: NodeInfo
    addrs: tuple[IPNetwork, ...]  # /32 and /128
    routes: tuple[IPNetwork, ...]  # effective (advertised and approved) routes, exit routes included
    exit: bool  # both exit routes effective
    ips: tuple[str, ...] = ()  # the addresses as text, bare ("100.64.0.1")
    cidrs: tuple[str, ...] = ()  # the addresses as text, with length ("100.64.0.1/32")


@functools.lru_cache(maxsize=1 << 15)
def _host_prefix(addr: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, str]:
    """A node address as its host prefix, the address text and the prefix text. Cached: a node's
    addresses are parsed again at every change of the node, and parsing was a few per cent of a
    registration's CPU."""
    net = ipaddress.ip_network(addr)
    return net, str(net.network_address), str(net)


class TailnetIndex:
    """Users and nodes with the indexes selectors are resolved from; updated per node."""

    def __init__(self, users: Iterable[UserInfo] = (), nodes: Iterable[NodeInfo] = ()) -> None:
        self.users: dict[int, UserInfo] = {}
        self.login: dict[str, int] = {}
        self.nodes: dict[int, _NodeState] = {}
        self.by_tag: dict[str, set[int]] = {}
        self.by_user: dict[int, set[int]] = {}
        self.tagged: set[int] = set()
        self.untagged: set[int] = set()
        self.route_owners: dict[IPNetwork, set[int]] = {}
        self.approve = None  # callable(NodeInfo, network) -> bool, set by the compiled policy
        #: HA primaries chosen by the caller (route -> node id); None = lowest online id wins
        self.primaries: dict[IPNetwork, int] | None = None
        #: node ids online now, set by the caller with `primaries` (None = every node counts as online)
        self.online: set[int] | None = None
        self._all_ids: frozenset[int] | None = None
        #: every node's id as a bit (bit i: node i), kept as nodes join and leave
        self.id_mask = 0
        #: how many nodes have left (a node set again does not count)
        self.departures = 0
        #: what a wildcard covers (see _AllIds)
        self.every_node = _AllIds(self)
        for u in users:
            self.set_user(u)
        for n in nodes:
            self.set_node(n)

    def set_user(self, user: UserInfo) -> None:
        if user.id in self.users:  # renamed: its old spellings no longer name it
            for name in [k for k, v in self.login.items() if v == user.id]:
                del self.login[name]
        self.users[user.id] = user
        for name in user.login_names():
            self.login[name.lower()] = user.id
        self.login.setdefault(user.name.lower(), user.id)

    def user_id_for(self, token: str) -> int | None:
        t = token.lower()
        if t in self.login:
            return self.login[t]
        return None

    def _routes_of(self, info: NodeInfo) -> tuple[IPNetwork, ...]:
        approved = set()
        for r in info.approved_routes:
            try:
                approved.add(ipaddress.ip_network(r, strict=False))
            except ValueError:
                continue
        out = []
        for r in info.routable_ips:
            try:
                net = ipaddress.ip_network(r, strict=False)
            except ValueError:
                continue
            if net in approved or (self.approve is not None and self.approve(info, net)):
                out.append(net)
        return tuple(out)

    def all_ids(self) -> frozenset[int]:
        """Every node's id (what a wildcard covers), kept until a node joins or leaves: a
        node's other changes, most of a join storm's, do not copy the tailnet's ids again."""
        ids = self._all_ids
        if ids is None:
            ids = self._all_ids = frozenset(self.nodes)
        return ids

    def set_node(self, info: NodeInfo) -> None:
        if info.id in self.nodes:
            ids, departures = self._all_ids, self.departures
            self.remove_node(info.id)
            self._all_ids, self.departures = ids, departures  # the same nodes after as before
        else:
            self._all_ids = None
        self.id_mask |= 1 << info.id
        held = [_host_prefix(a) for a in (info.ipv4, info.ipv6) if a]
        routes = self._routes_of(info)
        exit_ = all(e in routes for e in EXIT_ROUTES)
        st = _NodeState(
            info, tuple(h[0] for h in held), routes, exit_,
            tuple(h[1] for h in held), tuple(h[2] for h in held),
        )
        self.nodes[info.id] = st
        if info.tags:
            self.tagged.add(info.id)
            for t in info.tags:
                self.by_tag.setdefault(t, set()).add(info.id)
        else:
            self.untagged.add(info.id)
            if info.user_id is not None:
                self.by_user.setdefault(info.user_id, set()).add(info.id)
        for r in routes:
            self.route_owners.setdefault(r, set()).add(info.id)

    def remove_node(self, node_id: int) -> None:
        st = self.nodes.pop(node_id, None)
        if st is None:
            return
        self._all_ids = None
        self.id_mask &= ~(1 << node_id)
        self.departures += 1
        info = st.info
        self.tagged.discard(node_id)
        self.untagged.discard(node_id)
        for t in info.tags:
            self.by_tag.get(t, set()).discard(node_id)
        if info.user_id is not None:
            self.by_user.get(info.user_id, set()).discard(node_id)
        for r in st.routes:
            owners = self.route_owners.get(r)
            if owners is not None:
                owners.discard(node_id)
                if not owners:
                    del self.route_owners[r]

    def refresh_routes(self) -> None:
        """Recompute effective routes of the nodes that advertise any (auto-approvers changed)."""
        for st in list(self.nodes.values()):
            if st.info.routable_ips or st.routes:
                self.set_node(st.info)

    # -- routes ------------------------------------------------------------------------------
    def primary_of(self, route: IPNetwork) -> int | None:
        owners = self.route_owners.get(route)
        if not owners:
            return None
        if self.primaries is not None:
            chosen = self.primaries.get(route)
            if chosen in owners:
                return chosen
        return min(owners, key=lambda i: (not self.nodes[i].info.online, i))

    def primary_routes(self, node_id: int) -> list[IPNetwork]:
        st = self.nodes[node_id]
        return [r for r in st.routes if r not in EXIT_ROUTES and self.primary_of(r) == node_id]

    def subnet_routes_of(self, node_id: int) -> tuple[IPNetwork, ...]:
        """The node's effective routes without the exit routes."""
        return tuple(r for r in self.nodes[node_id].routes if r not in EXIT_ROUTES)

    def is_online(self, node_id: int) -> bool:
        if self.online is not None:
            return node_id in self.online
        return self.nodes[node_id].info.online

    def subnet_routes(self) -> list[IPNetwork]:
        return sorted((r for r in self.route_owners if r not in EXIT_ROUTES),
                      key=lambda n: (n.version, n.network_address, n.prefixlen))


# ---------------------------------------------------------------------------------------------
# resolved selectors
# ---------------------------------------------------------------------------------------------


@dataclass
class _Sel:
    """A resolved set of selectors (one side of a rule)."""

    nodes: set[int] = field(default_factory=set)
    prefixes: list[IPNetwork] = field(default_factory=list)
    wildcard: bool = False
    danger_all: bool = False  # autogroup:danger-all: every address, written "*" in SrcIPs
    internet: bool = False
    self_: bool = False


class _AllIds(Set):
    """Every node's id, as a wildcard covers them: a membership test reads the tailnet's own
    dict (no copy per change: a registration into 5,000 nodes made two), and set algebra works
    on a frozen copy made when first needed and kept until a node joins or leaves."""

    __slots__ = ("_index",)

    def __init__(self, index: TailnetIndex) -> None:
        self._index = index

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index.nodes

    def __iter__(self):
        return iter(self._index.all_ids())

    def __len__(self) -> int:
        return len(self._index.nodes)

    @property
    def id_mask(self) -> int:
        """The ids as bits (bit i: node i): a subset test against a mask is one `&`."""
        return self._index.id_mask

    # the reflected forms keep the left operand's type: `peers |= every_node` stays a set
    def __or__(self, other):
        return self._index.all_ids() | other

    def __ror__(self, other):
        return other | self._index.all_ids()

    def __and__(self, other):
        return self._index.all_ids() & other

    def __rand__(self, other):
        return other & self._index.all_ids()

    def __sub__(self, other):
        return self._index.all_ids() - other

    def __rsub__(self, other):
        return other - self._index.all_ids()

    # subset tests against the dict's key view run in C: `sessions.keys() <= audience` at each
    # join would otherwise call __contains__ once per session
    def __ge__(self, other):
        return self._index.nodes.keys() >= other

    def __le__(self, other):
        return self._index.nodes.keys() <= other


@dataclass
class _RuleCache:
    src: _Sel
    dst: _Sel
    src_nodes: Set[int]
    src_ips: list[str]
    dst_nodes: Set[int]
    self_dst: bool
    dst_ips: list[str]


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _covers(prefixes: Iterable[IPNetwork], route: IPNetwork) -> bool:
    """One of `prefixes` overlaps `route` (broader or narrower alike)."""
    return any(_overlaps(p, route) for p in prefixes)


class CompiledPolicy:
    """The policy applied to a tailnet. All node ids are the tailnet's ids."""

    def __init__(self, policy: Policy | None, tailnet: TailnetIndex) -> None:
        self.policy = policy
        self.p: ParsedPolicy | None = policy.parsed if policy is not None else None
        self.net = tailnet
        tailnet.approve = self._auto_approves
        tailnet.refresh_routes()
        if self.p is None:
            self.p = parse_policy({})
        #: the rules as written, for the policy's `tests` (tests.py)
        self._test_rules: list[Rule] = list(self.p.rules)
        self._rules: list[Rule] = []
        for r in self.p.rules:
            kept = _without_bare_v6_grant_dsts(r)
            if kept is r or kept.dsts or kept.app:
                self._rules.append(kept)
        if not self.p.has_acls and not self.p.has_grants:
            # Tailscale's default policy: everything may reach everything
            self._rules.append(
                Rule(srcs=(Alias("wildcard", "*", "*"),), dsts=((Alias("wildcard", "*", "*"), (IPSpec((), ALL_PORTS),)),))
            )
            self._test_rules.append(
                Rule(srcs=(Alias("wildcard", "*", "*"),), dsts=((Alias("wildcard", "*", "*"), (IPSpec((), ALL_PORTS),)),))
            )
        #: grants with `via`: their prefixes are routed through routers carrying the via tags
        self._via_rules: list[int] = [i for i, r in enumerate(self._rules) if r.via]
        self._rule_cache: list[_RuleCache | None] = [None] * len(self._rules)
        self._node_cache: dict[tuple[str, int], Any] = {}
        self._alias_cache: dict[Alias, set[int]] = {}

    @property
    def has_via(self) -> bool:
        """The policy has grants with `via` (route choices then depend on the viewer)."""
        return bool(self._via_rules)

    # -- updates -----------------------------------------------------------------------------
    def with_policy(self, policy: Policy | None) -> "CompiledPolicy":
        """The same tailnet (indexes kept) under another policy: what a policy change costs."""
        return CompiledPolicy(policy, self.net)

    def set_node(self, info: NodeInfo) -> None:
        """A node joined or changed: update the indexes and drop derived caches."""
        self.net.set_node(info)
        self._invalidate()

    def remove_node(self, node_id: int) -> None:
        self.net.remove_node(node_id)
        self._invalidate()

    def set_user(self, user: UserInfo) -> None:
        self.net.set_user(user)
        self._invalidate()

    def _invalidate(self) -> None:
        self._rule_cache = [None] * len(self._rules)
        self._node_cache.clear()
        self._alias_cache.clear()

    def alias_prefix(self, alias: Alias) -> IPNetwork:
        """The prefix a `host` or `prefix` selector stands for."""
        if alias.kind == "host":
            return self.p.hosts[alias.value]  # type: ignore[union-attr]
        return ipaddress.ip_network(alias.value)

    def alias_nodes(self, alias: Alias) -> Set[int]:
        """Nodes one selector covers (cached until the next change)."""
        got = self._alias_cache.get(alias)
        if got is None:
            got = self._sel_nodes(self.resolve([alias]))
            self._alias_cache[alias] = got
        return got

    # -- selectors ---------------------------------------------------------------------------
    def user_nodes(self, token: str) -> set[int]:
        if token.startswith("*@"):  # user:*@domain: every user with an e-mail address there
            domain = token[2:].lower()
            out: set[int] = set()
            for uid, user in self.net.users.items():
                if user.email.lower().rpartition("@")[2] == domain and user.email:
                    out |= self.net.by_user.get(uid, set())
            return out
        uid = self.net.user_id_for(token)
        if uid is None:
            return set()
        return self.net.by_user.get(uid, set())

    def resolve(self, aliases: Iterable[Alias]) -> _Sel:
        sel = _Sel()
        net = self.net
        p = self.p
        for a in aliases:
            k = a.kind
            if k == "wildcard":
                sel.wildcard = True
            elif k == "tag":
                sel.nodes |= net.by_tag.get(a.value, set())
            elif k == "user":
                sel.nodes |= self.user_nodes(a.value)
            elif k == "group":
                for m in (p.groups.get(a.value, []) if p else []):
                    sel.nodes |= self.user_nodes(m)
            elif k == "host":
                sel.prefixes.append(p.hosts[a.value])  # type: ignore[union-attr]
            elif k == "prefix":
                sel.prefixes.append(ipaddress.ip_network(a.value))
            elif k == "autogroup":
                v = a.value
                if v == "member":
                    sel.nodes |= net.untagged
                elif v == "tagged":
                    sel.nodes |= net.tagged
                elif v == "self":
                    sel.self_ = True
                elif v == "internet":
                    sel.internet = True
                elif v == "danger-all":
                    sel.wildcard = True
                    sel.danger_all = True
                elif v in ("admin", "owner", "it-admin", "network-admin", "billing-admin", "auditor"):
                    for uid, user in net.users.items():
                        if v in getattr(user, "roles", ()):
                            sel.nodes |= net.by_user.get(uid, set())
        return sel

    def _sel_nodes(self, sel: _Sel) -> Set[int]:
        """Nodes a selection covers: members, nodes whose address or approved route lies in a
        prefix, exit nodes for autogroup:internet. Read-only: a wildcard's is shared."""
        net = self.net
        if sel.wildcard:
            return net.every_node
        out = set(sel.nodes)
        if sel.prefixes:
            for nid, st in net.nodes.items():
                if nid in out:
                    continue
                for pfx in sel.prefixes:
                    if any(_overlaps(pfx, a) for a in st.addrs) or any(
                        _overlaps(pfx, r) for r in st.routes
                    ):
                        out.add(nid)
                        break
        if sel.internet:
            out |= {nid for nid, st in net.nodes.items() if st.exit}
        return out

    def _src_ips(self, sel: _Sel) -> list[str]:
        out: set[str] = set()
        net = self.net
        if sel.danger_all:
            return ["*"]
        if sel.wildcard:
            out.update(TAILNET_SRC)
            out.update(str(r) for r in net.subnet_routes())
        for nid in sel.nodes:
            out.update(net.nodes[nid].ips)
        for pfx in sel.prefixes:
            out.add(_host_text(pfx))
        return sorted(out)

    def _rule(self, i: int) -> _RuleCache:
        rc = self._rule_cache[i]
        if rc is None:
            rule = self._rules[i]
            src = self.resolve(rule.srcs)
            dst = self.resolve(a for a, _ in rule.dsts)
            rc = _RuleCache(
                src=src,
                dst=dst,
                src_nodes=self._sel_nodes(src),
                src_ips=self._src_ips(src),
                dst_nodes=self._via_routers(rule, dst) if rule.via else self._sel_nodes(dst),
                self_dst=dst.self_,
                dst_ips=self._src_ips(dst),
            )
            self._rule_cache[i] = rc
        return rc

    # -- via -----------------------------------------------------------------------------------
    # A grant with `via` sends its sources' traffic for the destination prefixes through the routers
    # carrying one of the via tags. Only those routers (and only where one of their subnet routes
    # overlaps a destination prefix, or autogroup:internet on an exit node) receive its filter rule
    # and are made visible to the sources; tags, users and the like as destinations give nothing.
    def _via_routers(self, rule: Rule, dst: _Sel) -> set[int]:
        net = self.net
        out: set[int] = set()
        for tag in rule.via:
            for nid in net.by_tag.get(tag, ()):
                if nid in out:
                    continue
                st = net.nodes[nid]
                if dst.internet and st.exit:
                    out.add(nid)
                elif any(_covers(dst.prefixes, r) for r in net.subnet_routes_of(nid)):
                    out.add(nid)
        return out

    def _via_dst_entries(self, alias: Alias, st: _NodeState) -> list[str]:
        """What a via grant's destination puts in a via router's filter: the prefix as written when
        it overlaps one of the router's subnet routes (broader or narrower alike: the policy
        authorised that prefix), the internet for an exit node."""
        k = alias.kind
        if k in ("host", "prefix"):
            pfx = self.alias_prefix(alias)
            if _covers(self.net.subnet_routes_of(st.info.id), pfx):
                return [_host_text(pfx)]
            return []
        if k == "autogroup" and alias.value == "internet" and st.exit:
            return [str(n) for n in INTERNET]
        return []

    def via_primary(self, tags: Iterable[str], route: IPNetwork) -> int | None:
        """The router one via grant sends `route` to, among the nodes with one of `tags` that have
        it: the route's HA primary when it is one of them (so the choice is as sticky as the HA
        election), else the online one with the lowest id."""
        owners = self.net.route_owners.get(route)
        if not owners:
            return None
        cands = {nid for t in tags for nid in self.net.by_tag.get(t, ()) if nid in owners}
        if not cands:
            return None
        primary = self.net.primary_of(route)
        if primary in cands:
            return primary
        return min(cands, key=lambda i: (not self.net.is_online(i), i))

    def via_primaries(self) -> dict[tuple[int, IPNetwork], int]:
        """Every via grant's choice of router per route it covers (the coordinator compares these
        before and after an election to know whose peers' pictures moved)."""
        out: dict[tuple[int, IPNetwork], int] = {}
        for i in self._via_rules:
            rule, rc = self._rules[i], self._rule(i)
            for route in self.net.route_owners:
                if route in EXIT_ROUTES or not _covers(rc.dst.prefixes, route):
                    continue
                chosen = self.via_primary(rule.via, route)
                if chosen is not None:
                    out[(i, route)] = chosen
        return out

    def _via_steering(self, viewer_id: int, peer_id: int) -> tuple[list[IPNetwork], set[IPNetwork], set[IPNetwork]]:
        """What via grants do to the routes `viewer_id` is told for `peer_id`: (routes to include
        though the peer may not be their HA primary, routes to leave out because the viewer's
        traffic for them goes through other routers, included routes that fall back to the HA
        primary because a grant without via covers them too)."""
        include: list[IPNetwork] = []
        exclude: set[IPNetwork] = set()
        net = self.net
        st = net.nodes[peer_id]
        peer_subnets = net.subnet_routes_of(peer_id)
        mine = []
        for i in self._via_rules:
            rc = self._rule(i)
            if viewer_id not in rc.src_nodes:
                continue
            mine.append(i)
            matched = [r for r in peer_subnets if _covers(rc.dst.prefixes, r)]
            if rc.dst.internet and st.exit:
                matched += list(EXIT_ROUTES)
            if not matched:
                continue
            if set(self._rules[i].via) & set(st.info.tags):
                include += [r for r in matched if r not in include]
            else:
                exclude.update(matched)
        use_primary: set[IPNetwork] = set()
        if not include and not exclude:
            return include, exclude, use_primary
        # several routers carry the via tag: one of them (per route) is the via grant's choice
        for i in mine:
            rc = self._rule(i)
            for route in list(include):
                if route in EXIT_ROUTES or not _covers(rc.dst.prefixes, route):
                    continue
                chosen = self.via_primary(self._rules[i].via, route)
                if chosen is not None and chosen != peer_id:
                    include.remove(route)
                    exclude.add(route)
        # a grant without via covering the same prefixes: HA primaries apply again
        for i, rule in enumerate(self._rules):
            if rule.via:
                continue
            rc = self._rule(i)
            if viewer_id not in rc.src_nodes or not rc.dst.prefixes:
                continue
            for p in rc.dst.prefixes:
                use_primary.update(r for r in include if _overlaps(p, r))
                exclude = {r for r in exclude if not _overlaps(p, r)}
        return include, exclude, use_primary

    def _auto_approves(self, info: NodeInfo, route: IPNetwork) -> bool:
        p = self.p
        if p is None:
            return False
        if route in EXIT_ROUTES:
            return self._alias_has_node(p.auto_exit, info)
        for pfx, approvers in p.auto_routes.items():
            if pfx in EXIT_ROUTES:
                continue
            if route.version == pfx.version and route.subnet_of(pfx):  # type: ignore[arg-type]
                if self._alias_has_node(approvers, info):
                    return True
        return False

    def _alias_has_node(self, aliases: Iterable[Alias], info: NodeInfo) -> bool:
        p = self.p
        for a in aliases:
            if a.kind == "tag" and a.value in info.tags:
                return True
            if info.tags:
                continue
            if a.kind == "user" and self.net.user_id_for(a.value) == info.user_id:
                return True
            if a.kind == "group" and p is not None:
                if any(self.net.user_id_for(m) == info.user_id for m in p.groups.get(a.value, [])):
                    return True
            if a.kind == "autogroup" and a.value == "member":
                return True
        return False

    # -- per-node answers --------------------------------------------------------------------
    def _dst_entries(self, alias: Alias, st: _NodeState) -> list[str]:
        """The DstPorts IPs `alias` contributes to node `st`'s filter."""
        k = alias.kind
        if k == "wildcard" or (k == "autogroup" and alias.value == "danger-all"):
            return ["*"]
        nid = st.info.id
        if k in ("tag", "user", "group") or (k == "autogroup" and alias.value in (
            "member", "tagged", "admin", "owner", "it-admin", "network-admin", "billing-admin", "auditor"
        )):
            if nid in self.alias_nodes(alias):
                return list(st.ips)
            return []
        if k in ("host", "prefix"):
            pfx = self.alias_prefix(alias)
            if any(_overlaps(pfx, a) for a in st.addrs) or any(_overlaps(pfx, r) for r in st.routes):
                return [_host_text(pfx)]
            return []
        if k == "autogroup" and alias.value == "internet":
            if st.exit:
                return [str(n) for n in INTERNET]
            return []
        return []

    def packet_filter(self, node_id: int) -> list[dict[str, Any]]:
        """tailcfg.FilterRule list for `node_id` (inbound rules: what may reach it)."""
        key = ("filter", node_id)
        cached = self._node_cache.get(key)
        if cached is not None:
            return cached
        st = self.net.nodes[node_id]
        out: list[dict[str, Any]] = []
        for i, rule in enumerate(self._rules):
            rc = self._rule(i)
            if rule.via and node_id not in rc.dst_nodes:
                continue
            # group DstPorts by protocol set; autogroup:self dsts get their own SrcIPs
            normal: dict[tuple[int, ...], list[dict[str, Any]]] = {}
            selfish: dict[tuple[int, ...], list[dict[str, Any]]] = {}
            cap_dst = False
            cap_self = False
            for alias, specs in rule.dsts:
                if rule.via:  # app capabilities of a via grant are not delivered (as in Tailscale)
                    ips = self._via_dst_entries(alias, st)
                    bucket = normal
                elif alias.kind == "autogroup" and alias.value == "self":
                    if st.info.is_tagged:
                        continue
                    ips = list(st.ips)
                    bucket = selfish
                    cap_self = True
                else:
                    ips = self._dst_entries(alias, st)
                    bucket = normal
                    if ips:
                        cap_dst = True
                if not ips or not specs:
                    continue
                for spec in specs:
                    lst = bucket.setdefault(spec.protos, [])
                    for ip in ips:
                        for pr in spec.ports:
                            entry = {"IP": ip, "Ports": pr.json()}
                            if entry not in lst:
                                lst.append(entry)
            if normal and rc.src_ips:
                for protos, dports in normal.items():
                    out.append(self._filter_rule(rc.src_ips, dports, protos))
            if selfish:
                src_ips = self._self_src_ips(rc, st)
                if src_ips:
                    for protos, dports in selfish.items():
                        out.append(self._filter_rule(src_ips, dports, protos))
            if rule.app and not rule.via and node_id in rc.src_nodes:
                # one rule per companion capability, from the grant's destinations (for
                # autogroup:self, the source's own user's devices)
                comp_src = rc.dst_ips
                if rc.self_dst and not st.info.is_tagged:
                    comp_src = sorted(set(comp_src) | set(self._user_ips(st.info.user_id)))
                for cap in rule.app:
                    if cap in COMPANION_CAPS and comp_src:
                        out.extend(self._cap_rules({COMPANION_CAPS[cap]: None}, comp_src, st))
            if rule.app:
                # a source that names nobody (an empty group) still gets the CapGrant sent, with
                # empty SrcIPs; a grant with no sources at all sends nothing
                if cap_dst and (rc.src_ips or rule.srcs):
                    out.extend(self._cap_rules(rule.app, rc.src_ips, st))
                if cap_self:
                    src_ips = self._self_src_ips(rc, st)
                    if src_ips:
                        out.extend(self._cap_rules(rule.app, src_ips, st))
        out = _merge_rules(out)
        self._node_cache[key] = out
        return out

    def _cap_rules(self, app: dict[str, list[Any]], src_ips: list[str], st: _NodeState) -> list[dict[str, Any]]:
        dsts = list(st.cidrs)
        rules = [{"SrcIPs": src_ips, "CapGrant": [{"Dsts": dsts, "CapMap": {k: v for k, v in app.items()}}]}]
        return rules

    def _user_ips(self, uid: int | None) -> list[str]:
        if uid is None:
            return []
        return [ip for nid in self.net.by_user.get(uid, ()) for ip in self.net.nodes[nid].ips]

    def _self_src_ips(self, rc: _RuleCache, st: _NodeState) -> list[str]:
        uid = st.info.user_id
        key = ("self", id(rc), uid)
        cached = self._node_cache.get(key)  # type: ignore[call-overload]
        if cached is not None:
            return cached
        same = self.net.by_user.get(uid, set()) if uid is not None else set()
        ips: list[str] = []
        for nid in same & rc.src_nodes:
            ips.extend(self.net.nodes[nid].ips)
        ips.sort()
        self._node_cache[key] = ips  # type: ignore[index]
        return ips

    @staticmethod
    def _filter_rule(src_ips: list[str], dports: list[dict[str, Any]], protos: tuple[int, ...]) -> dict[str, Any]:
        # SrcIPs is the rule's own list, shared by every node's filter (read-only): the fan-out
        # encodes a shared list once, however many filters carry it
        r: dict[str, Any] = {"SrcIPs": src_ips, "DstPorts": dports}
        if protos:
            r["IPProto"] = list(protos)
        return r

    # -- visibility --------------------------------------------------------------------------
    def visibility_class(self, node_id: int) -> tuple:
        """A key shared by nodes that see the same peers (up to themselves): the rules the node
        is a source / destination of, and its user when an autogroup:self rule applies."""
        key = ("vclass", node_id)
        cached = self._node_cache.get(key)
        if cached is not None:
            return cached
        st = self.net.nodes[node_id]
        srcs: list[int] = []
        dsts: list[int] = []
        has_self = False
        for i in range(len(self._rules)):
            rc = self._rule(i)
            if node_id in rc.src_nodes:
                srcs.append(i)
            if node_id in rc.dst_nodes:
                dsts.append(i)
            has_self = has_self or rc.self_dst
        uid = st.info.user_id if has_self and not st.info.is_tagged else None
        out = (tuple(srcs), tuple(dsts), uid)
        self._node_cache[key] = out
        return out

    def class_peers(self, vclass: tuple) -> Set[int]:
        """The peers (and possibly the node itself) a visibility class sees; shared, do not modify.
        A class a wildcard covers sees `net.every_node` itself: a join changes the tailnet, so a
        copy of every id made here would be made again at every join (O(N) each)."""
        key = ("cpeers", vclass)
        cached = self._node_cache.get(key)  # type: ignore[call-overload]
        if cached is not None:
            return cached
        net = self.net
        srcs, dsts, uid = vclass
        every = net.every_node
        if any(self._rule(i).dst_nodes is every for i in srcs) or any(self._rule(i).src_nodes is every for i in dsts):
            return every
        same = net.by_user.get(uid, set()) if uid is not None else set()
        out: set[int] = set()
        for i in srcs:
            rc = self._rule(i)
            out |= rc.dst_nodes
            if rc.self_dst and same:
                out |= same
        for i in dsts:
            out |= self._rule(i).src_nodes
        if same:
            for i in range(len(self._rules)):
                rc = self._rule(i)
                if rc.self_dst:
                    out |= same & rc.src_nodes
        frozen = frozenset(out)
        self._node_cache[key] = frozen  # type: ignore[index]
        return frozen

    def visible_peers(self, node_id: int) -> set[int]:
        """Ids of the peers `node_id` may see: traffic is allowed in either direction."""
        key = ("peers", node_id)
        cached = self._node_cache.get(key)
        if cached is not None:
            return cached
        out = set(self.class_peers(self.visibility_class(node_id)))
        out.discard(node_id)
        self._node_cache[key] = out
        return out

    def can_see(self, viewer_id: int, peer_id: int) -> bool:
        if viewer_id == peer_id:
            return False
        cached = self._node_cache.get(("peers", viewer_id))
        if cached is not None:
            return peer_id in cached
        return peer_id in self.class_peers(self.visibility_class(viewer_id))

    # -- routes ------------------------------------------------------------------------------
    def primary_routes(self, node_id: int) -> list[str]:
        return [str(r) for r in self.net.primary_routes(node_id)]

    def reachable_routes(self, viewer_id: int, peer_id: int) -> list[IPNetwork]:
        """The peer's routes (primary subnet routes, exit routes) that `viewer_id` is told: those
        the policy lets it send traffic to, steered by via grants, plus the peer's primary routes
        the viewer advertises itself (an HA secondary learns who the primary is)."""
        st = self.net.nodes[peer_id]
        if not st.routes:
            return []
        primaries = list(self.net.primary_routes(peer_id))
        candidates = primaries + (list(EXIT_ROUTES) if st.exit else [])
        include: list[IPNetwork] = []
        exclude: set[IPNetwork] = set()
        use_primary: set[IPNetwork] = set()
        if self._via_rules:
            include, exclude, use_primary = self._via_steering(viewer_id, peer_id)
        out = [r for r in candidates if r not in exclude and self._viewer_reaches(viewer_id, r)]
        for route in include:
            if route not in out and (route in primaries or route not in use_primary):
                out.append(route)
        viewer_routes = self.net.nodes[viewer_id].routes
        for route in primaries:
            if route in viewer_routes and route not in out:
                out.append(route)
        return out

    def _viewer_reaches(self, viewer_id: int, route: IPNetwork) -> bool:
        is_exit = route in EXIT_ROUTES
        for i, rule in enumerate(self._rules):
            if rule.via:
                continue
            rc = self._rule(i)
            if viewer_id in rc.dst_nodes or (rc.self_dst and viewer_id in self.net.untagged):
                # return traffic: sources behind the route may reach the viewer
                if rc.src.wildcard and not is_exit:
                    return True
                if _covers(rc.src.prefixes, route):
                    return True
            if viewer_id not in rc.src_nodes:
                continue
            for alias, _specs in rule.dsts:
                k = alias.kind
                if k == "wildcard" or (k == "autogroup" and alias.value == "danger-all"):
                    return True
                if k == "autogroup" and alias.value == "internet" and is_exit:
                    return True
                if k in ("host", "prefix"):
                    pfx = self.alias_prefix(alias)
                    if _overlaps(pfx, route):
                        return True
        return False

    def peer_primary_routes(self, viewer_id: int, peer_id: int) -> list[str]:
        """PrimaryRoutes of the peer as `viewer_id` is told them."""
        return [str(r) for r in self.reachable_routes(viewer_id, peer_id) if r not in EXIT_ROUTES]

    def allowed_ips(self, viewer_id: int, peer_id: int) -> list[str]:
        """The peer's AllowedIPs as `viewer_id` is told them: addresses, plus the primary subnet
        routes and exit routes the viewer may use."""
        st = self.net.nodes[peer_id]
        addrs = st.addrs
        off = self.ipv4_off_nodes()
        if peer_id in off or viewer_id in off:
            addrs = tuple(a for a in addrs if a.version == 6)
        return [str(a) for a in addrs] + [str(r) for r in self.reachable_routes(viewer_id, peer_id)]

    def self_allowed_ips(self, node_id: int) -> list[str]:
        st = self.net.nodes[node_id]
        cidrs = st.cidrs
        if node_id in self.ipv4_off_nodes():
            cidrs = tuple(c for c in cidrs if ":" in c)
        return list(cidrs) + [str(r) for r in st.routes]

    def ipv4_off_nodes(self) -> frozenset[int]:
        """Nodes with the `disable-ipv4` attribute. Tailscale then drops IPv4 on both sides: the
        node loses its own IPv4 address, and its view of every peer (and every peer's view of it)
        is IPv6 only; subnet routes stay."""
        key = ("ipv4off", 0)
        cached = self._node_cache.get(key)
        if cached is not None:
            return cached
        out: frozenset[int] = frozenset()
        if any("disable-ipv4" in attr.attrs for attr in self.p.node_attrs):  # type: ignore[union-attr]
            out = frozenset(nid for nid in self.net.nodes if "disable-ipv4" in self.cap_map(nid))  # type: ignore[attr-defined]
        self._node_cache[key] = out
        return out

    def auto_approved_routes(self, info: NodeInfo) -> list[str]:
        """The node's advertised routes that autoApprovers approve (subnet routes under
        `autoApprovers.routes`, exit routes under `autoApprovers.exitNode`). 0.0.0.0/0 and ::/0
        are approved together. The coordinator calls this when a node (re)advertises routes and
        persists the result in the node's approved routes, as Tailscale does."""
        out: list[str] = []
        exit_ok = False
        for r in info.routable_ips:
            try:
                net = ipaddress.ip_network(r, strict=False)
            except ValueError:
                continue
            if net in EXIT_ROUTES:
                exit_ok = exit_ok or self._auto_approves(info, net)
            elif self._auto_approves(info, net):
                out.append(str(net))
        if exit_ok:
            out += [str(e) for e in EXIT_ROUTES]
        return out

    def effective_routes(self, node_id: int) -> list[str]:
        """Advertised routes that are approved (by an admin or by autoApprovers)."""
        return [str(r) for r in self.net.nodes[node_id].routes]

    def is_exit_node(self, node_id: int) -> bool:
        return self.net.nodes[node_id].exit

    # -- capabilities and SSH ----------------------------------------------------------------
    def ssh_policy(self, node_id: int, control_url: str = "https://unused") -> dict[str, Any]:
        """The node's tailcfg.SSHPolicy (ssh.py)."""
        return ssh.ssh_policy(self, node_id, control_url)

    def cap_map(self, node_id: int) -> dict[str, Any]:
        """The node's own CapMap from `nodeAttrs` (and top-level randomizeClientPort).

        Attributes are capability names with a null value; `app` entries carry their values; `funnel`
        also grants the funnel ports capability Tailscale pairs with it. Tailnet-state capabilities
        (is-admin, file-sharing, ...) are the coordinator's business, not the policy's.
        """
        key = ("caps", node_id)
        cached = self._node_cache.get(key)
        if cached is not None:
            return cached
        p = self.p
        caps: dict[str, Any] = {}
        st = self.net.nodes[node_id]
        if p.randomize_client_port:
            caps["randomize-client-port"] = None
        for attr in p.node_attrs:
            if not self._targets_node(attr.targets, st):
                continue
            for a in attr.attrs:
                caps[a] = None
                if a == "funnel":
                    caps["https://tailscale.com/cap/funnel-ports?ports=443,8443,10000"] = None
                    caps["https://tailscale.com/cap/warn-funnel-no-https"] = None
            for k, v in (attr.app or {}).items():
                caps.setdefault(k, [])
                if caps[k] is None:
                    caps[k] = []
                caps[k] = list(caps[k]) + list(v or [])
        self._node_cache[key] = caps
        return caps

    def _targets_node(self, targets: Any, st: _NodeState) -> bool:
        for a in targets:
            if a.kind == "wildcard":
                return True
            if a.kind in ("host", "prefix"):
                pfx = self.alias_prefix(a)
                if any(_overlaps(pfx, ad) for ad in st.addrs):
                    return True
            elif st.info.id in self.alias_nodes(a):
                return True
        return False

    def peer_cap_map(self, viewer_id: int, peer_id: int) -> dict[str, Any] | None:
        """CapMap of a peer as others see it: approved exit nodes are suggested as exit nodes."""
        return {"suggest-exit-node": None} if self.net.nodes[peer_id].exit else None


def _without_bare_v6_grant_dsts(rule: Rule) -> Rule:
    """Tailscale delivers nothing for a grant destination written as a bare IPv6 address
    (`fd7a:115c:a1e0::10`, no brackets, no length): no filter on the node with that address and no
    visibility, although the policy's `tests` still see the grant (corpus case
    policytest-allpass-grants-only-tag-src-ipv6-literal-dst; a bare IPv4 address does reach the node).
    The engine does the same: such destinations are dropped from the compiled rule."""
    if rule.origin != "grant":
        return rule
    kept = tuple(
        (a, specs) for a, specs in rule.dsts
        if not (a.kind == "prefix" and ":" in a.text and "/" not in a.text and not a.text.startswith("["))
    )
    if len(kept) == len(rule.dsts):
        return rule
    return Rule(srcs=rule.srcs, dsts=kept, app=rule.app, via=rule.via, origin=rule.origin)


def _merge_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tailscale sends one FilterRule per distinct (SrcIPs, IPProto): later rules with the same
    sources and protocols have their DstPorts appended to the first one."""
    out: list[dict[str, Any]] = []
    index: dict[tuple[tuple[str, ...], tuple[int, ...]], dict[str, Any]] = {}
    for r in rules:
        if "DstPorts" not in r:
            out.append(r)
            continue
        k = (tuple(sorted(r["SrcIPs"])), tuple(r.get("IPProto") or ()))
        first = index.get(k)
        if first is None:
            index[k] = r
            out.append(r)
        else:
            first["DstPorts"] = first["DstPorts"] + r["DstPorts"]
    return out


def compile_policy(
    policy: Policy | None, users: Iterable[UserInfo], nodes: Iterable[NodeInfo]
) -> CompiledPolicy:
    """Apply `policy` (None = no policy: allow all) to the tailnet."""
    return CompiledPolicy(policy, TailnetIndex(users, nodes))


__all__ = ["Policy", "PolicyError", "CompiledPolicy", "TailnetIndex", "compile_policy"]
