"""Telling map sessions what a policy, share, tag, route or online change means for them.

A mixin of `Coordinator` (it uses `self.tailnet`, `self.sessions`, `self.policy`, `self.now`), kept
apart from the coordinator's own fan-out. Everything here is synchronous: state is read and messages
queued with no await in between, like the rest of the fan-out.

Per session the coordinator remembers what it last told the client, besides the peers it sent
(`session.sent`): the PacketFilter (`session.filter`), the SSHPolicy (`session.ssh`) and, for peers
whose picture depends on the viewer (routers), that picture (`session.views`). An update sends only
what differs; `PacketFilter: []` (deny all inbound) is sent as such, an unchanged filter not at all.
Identical messages are encoded once and shared.

A policy change diffs *visibility classes* (nodes with the same rule memberships see the same peers,
`CompiledPolicy.visibility_class`): the old and new peer sets are compared once per pair of classes,
and each session only looks at the peers that entered or left its class's set.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from trioscale.shared.model import Node

log = logging.getLogger("trioscale.coord.policy")


def _dumps(obj: Any) -> str:
    """JSON text as the coordinator writes it (compact, UTF-8 kept)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _encoded_json(text: str):
    """A coordinator `Encoded` message from JSON text we already have (the filter's text doubles as
    its dedup key, so it is not serialised twice)."""
    from .coordinator import Encoded

    message = Encoded(None)  # type: ignore[arg-type]
    message._json = text.encode()
    return message


def _fkey(keys: dict[int, tuple[Any, str]], filt: Any) -> str:
    """The filter's JSON text as a dedup key, computed once per filter object (objects are kept
    alive in `keys`, so an id is never reused while the dict lives)."""
    ent = keys.get(id(filt))
    if ent is not None and ent[0] is filt:
        return ent[1]
    key = _filter_json(keys, filt) if isinstance(filt, list) else _dumps(filt)
    keys[id(filt)] = (filt, key)
    return key


def _filter_json(keys: dict[int, tuple[Any, str]], filt: list) -> str:
    """`_dumps(filt)`, with each SrcIPs list encoded once however many filters share it (one rule's
    sources appear in the filter of every node it reaches: thousands of addresses, hundreds of
    filters)."""
    rules = []
    for rule in filt:
        if not isinstance(rule, dict):
            return _dumps(filt)
        parts = []
        for k, v in rule.items():
            if k == "SrcIPs" and isinstance(v, list):
                ent = keys.get(id(v))
                if ent is None or ent[0] is not v:
                    ent = keys[id(v)] = (v, _dumps(v))
                parts.append(f'"SrcIPs":{ent[1]}')
            else:
                parts.append(_dumps(k) + ":" + _dumps(v))
        rules.append("{" + ",".join(parts) + "}")
    return "[" + ",".join(rules) + "]"


