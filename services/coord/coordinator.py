"""The coordinator's engine: follow the store's change log, keep the Tailnet current, fan out deltas.

One task (`follow`) applies changes in sequence order. Applying a change is: fetch the current
record, swap it into the in-memory Tailnet, then (synchronously, with no await in between) work out
each map session's delta and queue it. A new map session builds its first map and registers itself
in one synchronous step too, so every change is either in a session's first map or in its deltas,
never both and never neither.

A delta is encoded once (JSON once; zstd once for the sessions that asked for it) and shared by all
its receivers. Each session has a bounded queue; a session that falls too far behind is closed, and
its client reconnects and gets a fresh full map.
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import trio

from trioscale.shared.model import Change, Node, utcnow
from trioscale.shared.proto import mapframe
from trioscale.shared.store.base import ChangesTrimmed, NotFound, Store, StoreError, StoreUnavailable

from trioscale.shared.domain.peerset import PeerSet
from trioscale.shared.domain.netmap import Delta, Settings, Tailnet, changed_fields
from .policyfanout import PolicyFanout
from .policyhost import PolicyHost
from trioscale.shared.domain import tailcfg
from .presence import PresenceTracker

log = logging.getLogger("trioscale.coord")

#: messages a session may have queued before it is considered stuck and closed
SESSION_QUEUE_LIMIT = 512
#: sessions the flusher writes between two yields to the scheduler
FLUSH_YIELD_EVERY = 256
#: tries of a change whose application fails with an unexpected error before it is skipped
APPLY_ATTEMPTS = 3
KEEPALIVE_BASE = 50.0
KEEPALIVE_JITTER = 9.0
#: how often a coordinator drops expired pending logins and trims the change log below the
#: positions of its live subscribers (every replica does it; the work is idempotent)
HOUSEKEEPING_INTERVAL = 60.0
#: pending interactive logins older than this are gone (register.PENDING_LIFETIME)
PENDING_LIFETIME = timedelta(minutes=15)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Encoded:
    """One MapResponse, encoded lazily per compression and shared by every receiver."""

    __slots__ = ("obj", "_json", "_frames")

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self._json: bytes | None = None
        self._frames: dict[str | None, bytes] = {}

    def frame(self, compress: str | None) -> bytes:
        frame = self._frames.get(compress)
        if frame is None:
            if self._json is None:
                self._json = dumps(self.obj)
                self.obj = None  # a full map's dicts are large; the JSON is all we need now
            frame = self._frames[compress] = mapframe.encode_frame(self._json, compress)
        return frame


class MapSession:
    """One streaming /machine/map response."""

    def __init__(self, node_id: int, compress: str | None, capver: int = tailcfg.CAPVER_CERT_HASH) -> None:
        self.node_id = node_id
        self.compress = compress
        #: the client's capability version (from its MapRequest): what it can read
        self.capver = capver
        self.sent: PeerSet = PeerSet()
        self.queue: deque[Encoded] = deque()
        self.wakeup = trio.Event()
        self.closed = False
        self.close_reason = ""
        #: what the client was last told by the policy fan-out (policyfanout.py): its PacketFilter,
        #: SSHPolicy, own Node, and the viewer-specific pictures of routers it sees
        self.filter: Any = None
        self.ssh: Any = None
        self.self_node: Any = None
        self.views: dict[int, Any] = {}
        #: set once the first map is out: queued deltas may then be written by the flusher
        self.response: Any = None
        #: the session's own task is writing (or about to): deltas queue behind it, in order
        self.writing = False
        #: the coordinator's flusher (see Coordinator._flush_dirty), once attached
        self.mark_dirty: Callable[["MapSession"], None] | None = None

    def attach(self, response: Any, mark_dirty: Callable[["MapSession"], None] | None = None) -> None:
        self.response = response
        self.mark_dirty = mark_dirty

    def push(self, message: Encoded) -> None:
        if self.closed:
            return
        if len(self.queue) >= SESSION_QUEUE_LIMIT:
            self.close("fell behind")
            return
        self.queue.append(message)
        if self.mark_dirty is not None and not self.writing:
            self.mark_dirty(self)
        else:
            self.wakeup.set()

    def flush_nowait(self) -> None:
        """Write what is queued at once if the connection can take it (one send for all of it);
        else leave it to the session's own task."""
        if self.closed or self.writing or not self.queue or self.response is None:
            if self.queue or self.closed:
                self.wakeup.set()
            return
        data = b"".join(m.frame(self.compress) for m in self.queue)
        if self.response.write_nowait(data):
            self.queue.clear()
        else:
            self.wakeup.set()

    def close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.wakeup.set()

    async def next_messages(self, timeout: float) -> list[Encoded]:
        """Queued messages; empty after `timeout` seconds of silence (time for a keepalive)."""
        if not self.queue and not self.closed:
            with trio.move_on_after(timeout):
                await self.wakeup.wait()
        self.wakeup = trio.Event()
        out = list(self.queue)
        self.queue.clear()
        self.writing = True  # until the caller has written these (or a keepalive): see push()
        return out


