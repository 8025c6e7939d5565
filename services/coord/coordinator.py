"""The coordinator: the in-memory tailnet of this replica, kept current from the store's change log
and fanned out to its map sessions. A façade over small parts, wired here with explicit handles:

* `follower.ChangeFollower`: applies the change log in sequence order (`apply` below), reloads when
  the log was trimmed past this replica, and lets handlers wait for their own writes (`wait_seq`).
* `shared/domain/fanout.py`: what each session is told after a change (pure); `apply` fetches the
  record, hands the change to `fan_out` and queues its messages with no await in between.
* `sessions.SessionTable`: the map sessions and the flusher that writes their queues.
* `housekeeping`: store upkeep on timers (pending logins, change-log trim, dead relays, ephemeral
  nodes left offline).
* `policysource.PolicySource` / `policywrites`: where the policy comes from, and the store writes it
  calls for (requested tags, auto-approved routes).

A new map session builds its first map and registers itself in one synchronous step too, so every
change is either in a session's first map or in its deltas, never both and never neither.
"""

from __future__ import annotations

import logging
import random
from contextvars import ContextVar
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta
from typing import Any

import trio

from trioscale.shared.domain import fanout, tailcfg
from trioscale.shared.domain.fanout import Message
from trioscale.shared.domain.netmap import Settings, Tailnet
from trioscale.shared.model import Change, Node, utcnow
from trioscale.shared.store.base import Store, StoreUnavailable, carried_node

from . import policywrites
from .metrics import POLICY_COMPILE_SECONDS
from .follower import ChangeFollower
from .housekeeping import EphemeralReaper, Housekeeping, expire_relays
from trioscale.shared.domain.policy.host import PolicyHost
from .policysource import PolicySource
from .presence import PresenceTracker
from .sessions import MapSession, SessionTable

log = logging.getLogger("trioscale.coord")

#: the commit time of the change the current task is applying (the follower's task only): what
#: the fan-out it causes is timed from (metrics.FANOUT_SECONDS)
applying_committed: ContextVar[datetime | None] = ContextVar("applying_committed", default=None)

#: how many applied deletions `record_allocation` remembers (see `Coordinator._deleted_lately`)
_DELETED_LATELY = 4096
KEEPALIVE_BASE = 50.0
KEEPALIVE_JITTER = 9.0


