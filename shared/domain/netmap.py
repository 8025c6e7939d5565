"""Building each node's network map, and what each node must be told when something changes.

`Tailnet` is the coordinator's in-memory picture of the tailnet (users, nodes, who is online, the
DERP map and DNS config). It is plain data and pure functions: the service feeds it records from the
store's change log and asks it for full maps and per-viewer deltas. A viewer's map session keeps the
set of peer ids it has been sent (`sent`), because the client's map is an upsert/remove log: a peer
must be added with PeersChanged before it can be patched, and removed with PeersRemoved.

Visibility: `Tailnet.visibility` decides which peers a node may see; the coordinator plugs in the
live policy (`Tailnet.policy`, shared/domain/policy/host.py), which also gives each viewer its
PacketFilter, SSHPolicy, CapMap and the AllowedIPs / PrimaryRoutes of peers with routes. Without a
policy object every other node with a disco key is visible and the filter allows all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trioscale.shared.model import Node, User

from . import dnsconfig, ipalloc, peerchunks, tailcfg
from .peerchunks import ChunkedIds, ChunkedNodes, Fragment, PeerChunk
from .peerset import Announced, KnownToAll, PeerSet

#: node fields a peer can be told about with a PeersChangedPatch instead of the full node
PATCHABLE_FIELDS = frozenset({"endpoints", "home_derp", "disco_key", "last_seen", "node_key", "expiry"})
#: node fields that only the node itself reports; a change to them is not news to the node
SELF_REPORTED_FIELDS = frozenset({"endpoints", "home_derp", "disco_key", "hostinfo", "last_seen"})


@dataclass
class Settings:
    base_domain: str
    domain: str = ""  # MapResponse.Domain: the tailnet's display name
    dns_config: dict[str, Any] | None = None
    derp_map: dict[str, Any] = field(default_factory=lambda: {"Regions": {}})
    disable_log_tail: bool = True


Visibility = Callable[[Node, Node], bool]


def default_visibility(viewer: Node, peer: Node) -> bool:
    return True


@dataclass
class Tailnet:
    settings: Settings
    nodes: dict[int, Node] = field(default_factory=dict)
    users: dict[int, User] = field(default_factory=dict)
    online: set[int] = field(default_factory=set)
    visibility: Visibility = default_visibility
    #: the live policy (policy/host.PolicyHost); None = allow all, no routes
    policy: Any = None
    #: node id -> (node version, online, expired, base domain, its peer JSON): a first map is
    #: assembled from these, not rebuilt peer by peer (see `peer_text`)
    peer_texts: dict[int, tuple[Node, bool, bool, str, bytes]] = field(default_factory=dict, repr=False)
    #: the addresses and names nodes hold, for allocation (kept by put_node / drop_node /
    #: replace_nodes; code that assigns `nodes` directly allocates from the store instead)
    holdings: ipalloc.Holdings = field(default_factory=ipalloc.Holdings, repr=False)
    #: nodes announced to every session at once; each session's PeerSet follows it
    announced: Announced = field(default_factory=Announced, repr=False)
    #: nodes every session but their own is known to have been told of (fanout.every_other_knows)
    known_to_all: KnownToAll = field(default_factory=KnownToAll, repr=False)
    #: (policy index, its departures) when every session's node was last found in that index
    #: (fanout._Run.every_session_in); None: not known
    sessions_indexed: tuple[Any, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        #: id range -> its peers' JSON as one piece, for first maps (shared/domain/peerchunks.py);
        #: `nodes` and `online` drop a range's piece when one of its ids changes
        self.peer_chunks: dict[int, PeerChunk] = {}
        self.nodes = self.nodes
        self.online = self.online

    def __setattr__(self, name: str, value: Any) -> None:
        # a new node table or online set (a reload) is wrapped to keep the kept chunks true
        if name == "nodes" and "peer_chunks" in self.__dict__:
            self.peer_chunks.clear()
            value = ChunkedNodes(self.peer_chunks, value)
        elif name == "online" and "peer_chunks" in self.__dict__:
            self.peer_chunks.clear()
            value = ChunkedIds(self.peer_chunks, value)
        object.__setattr__(self, name, value)

    # -- changes -------------------------------------------------------------------------------
    def put_node(self, node: Node) -> Node | None:
        """Add or replace a node; the one it replaces, if any."""
        old = self.nodes.get(node.id)
        self.nodes[node.id] = node
        if old is None or (old.ipv4, old.ipv6, old.given_name) != (node.ipv4, node.ipv6, node.given_name):
            self.holdings.hold(node.id, node.ipv4, node.ipv6, node.given_name)
        return old

    def drop_node(self, node_id: int) -> Node | None:
        self.holdings.release(node_id)
        return self.nodes.pop(node_id, None)

    def replace_nodes(self, nodes: Iterable[Node]) -> None:
        self.nodes = {}
        self.holdings = ipalloc.Holdings()
        for node in nodes:
            self.put_node(node)

    # -- queries -------------------------------------------------------------------------------
    def announceable(self, node: Node) -> bool:
        """Clients ignore peers without a disco key, so a node is announced once it has one."""
        return node.disco_key is not None

    def can_see(self, viewer: Node, peer: Node) -> bool:
        return peer.id != viewer.id and self.announceable(peer) and self.visibility(viewer, peer)

    def visible_peers(self, viewer: Node) -> list[Node]:
        candidates: Iterable[Node] = self.nodes.values()
        if self.policy is not None and self.visibility == self.policy.can_see:
            # the policy knows whom the viewer may see (a superset of can_see): look only at those,
            # not at every node of the tailnet (a first map was O(N) can_see calls, O(N²) in all)
            # and every one of those it may see (class peers and shares are exactly can_see), so
            # what is left to ask is whether the peer can be announced yet
            get = self.nodes.get
            vid = viewer.id
            return [n for i in sorted(self.policy.visible_ids(vid))
                    if i != vid and (n := get(i)) is not None and n.disco_key is not None]  # announceable
        return sorted((p for p in candidates if self.can_see(viewer, p)), key=lambda n: n.id)

    def peer_view(self, viewer_id: int | None, peer: Node) -> Any:
        """What `viewer_id` is told about `peer` beyond the plain node (AllowedIPs, PrimaryRoutes,
        CapMap from the policy); None for the common case. Equal views give equal peer JSON."""
        if self.policy is None or viewer_id is None:
            return None
        return self.policy.peer_view(viewer_id, peer.id)

    def peer_json(self, peer: Node, now: datetime, viewer_id: int | None = None, view: Any = False) -> dict[str, Any]:
        if view is False:
            view = self.peer_view(viewer_id, peer)
        extra: dict[str, Any] = {}
        if view is not None:
            allowed, primary, caps = view
            extra = {"allowed_ips": list(allowed), "primary_routes": list(primary)}
            if caps:
                extra["cap_map"] = {k: [] for k in caps}
        return tailcfg.node_json(
            peer,
            base_domain=self.settings.base_domain,
            now=now,
            online=peer.id in self.online,
            is_self=False,
            **extra,
        )

    def peer_text(self, peer: Node, now: datetime) -> bytes:
        """`peer_json` for a viewer with no picture of its own (`peer_view` None), as JSON bytes,
        kept per node version: in a join storm each node's JSON goes into thousands of first maps."""
        online = peer.id in self.online
        expired = peer.is_expired(now)
        domain = self.settings.base_domain
        ent = self.peer_texts.get(peer.id)
        if ent is not None and ent[0] is peer and ent[1] == online and ent[2] == expired and ent[3] == domain:
            return ent[4]
        text = json.dumps(self.peer_json(peer, now, view=None), separators=(",", ":"), ensure_ascii=False).encode()
        texts = self.peer_texts
        if ent is None and len(texts) >= len(self.nodes) + 64:
            for gone in [i for i in texts if i not in self.nodes]:
                del texts[gone]  # removed nodes' entries, dropped in bulk
        texts[peer.id] = (peer, online, expired, domain, text)
        return text

    def self_json(self, node: Node, now: datetime) -> dict[str, Any]:
        if self.policy is None:
            cap_map, allowed, primary = tailcfg.self_cap_map(), None, []
        else:
            cap_map = self.policy.self_cap_map(node.id)
            allowed, primary = self.policy.self_view(node.id)
        return tailcfg.node_json(
            node,
            base_domain=self.settings.base_domain,
            now=now,
            online=True,
            is_self=True,
            cap_map=cap_map,
            allowed_ips=allowed,
            primary_routes=primary,
        )

    def ssh_policy(self, viewer: Node) -> dict[str, Any] | None:
        """The viewer's SSHPolicy, None when the policy has no `ssh` rules (nothing is sent)."""
        return None if self.policy is None else self.policy.ssh_policy(viewer.id)

    def user_profiles(self, nodes: Iterable[Node]) -> list[dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        for node in nodes:
            if node.tags:
                seen[tailcfg.TAGGED_DEVICES_USER_ID] = tailcfg.TAGGED_DEVICES_PROFILE
            elif node.user_id in self.users and node.user_id not in seen:
                seen[node.user_id] = tailcfg.user_profile(self.users[node.user_id])
        return [seen[k] for k in sorted(seen)]

    def dns_config_for(self, node: Node) -> dict[str, Any] | None:
        """The DNSConfig `node` is sent: the shared one plus its own CertDomains (dnsconfig.py)."""
        return dnsconfig.for_node(self.settings.dns_config, node.given_name, self.settings.base_domain)

    def packet_filter(self, viewer: Node) -> list[dict[str, Any]]:
        """The viewer's PacketFilter ([] = deny all inbound, sent as such)."""
        if self.policy is None:
            return tailcfg.FILTER_ALLOW_ALL
        return self.policy.packet_filter(viewer.id)

    def full_map(self, viewer: Node, now: datetime) -> tuple[dict[str, Any], set[int]]:
        """The first message of a map stream, and the peer ids it announces."""
        peers = self.visible_peers(viewer)
        msg: dict[str, Any] = {"Node": self.self_json(viewer, now)}
        if peers:
            msg["Peers"] = [self.peer_json(p, now, viewer.id) for p in peers]
        self._map_rest(msg, viewer, self.user_profiles([viewer, *peers]), now)
        return msg, {p.id for p in peers}

    def full_map_text(self, viewer: Node, now: datetime) -> tuple[dict[str, Any], list[bytes | Fragment], PeerSet]:
        """`full_map` in parts: every field but Peers, the Peers array's contents as pieces (runs
        of peer JSON joined by commas, each bytes or a kept `Fragment`; the pieces go together
        with commas between them) and the peers it announces. A first map of thousands of peers
        is megabytes: where the viewer sees most of the tailnet, it is assembled from kept chunks
        (shared/domain/peerchunks.py), otherwise from each peer's kept JSON (`peer_text`)."""
        msg: dict[str, Any] = {"Node": self.self_json(viewer, now)}
        chunked = self._chunk_view(viewer)
        if chunked is not None:
            visible, pictured = chunked
            pieces, ids, keys = peerchunks.chunked_peers(
                self, viewer.id, now, visible, pictured, lambda p: self._own_peer_text(viewer, p, now))
            keys.add(peerchunks.profile_key(viewer))
            self._map_rest(msg, viewer, self.profiles_of(keys), now)
            return msg, pieces, PeerSet.from_mask(ids)
        peers = self.visible_peers(viewer)
        self._map_rest(msg, viewer, self.user_profiles([viewer, *peers]), now)
        if not peers:
            return msg, [], PeerSet()
        pictured = self._pictured_peers(viewer)
        parts = [self.peer_text(p, now) if pictured is not None and p.id not in pictured
                 else self._own_peer_text(viewer, p, now) for p in peers]
        return msg, [b",".join(parts)], PeerSet(p.id for p in peers)

    def _own_peer_text(self, viewer: Node, peer: Node, now: datetime) -> bytes:
        view = self.peer_view(viewer.id, peer)
        return self.peer_text(peer, now) if view is None else self._dump_peer(peer, now, view)

    def _dump_peer(self, peer: Node, now: datetime, view: Any) -> bytes:
        return json.dumps(self.peer_json(peer, now, view=view), separators=(",", ":"), ensure_ascii=False).encode()

    def _chunk_view(self, viewer: Node) -> tuple[AbstractSet[int] | None, AbstractSet[int]] | None:
        """(the ids `viewer` may see, None = all; the peers it has its own picture of) when its
        first map is best assembled from kept chunks: it sees every node, or at least half of
        the tailnet by the policy. None otherwise (a first map of a few peers looks at those)."""
        policy = self.policy
        if policy is None:
            return (None, frozenset()) if self.visibility is default_visibility else None
        if self.visibility != policy.can_see or not policy.known(viewer.id):
            return None
        pictured = self._pictured_peers(viewer)
        if pictured is None:
            return None
        visible = policy.visible_ids(viewer.id)
        if 2 * len(visible) < len(self.nodes):
            return None
        return visible, pictured

    def profiles_of(self, keys: Iterable[int]) -> list[dict[str, Any]]:
        """The UserProfiles for profile keys (peerchunks.profile_key), in key order."""
        out = []
        for key in sorted(keys):
            if key == tailcfg.TAGGED_DEVICES_USER_ID:
                out.append(tailcfg.TAGGED_DEVICES_PROFILE)
            elif key in self.users:
                out.append(tailcfg.user_profile(self.users[key]))
        return out

    def _pictured_peers(self, viewer: Node) -> set[int] | None:
        """The only peers `viewer` may have a picture of (`peer_view` not None): routers and nodes
        with IPv4 off; None when it may be any (the viewer has IPv4 off). A
        first map of thousands of peers then asks the policy about the few, not every one."""
        policy = self.policy
        if policy is None:
            return set()
        off = policy.ipv4_off()
        return None if viewer.id in off else policy.routers() | off

    def _map_rest(self, msg: dict[str, Any], viewer: Node, profiles: list[dict[str, Any]], now: datetime) -> None:
        msg["DERPMap"] = self.settings.derp_map
        dns = self.dns_config_for(viewer)
        if dns is not None:
            msg["DNSConfig"] = dns
        if self.settings.domain:
            msg["Domain"] = self.settings.domain
        msg["PacketFilter"] = self.packet_filter(viewer)
        ssh = self.ssh_policy(viewer)
        if ssh is not None:
            msg["SSHPolicy"] = ssh
        msg["UserProfiles"] = profiles
        msg["ControlTime"] = tailcfg.format_time(now)
        if self.settings.disable_log_tail:
            msg["Debug"] = {"DisableLogTail": True}

    # -- deltas --------------------------------------------------------------------------------
    def peer_delta(
        self,
        viewer: Node,
        sent: set[int],
        old: Node | None,
        new: Node | None,
        changed: frozenset[str],
        now: datetime,
    ) -> "Delta | None":
        """What `viewer` (which has been sent `sent`) must be told after a peer went from `old` to
        `new` (None = absent). Updates `sent`. `changed` names the node fields that changed."""
        subject = new or old
        assert subject is not None
        if subject.id == viewer.id:
            return None
        visible = new is not None and self.can_see(viewer, new)
        was_sent = subject.id in sent
        if visible and not was_sent:
            sent.add(subject.id)
            return Delta("changed", subject.id)
        if visible and was_sent:
            assert new is not None
            if old is not None and changed and changed <= PATCHABLE_FIELDS and old.disco_key is not None:
                return Delta("patch", subject.id)
            if not changed:
                return None
            return Delta("changed", subject.id)
        if was_sent:
            sent.discard(subject.id)
            return Delta("removed", subject.id)
        return None

    def self_changed(self, changed: frozenset[str]) -> bool:
        return bool(changed - SELF_REPORTED_FIELDS)

    def encode_delta(self, delta: "Delta", changed: frozenset[str], now: datetime, view: Any = None) -> dict[str, Any]:
        """The MapResponse body for a delta; the same for every viewer with the same `view` of the
        peer (Tailnet.peer_view)."""
        if delta.kind == "removed":
            return {"PeersRemoved": [delta.node_id]}
        node = self.nodes[delta.node_id]
        if delta.kind == "patch":
            return {"PeersChangedPatch": [self.patch_json(node, changed)]}
        msg: dict[str, Any] = {"PeersChanged": [self.peer_json(node, now, view=view)]}
        profiles = self.user_profiles([node])
        if profiles:
            msg["UserProfiles"] = profiles
        return msg

    def patch_json(self, node: Node, changed: Iterable[str]) -> dict[str, Any]:
        patch: dict[str, Any] = {"NodeID": node.id}
        changed = set(changed)
        if "endpoints" in changed:
            patch["Endpoints"] = list(node.endpoints)
        if "home_derp" in changed and node.home_derp:
            patch["DERPRegion"] = node.home_derp
        if "disco_key" in changed and node.disco_key:
            patch["DiscoKey"] = tailcfg.keys.DISCO.format(node.disco_key)
        if "node_key" in changed:
            patch["Key"] = tailcfg.keys.NODE.format(node.node_key)
        if "expiry" in changed:
            patch["KeyExpiry"] = tailcfg.format_time(node.expiry)
        if "last_seen" in changed and node.last_seen is not None and node.id not in self.online:
            patch["LastSeen"] = tailcfg.format_time(node.last_seen)
        return patch

    def online_patch(self, node_id: int, online: bool, last_seen: datetime | None) -> dict[str, Any]:
        patch: dict[str, Any] = {"NodeID": node_id, "Online": online}
        if not online and last_seen is not None:
            patch["LastSeen"] = tailcfg.format_time(last_seen)
        return {"PeersChangedPatch": [patch]}


@dataclass(frozen=True, slots=True)
class Delta:
    kind: str  # "changed" | "patch" | "removed"
    node_id: int


def changed_fields(old: Node | None, new: Node | None, hint: Iterable[str] = ()) -> frozenset[str]:
    """The node fields that differ between two versions (the change log's hint is a lower bound)."""
    if old is None or new is None:
        return frozenset(hint) | frozenset({"*"})
    diff = {name for name in Node.__slots__ if getattr(old, name) != getattr(new, name)}
    return frozenset(diff)


def dns_config(
    *,
    magic_dns: bool,
    base_domain: str,
    search_domains: Iterable[str] = (),
    nameservers: Iterable[str] = (),
    override_local_dns: bool = False,
    split: Mapping[str, Iterable[str]] | None = None,
    extra_records: Iterable[Mapping[str, str]] = (),
    reverse_zones: Iterable[str] = (),
) -> dict[str, Any]:
    """tailcfg.DNSConfig from the `dns:` configuration (Headscale's mapping, protocol doc §6.2)."""
    cfg: dict[str, Any] = {}
    resolvers = dnsconfig.resolvers(nameservers)
    if resolvers:
        cfg["Resolvers" if override_local_dns else "FallbackResolvers"] = resolvers
    routes: dict[str, Any] = {}
    for suffix, addrs in (split or {}).items():
        routes[suffix.strip().strip(".")] = dnsconfig.resolvers(addrs)
    if magic_dns:
        for zone in reverse_zones:
            routes[zone] = None
    if routes:
        cfg["Routes"] = routes
    domains = ([base_domain] if base_domain else []) + [d for d in search_domains if d != base_domain]
    if domains:
        cfg["Domains"] = domains
    cfg["Proxied"] = bool(magic_dns)
    records = [r for r in (dnsconfig.extra_record(rec) for rec in extra_records) if r is not None]
    if records:
        cfg["ExtraRecords"] = records
    return cfg
