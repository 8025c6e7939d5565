"""Who is told what after a change: the fan-out, as a function over plain data.

`fan_out(tailnet, sessions, change, now)` applies one change to the in-memory tailnet (its nodes,
users, online set, settings and live policy) and returns the messages it calls for, as
`(SessionView, Message)` pairs in the order each session must receive them. No I/O, no clock, no
Trio: the coordinator fetches records from the store, calls this, and queues the messages on its
map sessions (services/coord/sessions.py).

A `SessionView` is what one map session has told its client: the peers it announced (`sent`), its
PacketFilter, SSHPolicy and own Node, and, for peers whose picture depends on the viewer (routers,
disable-ipv4), that picture (`views`). The fan-out updates each view to what its messages say, so a
view always equals what the client knows; an update sends only what differs (`PacketFilter: []`,
deny all inbound, is sent as such; an unchanged filter not at all). A client's map is an
upsert/remove log, so a peer is added with PeersChanged before it is patched, removed with
PeersRemoved.

Identical messages are built once per change and shared by all their receivers (a `Message` is
serialised once, however many sessions it goes to). A message for every session of the fan-out is
addressed to `EVERY_SESSION` instead of to each (a join in a full mesh), one for every session but
a node's own to `EverySession(but=node)` (its endpoints or online state): the receivers then queue
it once for all, not once each (`addressed` spells it out per session).

A policy change diffs *visibility classes* (nodes with the same rule memberships see the same peers,
`CompiledPolicy.visibility_class`): old and new peer sets are compared once per pair of classes,
and each session only looks at the peers that entered or left its class's set.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trioscale.shared.model import Node, User

from . import tailcfg
from .netmap import PATCHABLE_FIELDS, Delta, Tailnet, changed_fields
from .peerchunks import Fragment
from .peerset import PeerSet


def dumps(obj: Any) -> str:
    """JSON text as the coordinator sends it (compact, UTF-8 kept)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


#: a message's dict is kept after encoding below this size (a delta's, for coalescing); a first
#: map's is dropped
KEEP_BODY_BELOW = 64 << 10

#: the punctuation of a first map assembled from pieces (shared, so compressed once)
PEERS_OPEN = Fragment(b'{"Peers":[')
COMMA = Fragment(b",")


class Message:
    """One MapResponse body, serialised once and shared by every session it goes to. `frames` is
    the transport's cache of its framed (and compressed) forms. A message built from `parts` is
    their concatenation; the transport may compress each part on its own (a kept `Fragment`
    once for every message it is in) and send the frames one after another."""

    __slots__ = ("body", "_json", "frames", "parts")

    def __init__(self, body: dict[str, Any] | None = None, *, json_text: str | None = None,
                 json_bytes: bytes | None = None, parts: list[bytes | Fragment] | None = None) -> None:
        self.body = body
        self._json: bytes | None = json_text.encode() if json_text is not None else json_bytes
        self.frames: dict[str | None, bytes] = {}
        self.parts = parts

    def json(self) -> bytes:
        if self._json is None:
            if self.parts is not None:
                self._json = b"".join(p if type(p) is bytes else p.text for p in self.parts)  # type: ignore[union-attr]
                self.parts = None
            else:
                self._json = dumps(self.body).encode()
            if len(self._json) > KEEP_BODY_BELOW:
                self.body = None  # a full map's dicts are large; the JSON is all that is needed now
        return self._json

    def fields(self) -> dict[str, Any]:
        """The body as a dict (what coalescing reads; shared/domain/mapbatch.py): parsed from the
        JSON once for a message built from text or too large to keep its dict. Read-only."""
        if self.body is None:
            self.body = json.loads(self.json())
        return self.body


class SessionView:
    """What one map session has told its client (see the module docstring)."""

    def __init__(self, node_id: int, capver: int = tailcfg.CAPVER_CERT_HASH) -> None:
        self.node_id = node_id
        #: the client's capability version (from its MapRequest): what it can read
        self.capver = capver
        self.sent: PeerSet = PeerSet()
        self.filter: Any = None
        self.ssh: Any = None
        self.self_node: Any = None
        self.views: dict[int, Any] = {}


#: the SSHPolicy that takes back every rule a client was given: to a client a missing SSHPolicy
#: means "unchanged" (tailcfg.MapResponse.SSHPolicy), so a policy that drops its `ssh` section
#: must say so to the sessions that were sent rules. Shared, never mutated.
NO_SSH_RULES: dict[str, Any] = {"rules": []}

class EverySession:
    """The addressee of a message for every session the fan-out was given but those of node `but`
    (a change of that node, which its own sessions learn of otherwise); their `sent` already says
    what it announces."""

    __slots__ = ("but",)

    def __init__(self, but: int | None = None) -> None:
        self.but = but

    def __repr__(self) -> str:
        return "EVERY_SESSION" if self.but is None else f"EverySession(but={self.but})"


