"""The live policy of a coordinator: the compiled policy kept current as nodes, users, shares and
the policy itself change, plus what the map code asks of it.

Plain objects, no I/O and no Trio: the coordinator feeds it records from the change log and asks
per viewer what to send (visibility, PacketFilter, SSHPolicy, CapMap, AllowedIPs, PrimaryRoutes).

* Node changes are incremental (`set_node` tells whether anything the policy looks at changed;
  endpoint and disco-key churn does not touch the engine at all).
* A policy change keeps the engine's indexes (`CompiledPolicy.with_policy`).
* HA primaries are chosen here (`domain.routes.elect_primaries`, sticky) from the online set the
  coordinator keeps, and handed to the engine.
* Sharing: a node shared with user B is visible to B's (untagged) nodes and they may open
  connections to it (any port); the shared node sees them as peers so it can answer, but gains no
  right to connect to them. A share adds to the policy, it never takes anything away.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from trioscale.shared.model import Node, Share, User

from .. import tailcfg
from ..routes import EXIT_ROUTES, elect_primaries
from .acltests import run_policy_tests
from .compile import CompiledPolicy, Policy, compile_policy
from .errors import PolicyError
from .model import node_info, user_info

log = logging.getLogger("trioscale.coord.policy")

CAP_SSH = "https://tailscale.com/cap/ssh"
ALL_PORTS = {"First": 0, "Last": 65535}

#: a viewer's picture of one peer beyond its addresses: (AllowedIPs, PrimaryRoutes, CapMap)
PeerView = tuple[tuple[str, ...], tuple[str, ...], Any]


def parse_and_check(text: str, users: Iterable[User], nodes: Iterable[Node]) -> Policy:
    """Parse `text` and check it against the tailnet (compiles, its `tests`/`sshTests` pass).
    PolicyError(message, line, column) names the problem; a failing test is named too."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyError("the policy is empty")
    policy = Policy.parse(text)
    compiled = compile_policy(policy, [user_info(u) for u in users], [node_info(n) for n in nodes])
    run_policy_tests(compiled)
    return policy