class PolicyFanout:
    # -- session state -----------------------------------------------------------------------------
    def _remember_first_map(self, session, first: dict[str, Any]) -> None:
        """Record what a session's first map told the client (filter, SSH policy, router views)."""
        session.filter = first.get("PacketFilter")
        session.ssh = first.get("SSHPolicy")
        session.self_node = first.get("Node")
        session.views = {}
        vid = session.node_id
        for pid in self._view_peers(vid, session, self._routers(), self.policy.ipv4_off()):
            view = self.tailnet.peer_view(vid, self.tailnet.nodes[pid])
            if view is not None:
                session.views[pid] = view

    def _routers(self) -> set[int]:
        net = self.policy.compiled.net
        out: set[int] = set()
        for ids in net.route_owners.values():
            out |= ids
        return out

    @staticmethod
    def _dependent(vid: int, routers: set[int], off: frozenset[int]) -> set[int] | None:
        """Peers whose picture can depend on viewer `vid` (None = all of them): routers, and nodes
        with disable-ipv4; every peer when the viewer has disable-ipv4 itself."""
        if vid in off:
            return None
        return routers | off if off else routers

    def _view_peers(self, vid: int, session, routers: set[int], off: frozenset[int]) -> set[int]:
        """The peers of `session` whose viewer-specific picture must be looked at again: those that
        can depend on the viewer, and those it was last told a specific picture of."""
        sent = session.sent
        dep = self._dependent(vid, routers, off)
        if dep is None:
            return set(sent)
        out = {p for p in dep if p in sent}
        views = getattr(session, "views", None)
        if views:
            out |= {p for p in views if p in sent}
        return out

    # -- building one session's update -------------------------------------------------------------
    def _session_update(
        self,
        session,
        viewer: Node,
        filt: list | None,
        fkeys: dict,
        ssh: dict | None,
        ssh_key: str | None,
        added: list[int],
        removed: list[int],
        view_peers: set[int],
        now: datetime,
        cache: dict,
    ) -> None:
        """Queue one message with whatever of (filter, ssh, removed, added/changed peers) differs
        from what `session` was told. `view_peers`: peers whose viewer-specific picture may have
        changed (compared with session.views)."""
        tailnet = self.tailnet
        vid = viewer.id
        send_filter = filt is not None and filt != getattr(session, "filter", None)
        send_ssh = ssh is not None and ssh != getattr(session, "ssh", None)
        views = getattr(session, "views", None)
        if views is None:
            views = session.views = {}
        sent = session.sent
        dep = self._dependent(vid, self._routers(), self.policy.ipv4_off()) if added else set()
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
                    view = tailnet.peer_view(vid, tailnet.nodes[pid])
                    if view != views.get(pid):
                        changed_views[pid] = view
                        extra.append(pid)
            if extra:
                changed = sorted(changed + extra)
        for pid, view in changed_views.items():
            if view is None:
                views.pop(pid, None)
            else:
                views[pid] = view
        if not (send_filter or send_ssh or changed or removed):
            return
        # Two messages, each shared by every session that needs the same one: the filter part
        # first (a viewer-specific filter then does not make the peer part viewer-specific too),
        # then the peer part.
        if send_filter or send_ssh:
            filt_key = _fkey(fkeys, filt) if send_filter else None
            if send_ssh and ssh_key is None:
                ssh_key = _dumps(ssh)
            if send_filter:
                session.filter = filt
            if send_ssh:
                session.ssh = ssh
            key = ("filter", filt_key if send_filter else None, ssh_key if send_ssh else None)
            message = cache.get(key)
            if message is None:
                parts = []
                if send_filter:
                    parts.append('"PacketFilter":' + filt_key)  # type: ignore[operator]
                if send_ssh:
                    parts.append('"SSHPolicy":' + ssh_key)  # type: ignore[operator]
                message = cache[key] = _encoded_json("{" + ",".join(parts) + "}")
            session.push(message)
        if changed or removed:
            key = ("peers", tuple(sorted(removed)), tuple(changed),
                   tuple(sorted(changed_views.items())) if changed_views else ())
            message = cache.get(key)
            if message is None:
                body: dict[str, Any] = {}
                if changed:
                    nodes = [tailnet.nodes[pid] for pid in changed]
                    body["PeersChanged"] = [self._peer_json_cached(cache, n, changed_views.get(n.id), now)
                                            for n in nodes]
                    profiles = tailnet.user_profiles(nodes)
                    if profiles:
                        body["UserProfiles"] = profiles
                if removed:
                    body["PeersRemoved"] = sorted(removed)
                message = cache[key] = self._encoded(body)
            session.push(message)

    def _peer_json_cached(self, cache: dict, node: Node, view: Any, now: datetime) -> dict[str, Any]:
        key = ("peer", node.id, view)
        out = cache.get(key)
        if out is None:
            out = cache[key] = self.tailnet.peer_json(node, now, view=view)
        return out

    def _encoded(self, body: dict[str, Any]):
        from .coordinator import Encoded

        return Encoded(body)

    # -- full resync of some viewers (their visibility may have changed wholesale) -------------------
    def _policy_resync(self, viewer_ids=None, now: datetime | None = None) -> None:
        now = now or self.now()
        tailnet = self.tailnet
        policy = self.policy
        routers = self._routers()
        off = policy.ipv4_off()
        cache: dict = {}
        fkeys: dict[int, tuple[Any, str]] = {}
        for vid, sessions in list(self.sessions.items()):
            if viewer_ids is not None and vid not in viewer_ids:
                continue
            viewer = tailnet.nodes.get(vid)
            if viewer is None or not sessions:
                continue
            visible = policy.visible_ids(vid)
            filt = tailnet.packet_filter(viewer)
            ssh = tailnet.ssh_policy(viewer)
            skey = None
            for session in sessions:
                removed = [p for p in session.sent if p not in visible or p == vid]
                added = [
                    p for p in visible
                    if p != vid and p not in session.sent and p in tailnet.nodes
                    and tailnet.announceable(tailnet.nodes[p])
                ]
                self._session_update(session, viewer, filt, fkeys, ssh, skey, added, removed,
                                     self._view_peers(vid, session, routers, off), now, cache)

    # -- a policy change ---------------------------------------------------------------------------
    def _policy_swap(self, policy, text: str | None, version: int | None) -> None:
        """Install a new (already validated) policy and tell every session what changed for it."""
        now = self.now()
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
        old_routers = self._routers()
        old_off = host.ipv4_off()
        host.set_policy(policy, text, version)
        new = host.compiled
        routers = self._routers() | old_routers
        off = host.ipv4_off() | old_off
        tailnet = self.tailnet
        pair_cache: dict[tuple, tuple[tuple, frozenset]] = {}
        add_set: dict[tuple, frozenset] = {}
        cache: dict = {}
        fkeys: dict[int, tuple[Any, str]] = {}
        for vid, sessions in list(self.sessions.items()):
            viewer = tailnet.nodes.get(vid)
            if viewer is None or not sessions or not host.known(vid):
                continue
            nk = new.visibility_class(vid)
            ok = old_class.get(vid)
            if ok is None:
                self._policy_resync({vid}, now)
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
            skey = None
            for session in sessions:
                sent = session.sent
                removed = [p for p in rem_c if p in sent and not host._shared(vid, p)]
                # peers that entered the class's set were not visible before, so they are not in
                # `sent` (a shared one might be: announcing it again is a harmless upsert)
                added = [p for p in add_c if p != vid] if vid in add_set.get(pair, ()) else list(add_c)
                self._session_update(session, viewer, filt, fkeys, ssh, skey, added, removed,
                                     self._view_peers(vid, session, routers, off), now, cache)
            # the node's own picture (CapMap from nodeAttrs, its routes) may have changed too
            self._push_self_if_changed(vid, viewer, now)

    def _push_self_if_changed(self, vid: int, viewer: Node, now: datetime) -> None:
        body = self.tailnet.self_json(viewer, now)
        for session in self.sessions.get(vid, ()):
            if getattr(session, "self_node", None) != body:
                session.self_node = body
                session.push(self._encoded({"Node": body}))

    # -- after a node changed in a way the policy looks at ------------------------------------------
    def _policy_refresh_others(self, skip: int | None, routers_changed: set[int], now: datetime,
                               only: set[int] | None = None) -> None:
        """Filters and SSH policies of every other session (a node joining a group changes the
        SrcIPs of others' filters), plus views of routers whose primary routes moved. `only`: the
        nodes whose filters can have changed (None = everyone)."""
        tailnet = self.tailnet
        cache: dict = {}
        fkeys: dict[int, tuple[Any, str]] = {}
        if only is not None:
            items = [(vid, self.sessions[vid]) for vid in only if vid in self.sessions]
        else:
            items = list(self.sessions.items())
        for vid, sessions in items:
            if vid == skip:
                continue
            viewer = tailnet.nodes.get(vid)
            if viewer is None or not sessions or not self.policy.known(vid):
                continue
            filt = tailnet.packet_filter(viewer)
            ssh = tailnet.ssh_policy(viewer)
            for session in sessions:
                view_peers = routers_changed & session.sent
                if filt == getattr(session, "filter", None) and ssh == getattr(session, "ssh", None) \
                        and not view_peers:
                    continue
                self._session_update(session, viewer, filt, fkeys, ssh, None, [], [], view_peers, now, cache)
            if vid in routers_changed:
                self._push_self_if_changed(vid, viewer, now)

    def _routers_moved(self, routers_changed: set[int]) -> None:
        """HA failover: tell viewers of the routers whose primary routes changed."""
        if routers_changed:
            self._policy_refresh_others(None, routers_changed, self.now())

    # -- hooks the coordinator calls ---------------------------------------------------------------
    def _policy_node_set(self, new: Node) -> tuple[bool, set[int]]:
        """A node's new version: (whether the policy's picture changed, routers whose primaries moved).
        Also works out whose filters the change can touch (`_policy_audience`, used right after)."""
        host = self.policy
        old_info = host.infos.get(new.id)
        old_cls = host.compiled.visibility_class(new.id) if host.known(new.id) else ((), (), None)
        if not host.set_node(new):
            return False, set()
        routers = host.elect()
        self._policy_audience = None if routers else self._filter_audience(
            old_info, host.infos.get(new.id), old_cls, host.compiled.visibility_class(new.id))
        return True, routers

    def _filter_audience(self, old_info, new_info, old_cls: tuple, new_cls: tuple) -> set[int] | None:
        """The nodes whose PacketFilter can change when one node goes from `old_info` to `new_info`
        (None = anyone's). A node's addresses appear in others' filters only as a source: in the
        filters of the destinations of the rules it is a source of (for autogroup:self rules, its
        user's devices), and, for app grants it is a destination of, in the companion-capability
        rules of their sources. Route changes (every `*` source lists the subnet routes) and SSH
        rules (principals) reach further: then everyone is looked at."""
        c = self.policy.compiled
        if c.p is not None and c.p.ssh:
            return None
        if old_info is not None and new_info is not None and (
            old_info.routable_ips != new_info.routable_ips or old_info.approved_routes != new_info.approved_routes
        ):
            return None
        by_user = c.net.by_user
        users = {i.user_id for i in (old_info, new_info) if i is not None and i.user_id is not None}
        out: set[int] = set()
        for i in set(old_cls[0]) | set(new_cls[0]):
            if i >= len(c._rules):
                return None
            rc = c._rule(i)
            out |= rc.dst_nodes
            if rc.self_dst:
                for uid in users:
                    out |= by_user.get(uid, set())
        for i in set(old_cls[1]) | set(new_cls[1]):
            if i >= len(c._rules):
                return None
            if c._rules[i].app:
                out |= c._rule(i).src_nodes
        return out

    def _policy_after_node(self, node_id: int, routers_changed: set[int], now: datetime) -> None:
        """After the usual per-peer deltas of a node change the policy looks at: the node's own
        sessions are resynced (what it may see can change wholesale, e.g. when it is tagged), the
        others get their new filters / SSH policies / router views."""
        self._policy_resync({node_id}, now)
        node = self.tailnet.nodes.get(node_id)
        if node is not None:
            self._push_self_if_changed(node_id, node, now)
        self._policy_refresh_others(node_id, routers_changed, now, only=getattr(self, "_policy_audience", None))
        self._policy_audience = None

    def _policy_node_gone(self, node_id: int) -> None:
        if self.policy.remove_node(node_id):
            for sessions in self.sessions.values():
                for session in sessions:
                    views = getattr(session, "views", None)
                    if views:
                        views.pop(node_id, None)
            self._policy_refresh_others(None, self.policy.elect(), self.now())

    def _policy_online_changed(self) -> None:
        if self.policy.primaries or self.policy.compiled.net.route_owners:
            self._routers_moved(self.policy.elect())

    def _policy_users_changed(self, user, deleted: bool = False) -> None:
        if deleted:
            self.policy.remove_user(user)
            return
        if self.policy.set_user(user) and self.policy.compiled.net.by_user.get(user.id):
            # a user with nodes was renamed: selectors naming it may now match its nodes
            # differently, for them and for everyone who sees them (rare: a full resync)
            self._policy_resync(None)
            self._policy_refresh_others(None, set(), self.now())

    def _policy_share(self, node_id: int, user_id: int, added: bool) -> None:
        if added:
            self.policy.add_share(node_id, user_id)
        else:
            self.policy.remove_share(node_id, user_id)
        affected = {node_id} | set(self.policy.compiled.net.by_user.get(user_id, ()))
        self._policy_resync(affected)

    # -- loading and changing the policy ---------------------------------------------------------
    async def _load_policy(self) -> None:
        """Read the policy (file or database), the shares, and compile against the tailnet."""
        from . import policysource

        policy, text, version = await policysource.initial_policy(self)
        shares = await self.store.list_shares()
        self.policy.load(self.tailnet.users.values(), self.tailnet.nodes.values(), shares, policy, text, version)

    def install_policy(self, policy, text: str | None, version: int | None = None) -> None:
        """Swap in a validated policy (None = no policy: allow all) and tell every session."""
        self._policy_swap(policy, text, version)
        if self._nursery is not None:
            self._nursery.start_soon(self._persist_all_auto_approvals)

    async def _persist_all_auto_approvals(self) -> None:
        for node in list(self.tailnet.nodes.values()):
            if node.hostinfo.get("RoutableIPs"):
                await self._persist_auto_approvals(node)

    async def _persist_auto_approvals(self, node: Node) -> None:
        """Routes autoApprovers approve are recorded as approved (as Tailscale does: an approval
        outlives the policy rule that made it)."""
        from trioscale.shared.domain.routes import normalize_routes

        approved = self.policy.auto_approved(node)
        if not approved:
            return
        want = normalize_routes((*node.approved_routes, *approved))
        if set(want) != set(node.approved_routes):
            try:
                await self.store.update_node(node.id, approved_routes=want)
                log.info("node %s: routes %s approved by autoApprovers", node.id,
                         ",".join(sorted(set(want) - set(node.approved_routes))))
            except Exception as exc:  # the node may be gone
                log.debug("recording auto-approved routes of node %s: %s", node.id, exc)

    async def _policy_node_followup(self, old: Node | None, new: Node) -> None:
        """Store writes a node change may call for: tags it asked for (Hostinfo.RequestTags,
        checked against tagOwners) and routes autoApprovers approve."""
        requested = new.hostinfo.get("RequestTags") if isinstance(new.hostinfo, dict) else None
        old_requested = old.hostinfo.get("RequestTags") if old is not None and isinstance(old.hostinfo, dict) else None
        if requested and isinstance(requested, list) and requested != old_requested:
            tags = tuple(sorted({str(t) for t in requested}))
            if set(tags) != set(new.tags):
                bad = self.policy.tags_not_permitted(new.user_id, tags, new.tags)
                if bad:
                    log.warning("node %s (%s) asked for tags %s; not permitted by tagOwners: %s",
                                new.id, new.given_name, ",".join(tags), ",".join(bad))
                else:
                    try:
                        await self.store.update_node(new.id, tags=tags, expiry=None)
                        log.info("node %s (%s) tagged %s (requested)", new.id, new.given_name, ",".join(tags))
                    except Exception as exc:
                        log.debug("tagging node %s: %s", new.id, exc)
                    return  # the tag change comes back through the log; approvals follow then
        if new.hostinfo.get("RoutableIPs") if isinstance(new.hostinfo, dict) else None:
            if old is None or old.hostinfo.get("RoutableIPs") != new.hostinfo.get("RoutableIPs") \
                    or old.tags != new.tags or old.user_id != new.user_id:
                await self._persist_auto_approvals(new)