EVERY_SESSION = EverySession()
#: a message for every other session goes to `EverySession` once there are this many of them
EVERY_SESSION_FROM = 2

Sessions = Mapping[int, Collection[SessionView]]
Messages = list[tuple[SessionView | EverySession, Message]]


def addressed(messages: Messages, sessions: Sessions) -> list[tuple[SessionView, Message]]:
    """`messages` with each one for `EVERY_SESSION` given to every session in `sessions` (those the
    fan-out was given), in order: what each session receives."""
    out: list[tuple[SessionView, Message]] = []
    for view, message in messages:
        if type(view) is EverySession:
            out.extend((each, message) for node_id, views in sessions.items() if node_id != view.but
                       for each in views)
        else:
            out.append((view, message))  # type: ignore[arg-type]
    return out


# -- changes -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeSet:
    """A node's new version (created or updated); `fields` is the change log's hint."""
    node: Node
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeRemoved:
    node_id: int


@dataclass(frozen=True)
class OnlineSet:
    """A node came online or went offline; `last_seen` goes into the offline patch."""
    node_id: int
    online: bool
    last_seen: datetime | None = None


@dataclass(frozen=True)
class UserSet:
    user: User
    created: bool = False


@dataclass(frozen=True)
class UserRemoved:
    user_id: int


@dataclass(frozen=True)
class PolicySet:
    """A new (already validated) policy; None = no policy, allow all."""
    policy: Any
    text: str | None
    version: int | None = None


@dataclass(frozen=True)
class ShareSet:
    node_id: int
    user_id: int
    shared: bool


@dataclass(frozen=True)
class DERPMapSet:
    derp_map: dict[str, Any]


@dataclass(frozen=True)
class DNSConfigSet:
    dns_config: dict[str, Any] | None


Change = NodeSet | NodeRemoved | OnlineSet | UserSet | UserRemoved | PolicySet | ShareSet | DERPMapSet | DNSConfigSet


def fan_out(tailnet: Tailnet, sessions: Sessions, change: Change, now: datetime) -> Messages:
    """Apply `change` to `tailnet` and return the messages each session must be sent for it."""
    run = _Run(tailnet, sessions, now)
    if isinstance(change, NodeSet):
        run.node_set(change.node, change.fields)
    elif isinstance(change, NodeRemoved):
        run.node_removed(change.node_id)
    elif isinstance(change, OnlineSet):
        run.set_online(change.node_id, change.online, change.last_seen)
    elif isinstance(change, UserSet):
        run.user_set(change.user, change.created)
    elif isinstance(change, UserRemoved):
        tailnet.users.pop(change.user_id, None)
        if tailnet.policy is not None:
            tailnet.policy.remove_user(change.user_id)
    elif isinstance(change, PolicySet):
        run.policy_swap(change.policy, change.text, change.version)
    elif isinstance(change, ShareSet):
        run.share_set(change.node_id, change.user_id, change.shared)
    elif isinstance(change, DERPMapSet):
        run.derp_map_set(change.derp_map)
    elif isinstance(change, DNSConfigSet):
        run.dns_config_set(change.dns_config)
    else:
        raise TypeError(f"not a change: {change!r}")
    return run.out


def first_map(tailnet: Tailnet, view: SessionView, now: datetime) -> dict[str, Any]:
    """A new session's first map (for its client's capability version); records in `view` what it
    tells the client."""
    node = tailnet.nodes[view.node_id]
    first, sent = tailnet.full_map(node, now)
    first["DERPMap"] = tailcfg.derp_map_for_capver(first["DERPMap"], view.capver)
    view.sent = PeerSet(sent)
    remember_first_map(tailnet, view, first)
    return first


def first_map_message(tailnet: Tailnet, view: SessionView, now: datetime) -> Message:
    """`first_map` as a Message, its Peers assembled from kept JSON (Tailnet.full_map_text) rather
    than encoded again for every new session, and left in pieces: the transport compresses the
    kept ones once (Message.parts)."""
    node = tailnet.nodes[view.node_id]
    head, pieces, view.sent = tailnet.full_map_text(node, now)
    head["DERPMap"] = tailcfg.derp_map_for_capver(head["DERPMap"], view.capver)
    remember_first_map(tailnet, view, head)
    rest = dumps(head).encode()
    if not pieces:
        return Message(json_bytes=rest)
    # {"Peers":[piece,…,piece],<rest>}
    parts: list[bytes | Fragment] = [PEERS_OPEN]
    for piece in pieces:
        parts.append(piece)
        parts.append(COMMA)
    parts[-1] = b"]," + rest[1:]
    return Message(parts=parts)