class PolicyHost:
    def __init__(self, online: Callable[[], set[int]] | None = None) -> None:
        self.policy: Policy | None = None
        self.text: str | None = None
        self.version: int | None = None
        self.compiled: CompiledPolicy = compile_policy(None, [], [])
        self.infos: dict[int, Any] = {}
        self.users: dict[int, User] = {}
        #: who is online now (the coordinator's set; read at each election)
        self.online: Callable[[], set[int]] = online if online is not None else set
        #: node id -> user ids it is shared with; user id -> node ids shared with that user
        self.shared_with: dict[int, set[int]] = {}
        self.shared_to: dict[int, set[int]] = {}
        self.primaries: dict[Any, int] = {}
        #: how long the last policy compile took (load, set_policy), for the coordinator's metrics
        self.compile_seconds = 0.0

    # -- loading and updates -------------------------------------------------------------------
    def load(self, users: Iterable[User], nodes: Iterable[Node], shares: Iterable[Share],
             policy: Policy | None, text: str | None = None, version: int | None = None) -> None:
        self.users = {u.id: u for u in users}
        node_list = list(nodes)
        self.infos = {n.id: node_info(n) for n in node_list}
        self.policy, self.text, self.version = policy, text, version
        started = time.perf_counter()
        self.compiled = compile_policy(policy, [user_info(u) for u in self.users.values()],
                                       list(self.infos.values()))
        self.compile_seconds = time.perf_counter() - started
        self.shared_with.clear()
        self.shared_to.clear()
        for s in shares:
            self.add_share(s.node_id, s.user_id)
        self.elect()

    def set_policy(self, policy: Policy | None, text: str | None = None, version: int | None = None) -> None:
        self.policy, self.text, self.version = policy, text, version
        started = time.perf_counter()
        self.compiled = self.compiled.with_policy(policy)
        self.compile_seconds = time.perf_counter() - started
        self.elect()

    def set_node(self, node: Node) -> bool:
        """Record a node's new version; True when something the policy looks at changed."""
        info = node_info(node)
        if self.infos.get(node.id) == info:
            return False
        self.infos[node.id] = info
        self.compiled.set_node(info)
        return True

    def remove_node(self, node_id: int) -> bool:
        if self.infos.pop(node_id, None) is None:
            return False
        self.compiled.remove_node(node_id)
        for uid in self.shared_with.pop(node_id, set()):
            self.shared_to.get(uid, set()).discard(node_id)
        self.primaries = {r: n for r, n in self.primaries.items() if n != node_id}
        return True

    def set_user(self, user: User) -> bool:
        old = self.users.get(user.id)
        self.users[user.id] = user
        if old is not None and old.name == user.name and old.email == user.email:
            return False
        self.compiled.set_user(user_info(user))
        return True

    def remove_user(self, user_id: int) -> None:
        self.users.pop(user_id, None)
        for nid in self.shared_to.pop(user_id, set()):
            self.shared_with.get(nid, set()).discard(user_id)

    def add_share(self, node_id: int, user_id: int) -> None:
        self.shared_with.setdefault(node_id, set()).add(user_id)
        self.shared_to.setdefault(user_id, set()).add(node_id)

    def remove_share(self, node_id: int, user_id: int) -> None:
        self.shared_with.get(node_id, set()).discard(user_id)
        self.shared_to.get(user_id, set()).discard(node_id)

    def elect(self) -> set[int]:
        """Re-run the HA election (and the choices of via grants, which follow it and the online
        set); returns the routers whose primary routes, as anyone sees them, changed."""
        c = self.compiled
        net = c.net
        owners = {r: ids for r, ids in net.route_owners.items() if str(r) not in EXIT_ROUTES}
        if not owners and not self.primaries and not c.has_via:
            # nothing to elect, and the online set is read only by via grants: skip copying it
            # (O(N), on every node change of a join storm); the next election that counts
            # takes a fresh copy
            net.online = None
            return set()
        online = set(self.online())
        new = elect_primaries(owners, online, self.primaries)
        changed: set[int] = set()
        for route in set(new) | set(self.primaries):
            a, b = self.primaries.get(route), new.get(route)
            if a != b:
                changed.update(x for x in (a, b) if x is not None)
        via_before = c.via_primaries() if c.has_via else {}
        self.primaries = new
        net.primaries = new  # type: ignore[assignment]
        net.online = online
        if c.has_via:
            via_after = c.via_primaries()
            for key in set(via_before) | set(via_after):
                a, b = via_before.get(key), via_after.get(key)
                if a != b:
                    changed.update(x for x in (a, b) if x is not None)
        return changed

    # -- questions the map code asks -------------------------------------------------------------
    @property
    def has_policy(self) -> bool:
        return self.policy is not None

    def known(self, node_id: int) -> bool:
        return node_id in self.compiled.net.nodes

    def shared_peers(self, node_id: int) -> set[int]:
        """Peers visible to `node_id` through shares (either direction)."""
        out: set[int] = set()
        info = self.infos.get(node_id)
        if info is not None and not info.tags and info.user_id is not None:
            out |= self.shared_to.get(info.user_id, set())
        by_user = self.compiled.net.by_user
        for uid in self.shared_with.get(node_id, ()):
            out |= by_user.get(uid, set())
        out.discard(node_id)
        return out

    def can_see(self, viewer: Node, peer: Node) -> bool:
        v, p = viewer.id, peer.id
        if v == p or not self.known(v) or not self.known(p):
            return False
        if self.compiled.can_see(v, p):
            return True
        return self._shared(v, p)

    def _shared(self, v: int, p: int) -> bool:
        vi, pi = self.infos.get(v), self.infos.get(p)
        if vi is None or pi is None:
            return False
        if not vi.tags and vi.user_id in self.shared_with.get(p, ()):
            return True
        if not pi.tags and pi.user_id in self.shared_with.get(v, ()):
            return True
        return False

    def visible_ids(self, node_id: int) -> set[int] | frozenset[int]:
        """Every node `node_id` may see (not filtered by announceability)."""
        if not self.known(node_id):
            return set()
        base = self.compiled.class_peers(self.compiled.visibility_class(node_id))
        extra = self.shared_peers(node_id)
        if extra and not base >= extra:  # `extra - base` would copy every id when base is every node
            return (base | extra) - {node_id}
        return base  # may contain node_id itself; callers skip it

    def packet_filter(self, node_id: int) -> list[dict[str, Any]]:
        if not self.known(node_id):
            return []
        rules = self.compiled.packet_filter(node_id)
        sharees = self.shared_with.get(node_id)
        if sharees:
            net = self.compiled.net
            src = sorted({ip for uid in sharees for nid in net.by_user.get(uid, ()) for ip in net.nodes[nid].ips})
            if src:
                dst = [{"IP": ip, "Ports": dict(ALL_PORTS)} for ip in net.nodes[node_id].ips]
                rules = rules + [{"SrcIPs": src, "DstPorts": dst}]
        return rules

    def ssh_policy(self, node_id: int, control_url: str = "") -> dict[str, Any] | None:
        """The node's SSHPolicy, or None when the policy has no `ssh` section (nothing to send)."""
        p = self.compiled.p
        if p is None or not p.ssh or not self.known(node_id):
            return None
        return self.compiled.ssh_policy(node_id, control_url or "https://unused")

    def self_cap_map(self, node_id: int) -> dict[str, list[Any]]:
        extra: dict[str, list[Any]] = {}
        if self.known(node_id):
            for k, v in self.compiled.cap_map(node_id).items():
                extra[k] = list(v) if v else []
            p = self.compiled.p
            if p is not None and p.ssh:
                extra.setdefault(CAP_SSH, [])
        return tailcfg.self_cap_map(extra)

    def self_view(self, node_id: int) -> tuple[list[str] | None, list[str]]:
        """(AllowedIPs, PrimaryRoutes) of a node in its own map; None = just its addresses."""
        if not self.known(node_id):
            return None, []
        st = self.compiled.net.nodes[node_id]
        if not st.routes and node_id not in self.compiled.ipv4_off_nodes():
            return None, []
        return self.compiled.self_allowed_ips(node_id), self.compiled.primary_routes(node_id)

    def peer_view(self, viewer_id: int, peer_id: int) -> PeerView | None:
        """How `viewer_id` is told about `peer_id` when that differs from the plain node (routes
        the viewer may use, exit-node hints); None for the common case."""
        c = self.compiled
        st = c.net.nodes.get(peer_id)
        if st is None or viewer_id not in c.net.nodes:
            return None
        off = c.ipv4_off_nodes()
        if not st.routes and peer_id not in off and viewer_id not in off:
            return None
        allowed = tuple(sorted(c.allowed_ips(viewer_id, peer_id), key=_prefix_key))
        primary = tuple(sorted(c.peer_primary_routes(viewer_id, peer_id), key=_prefix_key))
        caps = c.peer_cap_map(viewer_id, peer_id)
        if caps is not None:
            caps = tuple(sorted(caps))
        return allowed, primary, caps

    def routers(self) -> set[int]:
        """Nodes with routes (subnet or exit): the peers a viewer may have a picture of its own of."""
        out: set[int] = set()
        for ids in self.compiled.net.route_owners.values():
            out |= ids
        return out

    def ipv4_off(self) -> frozenset[int]:
        """Nodes whose picture of every peer is IPv6 only (and every peer's of them)."""
        return self.compiled.ipv4_off_nodes()

    # -- tags and routes ---------------------------------------------------------------------------
    def tag_defined(self, tag: str) -> bool:
        p = self.compiled.p
        return p is not None and tag in p.tag_owners

    def tags_not_permitted(self, user_id: int | None, tags: Iterable[str],
                           node_tags: Iterable[str] = ()) -> list[str]:
        """The tags of `tags` that a node of `user_id` (already carrying `node_tags`) may not
        request: a tag is permitted when tagOwners lists the user, a group the user is in, or a
        tag the node already has."""
        p = self.compiled.p
        have = set(node_tags)
        bad = []
        for tag in tags:
            owners = p.tag_owners.get(tag) if p is not None else None
            if owners is None or not self._owns(owners, user_id, have):
                bad.append(tag)
        return bad

    def _owns(self, owners: list[str], user_id: int | None, node_tags: set[str]) -> bool:
        p = self.compiled.p
        net = self.compiled.net
        for owner in owners:
            if owner.startswith("tag:"):
                if owner in node_tags:
                    return True
            elif owner.startswith("group:"):
                members = p.groups.get(owner, []) if p is not None else []
                if user_id is not None and any(net.user_id_for(m) == user_id for m in members):
                    return True
            elif owner == "autogroup:member":
                if user_id is not None:
                    return True
            elif user_id is not None and net.user_id_for(owner) == user_id:
                return True
        return False

    def auto_approved(self, node: Node) -> tuple[str, ...]:
        """Advertised routes of `node` that autoApprovers approve (exit routes in pairs)."""
        if self.compiled.p is None or self.policy is None:
            return ()
        return tuple(self.compiled.auto_approved_routes(node_info(node)))

    def effective_routes(self, node_id: int) -> list[str]:
        if not self.known(node_id):
            return []
        return self.compiled.effective_routes(node_id)

    def primary_routes(self, node_id: int) -> list[str]:
        if not self.known(node_id):
            return []
        return self.compiled.primary_routes(node_id)


def _prefix_key(text: str) -> tuple:
    net = ipaddress.ip_network(text, strict=False)
    return (net.version, int(net.network_address), net.prefixlen)