class Coordinator(PolicyFanout):
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        build_derp_map: Callable[[list], dict[str, Any]],
        ephemeral_timeout: timedelta = timedelta(seconds=120),
        presence: PresenceTracker | None = None,
        relay_timeout: timedelta | None = None,
        clock: Callable[[], datetime] = utcnow,
        policy_mode: str = "database",
        policy_path: str | None = None,
    ) -> None:
        self.store = store
        self.tailnet = Tailnet(settings)
        #: the live policy (policyhost.py); its fan-out is in policyfanout.py, its sources in policysource.py
        self.policy = PolicyHost(online=lambda: self.tailnet.online)
        self.policy_mode = policy_mode
        self.policy_path = policy_path
        self.tailnet.policy = self.policy
        self.tailnet.visibility = self.policy.can_see
        self.build_derp_map = build_derp_map
        self.ephemeral_timeout = ephemeral_timeout
        self.now = clock
        self.sessions: dict[int, set[MapSession]] = {}
        self.seq = 0
        self._seq_changed = trio.Event()
        self._registration_done: dict[str, trio.Event] = {}
        self._relays: list = []
        self._nursery: trio.Nursery | None = None
        self._gc_scopes: dict[int, trio.CancelScope] = {}
        #: registration allocates addresses and names one at a time in this process (register.py)
        self.allocation_lock = trio.Lock()
        self._dirty: dict[MapSession, None] = {}
        self._dirty_wakeup = trio.Event()
        self._allocated: dict[int, Node] = {}
        #: this replica's map sessions in the store; online state comes from presence changes
        self.presence = presence if presence is not None else PresenceTracker(store, clock=clock)
        #: relays whose heartbeat is older than this are dropped from the store (None: never)
        self.relay_timeout = relay_timeout
        self.housekeeping_interval = HOUSEKEEPING_INTERVAL
        #: how many times the tailnet was reloaded because the log was trimmed past this replica
        self.reloads = 0

    # -- loading and following -----------------------------------------------------------------
    async def load(self) -> None:
        """Read the whole tailnet once; later changes come from the log after `self.seq`."""
        self.seq = await self.store.latest_seq()
        self.tailnet.users = {u.id: u for u in await self.store.list_users()}
        self.tailnet.nodes = {n.id: n for n in await self.store.list_nodes()}
        self.tailnet.online = {p.node_id for p in await self.store.list_presence() if p.node_id in self.tailnet.nodes}
        self._relays = await self.store.list_relays()
        self.tailnet.settings.derp_map = self.build_derp_map(self._relays)
        await self._load_policy()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for node in self.tailnet.nodes.values():
                if node.ephemeral:
                    self._schedule_ephemeral_gc(node.id)
            await nursery.start(self.presence.run)
            nursery.start_soon(self._flush_dirty)
            if self.relay_timeout is not None:
                nursery.start_soon(self._expire_relays, self.relay_timeout)
            nursery.start_soon(self._housekeeping)
            started = False
            while True:
                try:
                    async with self.store.subscribe(since=self.seq) as changes:
                        if not started:
                            task_status.started()
                            started = True
                        async for change in changes:
                            await self._apply_retrying(change)
                            self._advance(change.seq)
                    break  # the store closed
                except ChangesTrimmed as exc:
                    log.warning("coordinator fell behind the change log (%s); reloading the tailnet", exc)
                    await self.reload()

    def _advance(self, seq: int) -> None:
        self.seq = seq
        self._seq_changed.set()
        self._seq_changed = trio.Event()

    async def reload(self) -> None:
        """Read the tailnet afresh after missing changes. The map sessions were sent deltas of the
        old state, so they are closed: each client reconnects to a full map of the new one."""
        delay = 0.05
        while True:
            try:
                await self.load()
                break
            except (StoreUnavailable, OSError) as exc:
                log.warning("reloading the tailnet: store unavailable (%s); retrying in %.2fs", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.reloads += 1
        for sessions in list(self.sessions.values()):
            for session in list(sessions):
                session.close("tailnet reloaded")
        for node in self.tailnet.nodes.values():
            if node.ephemeral:
                self._schedule_ephemeral_gc(node.id)
        self._advance(self.seq)

    async def _housekeeping(self) -> None:
        """Periodic store upkeep that keeps unauthenticated clients from filling the disk:
        expired pending logins go, and the change log is trimmed below its live subscribers."""
        while True:
            await trio.sleep(self.housekeeping_interval)
            await self.housekeep()

    async def housekeep(self) -> None:
        now = self.now()
        try:
            await self.store.delete_pending_registrations_before(now - PENDING_LIFETIME)
            await self.store.purge_ssh_checks(now)
            # positions are leased on the wall clock (shared by all processes), not self.now()
            trimmed = await self.store.trim_changes(utcnow())
            if trimmed:
                log.debug("trimmed %d change-log entries", trimmed)
        except (StoreUnavailable, StoreError, OSError) as exc:
            log.warning("housekeeping: %s", exc)

    def mark_dirty(self, session: MapSession) -> None:
        self._dirty[session] = None
        self._dirty_wakeup.set()

    async def _flush_dirty(self) -> None:
        """Write the sessions that have deltas queued, in passes. One pass costs one send per
        session, however many changes were applied since the last: when changes come faster than
        a pass takes (thousands of nodes reconnecting), they are batched by themselves, and
        latency stays one pass when they come slowly."""
        while True:
            await self._dirty_wakeup.wait()
            self._dirty_wakeup = trio.Event()
            dirty, self._dirty = self._dirty, {}
            for i, session in enumerate(dirty):
                session.flush_nowait()
                if i % FLUSH_YIELD_EVERY == FLUSH_YIELD_EVERY - 1:
                    await trio.sleep(0)  # let requests and the follower run during a long pass
            await trio.sleep(0)

    async def _apply_retrying(self, change: Change) -> None:
        """Apply one change; while the store is unavailable, retry it (never skip it: the change
        would be lost for this replica's clients). Any other error is tried again a few times (a
        driver can fail oddly while the database restarts), then skips the one bad change."""
        delay = 0.05
        odd_failures = 0
        while True:
            try:
                await self.apply(change)
                return
            except (StoreUnavailable, OSError) as exc:
                log.warning("applying change %s (%s): store unavailable (%s); retrying in %.2fs",
                            change.seq, change.kind, exc, delay)
            except Exception:  # one bad change must not stop the coordinator
                odd_failures += 1
                if odd_failures >= APPLY_ATTEMPTS:
                    log.exception("applying change %s (%s) failed; skipped", change.seq, change.kind)
                    return
                log.warning("applying change %s (%s) failed; trying again in %.2fs", change.seq,
                            change.kind, delay, exc_info=True)
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _expire_relays(self, timeout: timedelta) -> None:
        """Drop relays whose heartbeat is older than `timeout` from the store (every replica does
        it; the first one wins). The "relay.deleted" change takes them out of every DERP map; a
        relay that is alive after all re-registers with its next heartbeat."""
        interval = min(max(timeout.total_seconds() / 4, 0.2), 5.0)
        while True:
            try:
                cutoff = self.now() - timeout
                for relay in await self.store.list_relays():
                    if relay.heartbeat_at < cutoff:
                        log.info("relay %s (region %s) missed its heartbeat since %s; removing it",
                                 relay.name, relay.region_id, relay.heartbeat_at.isoformat())
                        try:
                            await self.store.delete_relay(relay.region_id, relay.name)
                        except NotFound:
                            pass
            except (StoreUnavailable, OSError) as exc:
                log.warning("relay expiry: store unavailable (%s)", exc)
            await trio.sleep(interval)

    def taken(self) -> tuple[set[str], set[str]]:
        """Addresses and names in use, as far as this coordinator knows (for allocation)."""
        for node_id in [i for i in self._allocated if i in self.tailnet.nodes]:
            del self._allocated[node_id]  # applied from the log by now
        nodes = [*self.tailnet.nodes.values(), *self._allocated.values()]
        return {a for n in nodes for a in (n.ipv4, n.ipv6) if a}, {n.given_name for n in nodes}

    def record_allocation(self, node: Node) -> None:
        """A node this process just created (its change may not be applied yet)."""
        self._allocated[node.id] = node

    async def wait_seq(self, seq: int) -> None:
        """Wait until changes up to `seq` are applied (read-your-writes for request handlers)."""
        while self.seq < seq:
            await self._seq_changed.wait()

    async def caught_up(self) -> None:
        await self.wait_seq(await self.store.latest_seq())

    async def apply(self, change: Change) -> None:
        kind, data = change.kind, change.data
        if kind in ("node.created", "node.updated"):
            new = await self.store.get_node(data["id"])
            old = self.tailnet.nodes.get(data["id"])
            if new is None:
                self._node_gone(data["id"])
            else:
                self.tailnet.nodes[new.id] = new
                self._node_changed(old, new, changed_fields(old, new, data.get("fields", ())))
                await self._policy_node_followup(old, new)
        elif kind == "node.deleted":
            self._node_gone(data["id"])
        elif kind in ("user.created", "user.updated"):
            user = await self.store.get_user(data["id"])
            if user is not None:
                self.tailnet.users[user.id] = user
                self._policy_users_changed(user)
                if kind == "user.updated":
                    self._broadcast(Encoded({"UserProfiles": [tailcfg.user_profile(user)]}))
        elif kind == "user.deleted":
            self.tailnet.users.pop(data["id"], None)
            self._policy_users_changed(data["id"], deleted=True)
        elif kind == "policy.set":
            from . import policysource

            await policysource.on_policy_set(self)
        elif kind in ("share.created", "share.deleted"):
            self._policy_share(int(data["node_id"]), int(data["user_id"]), kind == "share.created")
        elif kind in ("relay.updated", "relay.deleted"):
            self._relays = await self.store.list_relays()
            derp_map = self.build_derp_map(self._relays)
            if derp_map != self.tailnet.settings.derp_map:
                self.tailnet.settings.derp_map = derp_map
                self._broadcast_derp_map(derp_map)
        elif kind == "presence.online":
            node_id = int(data["node_id"])
            if node_id in self.tailnet.nodes:
                scope = self._gc_scopes.pop(node_id, None)
                if scope is not None:
                    scope.cancel()
                self._set_online(node_id, True)
        elif kind == "presence.offline":
            self._presence_offline(int(data["node_id"]), data)
        elif kind in ("registration.completed", "sshcheck.decided"):
            event = self._registration_done.get(data.get("id"))
            if event is not None:
                event.set()

    def set_dns_config(self, dns_config: dict[str, Any] | None) -> None:
        """Replace the tailnet's DNSConfig and send it to every session. A client replaces its whole
        DNSConfig, so each node gets its own copy with its CertDomains (one encoding per node;
        DNS changes are rare)."""
        if dns_config != self.tailnet.settings.dns_config:
            self.tailnet.settings.dns_config = dns_config
            if dns_config is None:
                return
            for node_id, sessions in self.sessions.items():
                node = self.tailnet.nodes.get(node_id)
                if node is None:
                    continue
                message = Encoded({"DNSConfig": self.tailnet.dns_config_for(node)})
                for session in sessions:
                    session.push(message)

    # -- fan-out (synchronous: no await between reading state and queueing) ---------------------
    def _broadcast(self, message: Encoded) -> None:
        for sessions in self.sessions.values():
            for session in sessions:
                session.push(message)

    def _broadcast_derp_map(self, derp_map: dict[str, Any]) -> None:
        message = Encoded({"DERPMap": derp_map})
        older: Encoded | None = None  # built once, if any client too old for certificate pins is here
        for sessions in self.sessions.values():
            for session in sessions:
                if session.capver >= tailcfg.CAPVER_CERT_HASH:
                    session.push(message)
                    continue
                if older is None:
                    older = Encoded({"DERPMap": tailcfg.derp_map_for_capver(derp_map, session.capver)})
                session.push(older)

    def _node_changed(self, old: Node | None, new: Node, changed: frozenset[str]) -> None:
        if not changed:
            return
        policy_changed, routers_moved = self._policy_node_set(new)
        now = self.now()
        if old is not None and old.ephemeral != new.ephemeral and new.ephemeral:
            self._schedule_ephemeral_gc(new.id)
        cache: dict[str, Encoded] = {}
        for viewer_id, sessions in self.sessions.items():
            viewer = self.tailnet.nodes.get(viewer_id)
            if viewer is None:
                continue
            if viewer_id == new.id:
                if self.tailnet.self_changed(changed):
                    body = {"Node": self.tailnet.self_json(new, now)}
                    if "given_name" in changed and old is not None:
                        dns = self.tailnet.dns_config_for(new)  # its CertDomains follow its name
                        if dns is not None:
                            body["DNSConfig"] = dns
                    message = Encoded(body)
                    for session in sessions:
                        session.push(message)
                continue
            for session in sessions:
                delta = self.tailnet.peer_delta(viewer, session.sent, old, new, changed, now)
                if delta is not None:
                    session.push(self._encode(delta, changed, now, cache, viewer_id, session))
        if policy_changed:
            self._policy_after_node(new.id, routers_moved, now)

    def _encode(self, delta: Delta, changed: frozenset[str], now, cache: dict, viewer_id: int | None = None,
                session: MapSession | None = None) -> Encoded:
        view = None
        if delta.kind == "changed" and viewer_id is not None:
            view = self.tailnet.peer_view(viewer_id, self.tailnet.nodes[delta.node_id])
            views = getattr(session, "views", None)
            if views is not None:
                if view is None:
                    views.pop(delta.node_id, None)
                else:
                    views[delta.node_id] = view
        key = (delta.kind, view)
        message = cache.get(key)
        if message is None:
            message = cache[key] = Encoded(self.tailnet.encode_delta(delta, changed, now, view))
        return message

    def _node_gone(self, node_id: int) -> None:
        old = self.tailnet.nodes.pop(node_id, None)
        self.tailnet.online.discard(node_id)
        self._policy_node_gone(node_id)
        scope = self._gc_scopes.pop(node_id, None)
        if scope is not None:
            scope.cancel()
        for session in self.sessions.pop(node_id, set()):
            self.presence.closed(node_id)
            session.close("node deleted")
        if old is None:
            return
        removed = Encoded({"PeersRemoved": [node_id]})
        for sessions in self.sessions.values():
            for session in sessions:
                if node_id in session.sent:
                    session.sent.discard(node_id)
                    session.push(removed)

    def _presence_offline(self, node_id: int, data: dict[str, Any]) -> None:
        if self.presence.holds(node_id):
            # we still serve it (our row was reaped while we could not renew it): it stays online
            if data.get("replica_id") == self.presence.replica_id:
                self.presence.lost(node_id)
            return
        node = self.tailnet.nodes.get(node_id)
        if node is None:
            return
        last_seen = tailcfg.parse_time(data.get("last_seen")) if data.get("last_seen") else None
        if last_seen is not None:
            node = self.tailnet.nodes[node_id] = node.replace(last_seen=last_seen)
        self._set_online(node_id, False, last_seen)
        if node.ephemeral:
            self._schedule_ephemeral_gc(node_id)

    def _set_online(self, node_id: int, online: bool, last_seen: datetime | None = None) -> None:
        if online == (node_id in self.tailnet.online):
            return
        if online:
            self.tailnet.online.add(node_id)
        else:
            self.tailnet.online.discard(node_id)
        patch = Encoded(self.tailnet.online_patch(node_id, online, last_seen))
        for sessions in self._sessions_that_may_know(node_id):
            for session in sessions:
                if node_id in session.sent:
                    session.push(patch)
        self._policy_online_changed()  # HA routes: a router going offline hands over its prefixes

    def _sessions_that_may_know(self, node_id: int):
        """The session sets whose `sent` may hold `node_id`. Visibility is symmetric (the policy's
        peers are "traffic allowed in either direction", shares show both sides) and the fan-out
        keeps every session's `sent` equal to what its viewer may see, so only the viewers among
        the node's own visible peers qualify: O(peers), not O(sessions) per online change (10,000
        sessions coming online were O(N²)). Without a policy view of the node: every session."""
        policy = self.policy
        if policy is not None and self.tailnet.visibility == policy.can_see and policy.known(node_id):
            peers = policy.visible_ids(node_id)
            if len(peers) < len(self.sessions):
                sessions = self.sessions
                return [sessions[v] for v in peers if v in sessions]
        return list(self.sessions.values())

    # -- map sessions --------------------------------------------------------------------------
    def open_session(self, node_id: int, compress: str | None,
                     capver: int = tailcfg.CAPVER_CERT_HASH) -> tuple[MapSession, Encoded]:
        """Register a session and build its first map in one step (see the module docstring)."""
        node = self.tailnet.nodes[node_id]
        session = MapSession(node_id, compress, capver)
        first, sent = self.tailnet.full_map(node, self.now())
        first["DERPMap"] = tailcfg.derp_map_for_capver(first["DERPMap"], capver)
        session.sent = PeerSet(sent)
        self._remember_first_map(session, first)
        self.sessions.setdefault(node_id, set()).add(session)
        scope = self._gc_scopes.pop(node_id, None)
        if scope is not None:
            scope.cancel()
        self.presence.opened(node_id)
        self._set_online(node_id, True)
        return session, Encoded(first)

    async def close_session(self, session: MapSession) -> None:
        sessions = self.sessions.get(session.node_id)
        if sessions is None:
            return
        if session not in sessions:
            return
        sessions.discard(session)
        self.presence.closed(session.node_id)
        if sessions:
            return
        del self.sessions[session.node_id]
        node = self.tailnet.nodes.get(session.node_id)
        if node is None:
            return
        if session.node_id not in self.presence.written and not self.presence.holds(session.node_id):
            # its presence never reached the store, so no "presence.offline" will come: say it
            # here (otherwise that change, which also records last_seen, takes it offline)
            now = self.now()
            self._set_online(session.node_id, False, now)
            with trio.CancelScope(shield=True):
                try:
                    await self.store.update_node(node.id, last_seen=now)
                except Exception as exc:  # the node may be gone already
                    log.debug("recording last_seen of node %s: %s", node.id, exc)
        if node.ephemeral:
            self._schedule_ephemeral_gc(node.id)

    def _schedule_ephemeral_gc(self, node_id: int) -> None:
        if (
            self._nursery is None
            or node_id in self.sessions
            or node_id in self.tailnet.online  # served by another replica
            or node_id in self._gc_scopes
        ):
            return
        scope = trio.CancelScope()
        self._gc_scopes[node_id] = scope
        self._nursery.start_soon(self._ephemeral_gc, node_id, scope)

    async def _ephemeral_gc(self, node_id: int, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self.ephemeral_timeout.total_seconds())
            if (
                node_id not in self.sessions
                and node_id not in self.tailnet.online
                and self._gc_scopes.get(node_id) is scope
            ):
                log.info("removing ephemeral node %s after %s offline", node_id, self.ephemeral_timeout)
                try:
                    await self.store.delete_node(node_id)
                except Exception as exc:
                    log.debug("ephemeral node %s: %s", node_id, exc)
        if self._gc_scopes.get(node_id) is scope:
            del self._gc_scopes[node_id]

    def keepalive_interval(self) -> float:
        return KEEPALIVE_BASE + random.random() * KEEPALIVE_JITTER

    # -- interactive registration --------------------------------------------------------------
    async def wait_for_ssh_decision(self, check_id: str, timeout: float) -> str:
        """The decision on an SSH check ("approved"/"rejected"), or "" if none came within
        `timeout` seconds; "expired" if the check is gone. Decisions made on any replica arrive
        through the change log."""
        event = self._registration_done.setdefault(check_id, trio.Event())
        try:
            with trio.move_on_after(timeout):
                while True:
                    check = await self.store.get_ssh_check(check_id, self.now())
                    if check is None:
                        return "expired"
                    if check.decision:
                        return check.decision
                    await event.wait()
                    event = self._registration_done[check_id] = trio.Event()
            return ""
        finally:
            if self._registration_done.get(check_id) is event:
                del self._registration_done[check_id]

    async def wait_for_approval(self, reg_id: str, deadline: datetime) -> bool:
        event = self._registration_done.setdefault(reg_id, trio.Event())
        try:
            reg = await self.store.get_pending_registration(reg_id)
            if reg is not None and reg.node_id is not None:
                return True
            seconds = (deadline - self.now()).total_seconds()
            with trio.move_on_after(max(seconds, 0)):
                await event.wait()
                await self.caught_up()
                return True
            return False
        finally:
            if self._registration_done.get(reg_id) is event:
                del self._registration_done[reg_id]