def remember_first_map(tailnet: Tailnet, view: SessionView, first: dict[str, Any]) -> None:
    """Record what a first map told the client (filter, SSH policy, own node, router pictures); its
    announced peers follow the tailnet's announcements from here on."""
    view.sent.follow(tailnet.announced)
    tailnet.known_to_all.session_opened(view.node_id, view.sent)
    view.filter = first.get("PacketFilter")
    view.ssh = first.get("SSHPolicy")
    view.self_node = first.get("Node")
    view.views = {}
    policy = tailnet.policy
    if policy is None or not policy.known(view.node_id):
        tailnet.sessions_indexed = None  # a session of a node the policy does not index
    if policy is None:
        return
    vid = view.node_id
    for pid in _view_peers(vid, view, _routers(policy), policy.ipv4_off()):
        picture = tailnet.peer_view(vid, tailnet.nodes[pid])
        if picture is not None:
            view.views[pid] = picture


def viewers_that_may_know(tailnet: Tailnet, sessions: Sessions,
                          node_id: int) -> list[tuple[int, Collection[SessionView]]] | None:
    """(viewer id, its sessions) for the viewers that may see `node_id`; None = maybe anyone.
    Visibility is symmetric (the policy's peers are "traffic allowed in either direction", shares
    show both sides) and the fan-out keeps every session's `sent` equal to what its viewer may see,
    so only the viewers among the node's own visible peers qualify: O(peers), not O(sessions) per
    online or endpoint change (10,000 sessions coming online were O(N²)). Without a policy view of
    the node: anyone."""
    policy = tailnet.policy
    if policy is not None and tailnet.visibility == policy.can_see and policy.known(node_id):
        peers = policy.visible_ids(node_id)
        if len(peers) < len(sessions):
            return [(v, sessions[v]) for v in peers if v in sessions]
    return None


# -- filter text ---------------------------------------------------------------------------------------
def filter_key(keys: dict[int, tuple[Any, str]], filt: Any) -> str:
    """The filter's JSON text, doubling as its dedup key; computed once per filter object (objects
    are kept alive in `keys`, so an id is never reused while the dict lives)."""
    ent = keys.get(id(filt))
    if ent is not None and ent[0] is filt:
        return ent[1]
    key = filter_json(keys, filt) if isinstance(filt, list) else dumps(filt)
    keys[id(filt)] = (filt, key)
    return key


def filter_json(keys: dict[int, tuple[Any, str]], filt: list) -> str:
    """`dumps(filt)`, with each SrcIPs list encoded once however many filters share it (one rule's
    sources appear in the filter of every node it reaches: thousands of addresses, hundreds of
    filters)."""
    rules = []
    for rule in filt:
        if not isinstance(rule, dict):
            return dumps(filt)
        parts = []
        for k, v in rule.items():
            if k == "SrcIPs" and isinstance(v, list):
                ent = keys.get(id(v))
                if ent is None or ent[0] is not v:
                    ent = keys[id(v)] = (v, dumps(v))
                parts.append(f'"SrcIPs":{ent[1]}')
            else:
                parts.append(dumps(k) + ":" + dumps(v))
        rules.append("{" + ",".join(parts) + "}")
    return "[" + ",".join(rules) + "]"


# -- peers whose picture depends on the viewer ------------------------------------------------------------
def _routers(policy: Any) -> set[int]:
    return policy.routers()


def _dependent(vid: int, routers: set[int], off: frozenset[int]) -> set[int] | None:
    """Peers whose picture can depend on viewer `vid` (None = all of them): routers, and nodes
    with disable-ipv4; every peer when the viewer has disable-ipv4 itself."""
    if vid in off:
        return None
    return routers | off if off else routers


def _view_peers(vid: int, view: SessionView, routers: set[int], off: frozenset[int]) -> set[int]:
    """The peers of `view` whose viewer-specific picture must be looked at again: those that
    can depend on the viewer, and those it was last told a specific picture of."""
    sent = view.sent
    dep = _dependent(vid, routers, off)
    if dep is None:
        return set(sent)
    out = {p for p in dep if p in sent}
    if view.views:
        out |= {p for p in view.views if p in sent}
    return out