class Coordinator:
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
        #: the live policy; its fan-out is in shared/domain/fanout.py, its sources in policysource.py
        self.policy = PolicyHost(online=lambda: self.tailnet.online)
        self.tailnet.policy = self.policy
        self.tailnet.visibility = self.policy.can_see
        self.policy_source = PolicySource(store, mode=policy_mode, path=policy_path, tailnet=self.tailnet,
                                          host=self.policy, install=self.install_policy)
        self.build_derp_map = build_derp_map
        self.now = clock
        self.sessions = SessionTable()
        # `apply` is looked up at each call, so a test can replace it
        self.follower = ChangeFollower(store, lambda change: self.apply(change), self.reload)
        self.housekeeping = Housekeeping(store, clock)
        self.ephemeral = EphemeralReaper(store, ephemeral_timeout, self._connected)
        self._registration_done: dict[str, trio.Event] = {}
        self._relays: list = []
        self._nursery: trio.Nursery | None = None
        #: registration allocates addresses and names one at a time in this process (register.py)
        self.allocation_lock = trio.Lock()
        #: nodes created (here, or by the replica a creation here lost to) whose change this replica
        #: has not applied yet, held in memory so no registration takes their address or name;
        #: each with the number of the tailnet load it was recorded in
        self._allocated: dict[int, tuple[Node, int]] = {}
        self._loads = 0
        #: ids of nodes whose deletion was applied lately: a creation recorded after its node's
        #: deletion was applied is not held (bounded; the race needs a deletion within moments)
        self._deleted_lately: dict[int, None] = {}
        #: this replica's map sessions in the store; online state comes from presence changes
        self.presence = presence if presence is not None else PresenceTracker(store, clock=clock)
        #: relays whose heartbeat is older than this are dropped from the store (None: never)
        self.relay_timeout = relay_timeout
        #: how many times the tailnet was reloaded because the log was trimmed past this replica
        self.reloads = 0
        #: told the name of a tailnet setting the API stored (`settings.set`); None: nobody listens
        self.on_settings: Callable[[str], Awaitable[None]] | None = None

    @property
    def seq(self) -> int:
        return self.follower.seq

    def _connected(self, node_id: int) -> bool:
        """Served here or (online) by another replica: an ephemeral node is not reaped."""
        return node_id in self.sessions.by_node or node_id in self.tailnet.online

    def _fan_out(self, change: fanout.Change) -> None:
        self.sessions.deliver(fanout.fan_out(self.tailnet, self.sessions.by_node, change, self.now()),
                              applying_committed.get())

    # -- loading and following -----------------------------------------------------------------
    async def load(self) -> None:
        """Read the whole tailnet once; later changes come from the log after `self.seq`."""
        self._loads += 1
        self.follower.seq = await self.store.latest_seq()
        self.tailnet.users = {u.id: u for u in await self.store.list_users()}
        self.tailnet.replace_nodes(await self.store.list_nodes())
        for node_id, (node, load) in list(self._allocated.items()):
            # read from the store now, or committed before the read began and deleted since
            if node_id in self.tailnet.nodes or load < self._loads:
                del self._allocated[node_id]
            else:  # committed while the nodes were being read: its change comes from the log
                self._hold_allocated(node)
        self.tailnet.online = {p.node_id for p in await self.store.list_presence() if p.node_id in self.tailnet.nodes}
        self._relays = await self.store.list_relays()
        self.tailnet.settings.derp_map = self.build_derp_map(self._relays)
        policy, text, version = await self.policy_source.initial()
        shares = await self.store.list_shares()
        self.policy.load(self.tailnet.users.values(), self.tailnet.nodes.values(), shares, policy, text, version)
        POLICY_COMPILE_SECONDS.observe(self.policy.compile_seconds)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.ephemeral.start(nursery)
            self._schedule_ephemeral_gc()
            await nursery.start(self.presence.run)
            nursery.start_soon(self.sessions.flush)
            nursery.start_soon(self.sessions.keepalives)
            if self.relay_timeout is not None:
                nursery.start_soon(expire_relays, self.store, self.relay_timeout, self.now)
            nursery.start_soon(self.housekeeping.run)
            await nursery.start(self.follower.run)
            task_status.started()

    def _schedule_ephemeral_gc(self) -> None:
        for node in self.tailnet.nodes.values():
            if node.ephemeral:
                self.ephemeral.schedule(node.id)

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
        if self.on_settings is not None:
            await self.on_settings("")  # "": every setting, as changes to them may be among those missed
        self.sessions.close_all("tailnet reloaded")
        self._schedule_ephemeral_gc()
        self.follower.advance(self.follower.seq)

    async def housekeep(self) -> None:
        await self.housekeeping.once()

    def mark_dirty(self, session: MapSession) -> None:
        self.sessions.mark_dirty(session)

    def taken(self) -> tuple[Collection[str], Collection[str]]:
        """Addresses and names in use, as far as this coordinator knows (for allocation): kept up
        to date change by change, not rebuilt from every node at each registration."""
        holdings = self.tailnet.holdings
        return holdings.addresses, holdings.names

    def record_allocation(self, node: Node) -> None:
        """A node whose change this replica may not have applied yet: one it just created, or one
        another replica created holding the address or name a creation here lost to. Held until
        a change of the node is applied (`_settle_allocation`)."""
        if node.id in self.tailnet.nodes or node.id in self._deleted_lately:
            return  # applied already: the tailnet holds it under its id, or it is gone
        self._allocated[node.id] = (node, self._loads)
        self._hold_allocated(node)

    def _settle_allocation(self, node_id: int, deleted: bool) -> None:
        """A change of `node_id` was applied: from now on the tailnet holds what it holds."""
        if deleted:
            self._deleted_lately[node_id] = None
            if len(self._deleted_lately) > _DELETED_LATELY:
                del self._deleted_lately[next(iter(self._deleted_lately))]
        if self._allocated.pop(node_id, None) is not None:
            self.tailnet.holdings.release(("allocated", node_id))

    def _hold_allocated(self, node: Node) -> None:
        self.tailnet.holdings.hold(("allocated", node.id), node.ipv4, node.ipv6, node.given_name)

    async def wait_seq(self, seq: int) -> None:
        """Wait until changes up to `seq` are applied (read-your-writes for request handlers)."""
        await self.follower.wait_seq(seq)

    async def caught_up(self) -> None:
        await self.follower.caught_up()

    async def apply(self, change: Change) -> None:
        token = applying_committed.set(change.at)
        try:
            await self._apply(change)
        finally:
            applying_committed.reset(token)

    async def _apply(self, change: Change) -> None:
        kind, data = change.kind, change.data
        if kind in ("node.created", "node.updated"):
            new = carried_node(change) or await self.store.get_node(data["id"])
            old = self.tailnet.nodes.get(data["id"])
            self._settle_allocation(data["id"], deleted=new is None)
            if new is None:
                self._node_gone(data["id"])
            else:
                self._fan_out(fanout.NodeSet(new, tuple(data.get("fields", ()))))
                if old is not None and not old.ephemeral and new.ephemeral:
                    self.ephemeral.schedule(new.id)
                await policywrites.after_node_change(self.store, self.policy, old, new)
        elif kind == "node.deleted":
            self._settle_allocation(data["id"], deleted=True)
            self._node_gone(data["id"])
        elif kind in ("user.created", "user.updated"):
            user = await self.store.get_user(data["id"])
            if user is not None:
                self._fan_out(fanout.UserSet(user, created=kind == "user.created"))
        elif kind == "user.deleted":
            self._fan_out(fanout.UserRemoved(data["id"]))
        elif kind == "policy.set":
            await self.policy_source.on_policy_set()
        elif kind in ("share.created", "share.deleted"):
            self._fan_out(fanout.ShareSet(int(data["node_id"]), int(data["user_id"]), kind == "share.created"))
        elif kind in ("relay.updated", "relay.deleted"):
            self._relays = await self.store.list_relays()
            self._fan_out(fanout.DERPMapSet(self.build_derp_map(self._relays)))
        elif kind == "presence.online":
            node_id = int(data["node_id"])
            if node_id in self.tailnet.nodes:
                self.ephemeral.cancel(node_id)
                self._fan_out(fanout.OnlineSet(node_id, True))
        elif kind == "presence.offline":
            self._presence_offline(int(data["node_id"]), data)
        elif kind == "settings.set":
            if self.on_settings is not None:
                await self.on_settings(str(data.get("name", "")))
        elif kind in ("registration.completed", "sshcheck.decided"):
            event = self._registration_done.get(data.get("id"))
            if event is not None:
                event.set()

    def set_dns_config(self, dns_config: dict[str, Any] | None) -> None:
        """Replace the tailnet's DNSConfig and send it to every session."""
        self._fan_out(fanout.DNSConfigSet(dns_config))

    def refresh_derp_map(self) -> None:
        """The configured DERP regions changed (a fetched map): send every session the new map."""
        self._fan_out(fanout.DERPMapSet(self.build_derp_map(self._relays)))

    def install_policy(self, policy, text: str | None, version: int | None = None) -> None:
        """Swap in a validated policy (None = no policy: allow all) and tell every session."""
        self._fan_out(fanout.PolicySet(policy, text, version))
        POLICY_COMPILE_SECONDS.observe(self.policy.compile_seconds)
        if self._nursery is not None:
            self._nursery.start_soon(policywrites.persist_all_auto_approvals, self.store, self.policy, self.tailnet)

    def _node_gone(self, node_id: int) -> None:
        self.ephemeral.cancel(node_id)
        for _ in range(self.sessions.close_node(node_id, "node deleted")):
            self.presence.closed(node_id)
        self._fan_out(fanout.NodeRemoved(node_id))

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
        self._fan_out(fanout.OnlineSet(node_id, False, last_seen))
        if node.ephemeral:
            self.ephemeral.schedule(node_id)

    # -- map sessions --------------------------------------------------------------------------
    def arrive(self, node_id: int) -> None:
        """A map stream of `node_id` is about to open: the node is online from now on (and until
        `depart`, or the session's close). Said before the stream's own node update is stored, so
        that a new node's announcement, which that update brings (its first disco key), already
        says Online and its peers need no second message for it: in a join storm that second
        message was one more push to every session per join."""
        self.ephemeral.cancel(node_id)
        self.presence.opened(node_id)
        self._fan_out(fanout.OnlineSet(node_id, True))

    def open_session(self, node_id: int, compress: str | None,
                     capver: int = tailcfg.CAPVER_CERT_HASH) -> tuple[MapSession, Message]:
        """Register a session and build its first map in one step (see the module docstring), for
        a node `arrive` was called for; its close (`close_session`) is that arrival's `depart`."""
        session = MapSession(node_id, compress, capver)
        first = fanout.first_map_message(self.tailnet, session, self.now())
        self.sessions.add(session)
        return session, first

    async def close_session(self, session: MapSession) -> None:
        if self.sessions.discard(session) is None:
            return
        await self.depart(session.node_id)

    async def depart(self, node_id: int) -> None:
        """The end of what `arrive` began (a session closed, or a stream that never opened): the
        node goes offline unless another session (or one opening) still holds it."""
        self.presence.closed(node_id)
        if self.presence.holds(node_id):
            return
        node = self.tailnet.nodes.get(node_id)
        if node is None:
            return
        if node_id not in self.presence.written:
            # its presence never reached the store, so no "presence.offline" will come: say it
            # here (otherwise that change, which also records last_seen, takes it offline)
            now = self.now()
            self._fan_out(fanout.OnlineSet(node_id, False, now))
            with trio.CancelScope(shield=True):
                try:
                    await self.store.update_node(node.id, last_seen=now)
                except Exception as exc:  # the node may be gone already
                    log.debug("recording last_seen of node %s: %s", node.id, exc)
        if node.ephemeral:
            self.ephemeral.schedule(node.id)

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