class _Run:
    """One change's fan-out: the state it reads, the messages it builds (shared via `cache`)."""

    def __init__(self, tailnet: Tailnet, sessions: Sessions, now: datetime) -> None:
        self.tailnet = tailnet
        self.policy = tailnet.policy
        self.sessions = sessions
        self.now = now
        self.out: Messages = []

    def push(self, view: SessionView, message: Message) -> None:
        self.out.append((view, message))

    def broadcast(self, message: Message) -> None:
        for views in self.sessions.values():
            for view in views:
                self.push(view, message)

    # -- settings ------------------------------------------------------------------------------------
    def derp_map_set(self, derp_map: dict[str, Any]) -> None:
        if derp_map == self.tailnet.settings.derp_map:
            return
        self.tailnet.settings.derp_map = derp_map
        message = Message({"DERPMap": derp_map})
        older: Message | None = None  # built once, if any client too old for certificate pins is here
        for views in self.sessions.values():
            for view in views:
                if view.capver >= tailcfg.CAPVER_CERT_HASH:
                    self.push(view, message)
                    continue
                if older is None:
                    older = Message({"DERPMap": tailcfg.derp_map_for_capver(derp_map, view.capver)})
                self.push(view, older)

    def dns_config_set(self, dns_config: dict[str, Any] | None) -> None:
        """A client replaces its whole DNSConfig, so each node gets its own copy with its
        CertDomains (one message per node; DNS changes are rare)."""
        tailnet = self.tailnet
        if dns_config == tailnet.settings.dns_config:
            return
        tailnet.settings.dns_config = dns_config
        if dns_config is None:
            return
        for node_id, views in self.sessions.items():
            node = tailnet.nodes.get(node_id)
            if node is None:
                continue
            message = Message({"DNSConfig": tailnet.dns_config_for(node)})
            for view in views:
                self.push(view, message)

    # -- users -----------------------------------------------------------------------------------------
    def user_set(self, user: User, created: bool) -> None:
        self.tailnet.users[user.id] = user
        policy = self.policy
        if policy is not None and policy.set_user(user) and policy.compiled.net.by_user.get(user.id):
            # a user with nodes was renamed: selectors naming it may now match its nodes
            # differently, for them and for everyone who sees them (rare: a full resync)
            self.policy_resync(None)
            self.refresh_others(None, set())
        if not created:
            self.broadcast(Message({"UserProfiles": [tailcfg.user_profile(user)]}))

    # -- nodes -----------------------------------------------------------------------------------------
    def node_set(self, new: Node, hint: tuple[str, ...]) -> None:
        tailnet = self.tailnet
        old = tailnet.put_node(new)
        changed = changed_fields(old, new, hint)
        if not changed:
            return
        policy_changed, routers_moved, audience = self.policy_node_set(new)
        now = self.now
        cache: dict[Any, Message] = {}
        was_announced = old is not None and tailnet.announceable(old)
        viewers: list | None = None
        if not was_announced and not tailnet.announceable(new):
            # never announced, still not announceable: no session has it in `sent` (only visible,
            # hence announceable, peers get there), so only its own sessions can learn anything
            viewers = []
        elif not was_announced and self.announce_new(new, changed):
            viewers = []
        elif not policy_changed:
            # when the policy's picture of the node is unchanged, so is who may see it: only the
            # node's own sessions and those of its visible peers can be told anything (endpoint churn)
            viewers = viewers_that_may_know(tailnet, self.sessions, new.id)
            if viewers is None and was_announced and self.tell_every_other(old, new, changed):
                viewers = []
        if viewers is None:
            viewers = list(self.sessions.items())
        else:
            viewers = [(v, views) for v, views in viewers if v != new.id]  # its own: once, below
            if new.id in self.sessions:
                viewers.append((new.id, self.sessions[new.id]))
        for viewer_id, views in viewers:
            viewer = tailnet.nodes.get(viewer_id)
            if viewer is None:
                continue
            if viewer_id == new.id:
                if tailnet.self_changed(changed):
                    body = {"Node": tailnet.self_json(new, now)}
                    if "given_name" in changed and old is not None:
                        dns = tailnet.dns_config_for(new)  # its CertDomains follow its name
                        if dns is not None:
                            body["DNSConfig"] = dns
                    message = Message(body)
                    for view in views:
                        view.self_node = body["Node"]  # or the policy's part below sends it again
                        self.push(view, message)
                continue
            for view in views:
                delta = tailnet.peer_delta(viewer, view.sent, old, new, changed, now)
                if delta is not None:
                    self.push(view, self.delta_message(delta, changed, cache, viewer_id, view))
        if policy_changed:
            # the node's own sessions are resynced (what it may see can change wholesale, e.g. when
            # it is tagged); the others get their new filters / SSH policies / router views
            self.policy_resync({new.id})
            self.push_self_if_changed(new.id, new)
            self.refresh_others(new.id, routers_moved, only=audience)

    def announce_new(self, new: Node, changed: frozenset[str]) -> bool:
        """A node no one was told of became announceable (it joined, or sent its first disco key):
        tell every session that may see it, with one message shared by all, without asking each
        viewer's visibility. Only when the policy answers who may see it (symmetric visibility,
        `viewers_that_may_know`) and no viewer has a picture of its own of it (no routes, no
        disable-ipv4); False leaves it to the general path."""
        tailnet = self.tailnet
        policy = self.policy
        if policy is None or tailnet.visibility != policy.can_see or not policy.known(new.id):
            return False
        if policy.ipv4_off() or policy.compiled.net.nodes[new.id].routes:
            return False
        audience = policy.visible_ids(new.id)
        sessions = self.sessions
        nid = new.id
        message: Message | None = None
        if nid not in sessions and self.every_session_in(audience):
            # every session may see it (a full mesh): one entry for all, and one for their PeerSets
            tailnet.announced.append(nid)  # each session's PeerSet takes it when next read
            tailnet.known_to_all.learn(nid)
            if sessions:
                message = Message(tailnet.encode_delta(Delta("changed", nid), changed, self.now))
                self.out.append((EVERY_SESSION, message))
            return True
        pairs = ((v, sessions[v]) for v in audience if v in sessions) if len(audience) < len(sessions) \
            else sessions.items()
        push = self.out.append
        for vid, views in pairs:
            if vid == nid or vid not in audience:
                continue
            for view in views:
                if not view.sent.insert(nid):
                    continue  # cannot happen (it was not announceable); nothing new to it then
                if message is None:
                    message = Message(tailnet.encode_delta(Delta("changed", nid), changed, self.now))
                push((view, message))
        return True

    def every_session_in(self, audience: AbstractSet[int]) -> bool:
        """Whether every session's node is in `audience`. Asked of every node (a wildcard's view)
        at each join of a full mesh, the answer is kept: it stays true while no node leaves the
        policy's index and each session opened since was of a node in it (remember_first_map).
        Asking anew looks up every session, O(N) per join."""
        tailnet = self.tailnet
        net = self.policy.compiled.net
        every = audience is net.every_node
        if every and tailnet.sessions_indexed == (net, net.departures):
            return True
        if not self.sessions.keys() <= audience:
            return False
        if every:
            tailnet.sessions_indexed = (net, net.departures)
        return True

    def every_other_knows(self, node_id: int) -> bool:
        """Whether every session but the node's own has been told of it, so that a message about
        it for all of them can go to `EverySession(but=node_id)` (False when they are too few to be
        worth it)."""
        sessions = self.sessions
        if len(sessions) - (node_id in sessions) < EVERY_SESSION_FROM:
            return False
        known = self.tailnet.known_to_all
        if node_id in known:
            return True
        if all(node_id in view.sent for vid, views in sessions.items() if vid != node_id for view in views):
            known.learn(node_id)
            return True
        return False

    def tell_every_other(self, old: Node | None, new: Node, changed: frozenset[str]) -> bool:
        """An announced node changed and the policy's picture of it did not (so neither did who may
        see it): when every other session knows it and none has a picture of its own of it (it
        routes nothing, no one has IPv4 off), they all get the same delta, sent to
        `EverySession(but=new.id)`. False leaves it to the general path."""
        tailnet = self.tailnet
        policy = self.policy
        nid = new.id
        if old is None or policy is None or tailnet.visibility != policy.can_see or not tailnet.announceable(new):
            return False
        if policy.ipv4_off() or nid in policy.routers() or not self.every_other_knows(nid):
            return False
        patch = changed <= PATCHABLE_FIELDS and old.disco_key is not None
        delta = Delta("patch" if patch else "changed", nid)
        self.out.append((EverySession(nid), Message(tailnet.encode_delta(delta, changed, self.now))))
        return True

    def delta_message(self, delta: Delta, changed: frozenset[str], cache: dict, viewer_id: int,
                      view: SessionView) -> Message:
        tailnet = self.tailnet
        picture = None
        if delta.kind == "changed":
            picture = tailnet.peer_view(viewer_id, tailnet.nodes[delta.node_id])
            if picture is None:
                view.views.pop(delta.node_id, None)
            else:
                view.views[delta.node_id] = picture
        key = (delta.kind, picture)
        message = cache.get(key)
        if message is None:
            message = cache[key] = Message(tailnet.encode_delta(delta, changed, self.now, picture))
        return message

    def node_removed(self, node_id: int) -> None:
        tailnet = self.tailnet
        old = tailnet.drop_node(node_id)
        tailnet.online.discard(node_id)
        policy = self.policy
        if policy is not None and policy.remove_node(node_id):
            for views in self.sessions.values():
                for view in views:
                    if view.views:
                        view.views.pop(node_id, None)
            self.refresh_others(None, policy.elect())
        tailnet.known_to_all.forget(node_id)
        if old is None:
            return
        removed = Message({"PeersRemoved": [node_id]})
        for views in self.sessions.values():
            for view in views:
                if node_id in view.sent:
                    view.sent.discard(node_id)
                    self.push(view, removed)

    def set_online(self, node_id: int, online: bool, last_seen: datetime | None) -> None:
        tailnet = self.tailnet
        if online == (node_id in tailnet.online):
            return
        if online:
            tailnet.online.add(node_id)
        else:
            tailnet.online.discard(node_id)
        node = tailnet.nodes.get(node_id)
        if node is not None and tailnet.announceable(node):  # else no session was told of it
            patch = Message(tailnet.online_patch(node_id, online, last_seen))
            groups = viewers_that_may_know(tailnet, self.sessions, node_id)
            if groups is None and self.every_other_knows(node_id):
                self.out.append((EverySession(node_id), patch))
            else:
                for _, views in groups if groups is not None else self.sessions.items():
                    for view in views:
                        if node_id in view.sent:
                            self.push(view, patch)
        policy = self.policy
        if policy is not None and (policy.primaries or policy.compiled.net.route_owners):
            # HA routes: a router going offline hands over its prefixes
            moved = policy.elect()
            if moved:
                self.refresh_others(None, moved)

    # -- the policy's part of a node change ---------------------------------------------------------------
    def policy_node_set(self, new: Node) -> tuple[bool, set[int], set[int] | None]:
        """(whether the policy's picture changed, routers whose primaries moved, the nodes whose
        filters the change can touch: None = anyone's)."""
        host = self.policy
        if host is None:
            return False, set(), None
        old_info = host.infos.get(new.id)
        old_cls = host.compiled.visibility_class(new.id) if host.known(new.id) else ((), (), None)
        if not host.set_node(new):
            return False, set(), None
        routers = host.elect()
        audience = None if routers else self.filter_audience(
            old_info, host.infos.get(new.id), old_cls, host.compiled.visibility_class(new.id))
        return True, routers, audience

    def filter_audience(self, old_info, new_info, old_cls: tuple, new_cls: tuple) -> set[int] | None:
        """The nodes whose PacketFilter can change when one node goes from `old_info` to `new_info`
        (None = anyone's). A node's addresses appear in others' filters only as a source: in the
        filters of the destinations of the rules it is a source of (for autogroup:self rules, its
        user's devices), and, for app grants it is a destination of, in the companion-capability
        rules of their sources; and in the filters of the nodes shared with its user, while it is
        one of the user's untagged devices. Route changes (every `*` source lists the subnet
        routes) and SSH rules (principals) reach further: then everyone is looked at."""
        host = self.policy
        c = host.compiled
        if c.p is not None and c.p.ssh:
            return None
        if old_info is not None and new_info is not None and (
            old_info.routable_ips != new_info.routable_ips or old_info.approved_routes != new_info.approved_routes
        ):
            return None
        by_user = c.net.by_user
        subject = new_info if new_info is not None else old_info
        routeless = all(not (i.routable_ips or i.approved_routes) for i in (old_info, new_info) if i is not None)
        users = {i.user_id for i in (old_info, new_info) if i is not None and i.user_id is not None}
        out: set[int] = set()
        same_selectors = old_info is not None and new_info is not None and (
            old_info.tags == new_info.tags and old_info.user_id == new_info.user_id)
        for i in set(old_cls[0]) | set(new_cls[0]):
            if i >= len(c._rules):
                return None
            rc = c._rule(i)
            if (rc.src.wildcard and routeless and not rc.self_dst and subject.id not in rc.src.nodes
                    and (old_info is None or same_selectors)):
                # a `*` source is written as the tailnet's ranges (and the subnet routes, looked
                # at above), not node by node: the node is in no one's SrcIPs through this rule,
                # before or after (with no policy, the default rule: a join changes no filter)
                continue
            out |= rc.dst_nodes
            if rc.self_dst:
                for uid in users:
                    out |= by_user.get(uid, set())
        for i in set(old_cls[1]) | set(new_cls[1]):
            if i >= len(c._rules):
                return None
            if c._rules[i].app:
                out |= c._rule(i).src_nodes
        if host.shared_to:
            for info in (old_info, new_info):
                if info is not None and not info.tags and info.user_id is not None:
                    out |= host.shared_to.get(info.user_id, set())
        return out

    # -- building one session's update ------------------------------------------------------------------
    def session_update(
        self,
        view: SessionView,
        viewer: Node,
        filt: list | None,
        fkeys: dict,
        ssh: dict | None,
        ssh_key: str | None,
        added: list[int],
        removed: list[int],
        view_peers: set[int],
        cache: dict,
    ) -> None:
        """Queue one message with whatever of (filter, ssh, removed, added/changed peers) differs
        from what `view` was told. `view_peers`: peers whose viewer-specific picture may have
        changed (compared with view.views)."""
        tailnet = self.tailnet
        vid = viewer.id
        send_filter = filt is not None and filt != view.filter
        if ssh is None and view.ssh is not None:
            ssh = NO_SSH_RULES
        send_ssh = ssh is not None and ssh != view.ssh
        views = view.views
        sent = view.sent
        dep = _dependent(vid, _routers(self.policy), self.policy.ipv4_off()) if added else set()
        changed = sorted(added)
        sent.add_all(changed)
        for pid in removed:
            sent.discard(pid)
            views.pop(pid, None)
        # viewer-specific pictures: of added peers that can have one, and of known ones that moved
        changed_views: dict[int, Any] = {}
        if dep is None:
            with_view = changed
        else:
            with_view = [p for p in changed if p in dep] if dep else []
        for pid in with_view:
            changed_views[pid] = tailnet.peer_view(vid, tailnet.nodes[pid])
        if view_peers:
            added_set = set(changed)
            extra = []
            for pid in view_peers:
                if pid in sent and pid not in added_set:
                    picture = tailnet.peer_view(vid, tailnet.nodes[pid])
                    if picture != views.get(pid):
                        changed_views[pid] = picture
                        extra.append(pid)
            if extra:
                changed = sorted(changed + extra)
        for pid, picture in changed_views.items():
            if picture is None:
                views.pop(pid, None)
            else:
                views[pid] = picture
        if not (send_filter or send_ssh or changed or removed):
            return
        # Two messages, each shared by every session that needs the same one: the filter part
        # first (a viewer-specific filter then does not make the peer part viewer-specific too),
        # then the peer part.
        if send_filter or send_ssh:
            filt_key = filter_key(fkeys, filt) if send_filter else None
            if send_ssh and ssh_key is None:
                ssh_key = dumps(ssh)
            if send_filter:
                view.filter = filt
            if send_ssh:
                view.ssh = ssh
            key = ("filter", filt_key if send_filter else None, ssh_key if send_ssh else None)
            message = cache.get(key)
            if message is None:
                parts = []
                if send_filter:
                    parts.append('"PacketFilter":' + filt_key)  # type: ignore[operator]
                if send_ssh:
                    parts.append('"SSHPolicy":' + ssh_key)  # type: ignore[operator]
                message = cache[key] = Message(json_text="{" + ",".join(parts) + "}")
            self.push(view, message)
        if changed or removed:
            key = ("peers", tuple(sorted(removed)), tuple(changed),
                   tuple(sorted(changed_views.items())) if changed_views else ())
            message = cache.get(key)
            if message is None:
                body: dict[str, Any] = {}
                if changed:
                    nodes = [tailnet.nodes[pid] for pid in changed]
                    body["PeersChanged"] = [self.peer_json_cached(cache, n, changed_views.get(n.id)) for n in nodes]
                    profiles = tailnet.user_profiles(nodes)
                    if profiles:
                        body["UserProfiles"] = profiles
                if removed:
                    body["PeersRemoved"] = sorted(removed)
                message = cache[key] = Message(body)
            self.push(view, message)

    def peer_json_cached(self, cache: dict, node: Node, picture: Any) -> dict[str, Any]:
        key = ("peer", node.id, picture)
        out = cache.get(key)
        if out is None:
            out = cache[key] = self.tailnet.peer_json(node, self.now, view=picture)
        return out

    def push_self_if_changed(self, vid: int, viewer: Node) -> None:
        views = self.sessions.get(vid)
        if not views:  # a node that only registered has no session to tell (most of a join storm)
            return
        body = self.tailnet.self_json(viewer, self.now)
        for view in views:
            if view.self_node != body:
                view.self_node = body
                self.push(view, Message({"Node": body}))

    # -- full resync of some viewers (their visibility may have changed wholesale) ----------------------
    def policy_resync(self, viewer_ids: set[int] | None) -> None:
        tailnet = self.tailnet
        policy = self.policy
        routers = _routers(policy)
        off = policy.ipv4_off()
        cache: dict = {}
        fkeys: dict[int, tuple[Any, str]] = {}
        if viewer_ids is None:
            items = list(self.sessions.items())
        else:
            items = [(vid, self.sessions[vid]) for vid in sorted(viewer_ids) if vid in self.sessions]
        for vid, views in items:
            viewer = tailnet.nodes.get(vid)
            if viewer is None or not views:
                continue
            visible = policy.visible_ids(vid)
            filt = tailnet.packet_filter(viewer)
            ssh = tailnet.ssh_policy(viewer)
            for view in views:
                removed = [p for p in view.sent if p not in visible or p == vid]
                added = [
                    p for p in visible
                    if p != vid and p not in view.sent and p in tailnet.nodes
                    and tailnet.announceable(tailnet.nodes[p])
                ]
                self.session_update(view, viewer, filt, fkeys, ssh, None, added, removed,
                                    _view_peers(vid, view, routers, off), cache)

    # -- a policy change ----------------------------------------------------------------------------------
    def policy_swap(self, policy: Any, text: str | None, version: int | None) -> None:
        host = self.policy
        old = host.compiled
        old_class: dict[int, tuple] = {}
        old_sets: dict[tuple, frozenset] = {}
        for vid in self.sessions:
            if host.known(vid):
                k = old.visibility_class(vid)
                old_class[vid] = k
                if k not in old_sets:
                    old_sets[k] = old.class_peers(k)
        old_routers = _routers(host)
        old_off = host.ipv4_off()
        host.set_policy(policy, text, version)
        new = host.compiled
        routers = _routers(host) | old_routers
        off = host.ipv4_off() | old_off
        tailnet = self.tailnet
        pair_cache: dict[tuple, tuple[tuple, frozenset]] = {}
        add_set: dict[tuple, frozenset] = {}
        cache: dict = {}
        fkeys: dict[int, tuple[Any, str]] = {}
        for vid, views in list(self.sessions.items()):
            viewer = tailnet.nodes.get(vid)
            if viewer is None or not views or not host.known(vid):
                continue
            nk = new.visibility_class(vid)
            ok = old_class.get(vid)
            if ok is None:
                self.policy_resync({vid})
                continue
            pair = (ok, nk)
            delta = pair_cache.get(pair)
            if delta is None:
                a, b = old_sets[ok], new.class_peers(nk)
                if a is b or a == b:
                    delta = pair_cache[pair] = ((), frozenset())
                else:
                    nodes = tailnet.nodes
                    add_list = tuple(p for p in sorted(b - a) if p in nodes and tailnet.announceable(nodes[p]))
                    delta = pair_cache[pair] = (add_list, a - b)
                    add_set[pair] = frozenset(add_list)
            add_c, rem_c = delta
            filt = tailnet.packet_filter(viewer)
            ssh = tailnet.ssh_policy(viewer)
            for view in views:
                sent = view.sent
                removed = [p for p in rem_c if p in sent and not host._shared(vid, p)]
                # peers that entered the class's set were not visible before, so they are not in
                # `sent` (a shared one might be: announcing it again is a harmless upsert)
                added = [p for p in add_c if p != vid] if vid in add_set.get(pair, ()) else list(add_c)
                self.session_update(view, viewer, filt, fkeys, ssh, None, added, removed,
                                    _view_peers(vid, view, routers, off), cache)
            # the node's own picture (CapMap from nodeAttrs, its routes) may have changed too
            self.push_self_if_changed(vid, viewer)

    def share_set(self, node_id: int, user_id: int, shared: bool) -> None:
        policy = self.policy
        if shared:
            policy.add_share(node_id, user_id)
        else:
            policy.remove_share(node_id, user_id)
        self.policy_resync({node_id} | set(policy.compiled.net.by_user.get(user_id, ())))

    # -- after a change others' filters may depend on -------------------------------------------------------
    def refresh_others(self, skip: int | None, routers_changed: set[int], only: set[int] | None = None) -> None:
        """Filters and SSH policies of every other session (a node joining a group changes the
        SrcIPs of others' filters), plus pictures of routers whose primary routes moved. `only`:
        the nodes whose filters can have changed (None = everyone)."""
        tailnet = self.tailnet
        cache: dict = {}
        fkeys: dict[int, tuple[Any, str]] = {}
        if only is not None:
            items = [(vid, self.sessions[vid]) for vid in only if vid in self.sessions]
        else:
            items = list(self.sessions.items())
        for vid, views in items:
            if vid == skip:
                continue
            viewer = tailnet.nodes.get(vid)
            if viewer is None or not views or not self.policy.known(vid):
                continue
            filt = tailnet.packet_filter(viewer)
            ssh = tailnet.ssh_policy(viewer)
            for view in views:
                sent = view.sent
                view_peers = {r for r in routers_changed if r in sent} if routers_changed else set()
                same_ssh = ssh == view.ssh or (ssh is None and view.ssh == NO_SSH_RULES)
                if filt == view.filter and same_ssh and not view_peers:
                    continue
                self.session_update(view, viewer, filt, fkeys, ssh, None, [], [], view_peers, cache)
            if vid in routers_changed:
                self.push_self_if_changed(vid, viewer)
