"""Region mesh: this relay connects out to every other relay of its region.

Relays of one region share a mesh key (``derp.server.mesh_key``). Each relay finds the others
in the store (`store.list_relays()`, same region id, heartbeat not older than
``derp.relay_timeout``), follows the store's ``relay.*`` change events (plus a periodic re-read,
so a relay that died without deleting its row is dropped when its heartbeat ages out), and keeps
one `MeshLink` to each:

* the link is a DERP client connection authenticated with the mesh key and the relay's own
  private key; it sends WatchConns and turns the peer's PeerPresent/PeerGone into
  `DerpServer.add_forwarder`/`remove_forwarder`, so `route()` knows which keys live there;
* packets for those keys go out on the link as ForwardPacket frames (bounded queue, oldest
  dropped, one batched write per wakeup, like a client's writer);
* a failed link forgets its keys (peers that received from them get PeerGone once no other path
  exists) and reconnects with jittered exponential backoff.

Data flows one way on a link: A forwards to B over A's link to B, B to A over B's link to A.

Several relay processes may share one host:port with SO_REUSEPORT (one region's relays on one
host). A connection to that address lands on any of them, so a link checks what it reached: its
own server key or certificate, or the key or pinned certificate of another relay there, means
"wrong process": it closes and dials again at once (no backoff).
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import trio

from trioscale.shared.model import utcnow
from trioscale.shared.net.derpdial import DerpHandshakeError, derp_upgrade
from trioscale.shared.net.rawstream import RawStream, open_tcp_raw
from trioscale.shared.net.tls import client_context
from trioscale.shared.proto import derp as proto
from trioscale.shared.proto.derp import KEY_LEN, PeerGone, PeerPresent, PeerPresentFlags
from trioscale.shared.store.base import ChangesTrimmed

if TYPE_CHECKING:
    from .router import DerpServer

log = logging.getLogger("trioscale.derp.mesh")

_frame_header = proto.frame_header
_FWD = proto.FrameType.FORWARD_PACKET
_WATCH = proto.encode(proto.WatchConns())


class _WrongPeer(Exception):
    """The shared address led to ourselves or to a relay another link already reaches."""


_LINK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ssl.SSLError,
                DerpHandshakeError, proto.DerpError, EOFError)


def _expected(exc: BaseException) -> bool:
    """A connection failure (also when it comes wrapped in an exception group by a nursery)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_expected(e) for e in exc.exceptions)
    return isinstance(exc, _LINK_ERRORS)


def relay_id(relay: Any) -> tuple[int, str]:
    return (relay.region_id, relay.name)


def relay_address(relay: Any) -> tuple[str, int]:
    return (relay.ipv4 or relay.ipv6 or relay.host, relay.derp_port)


class MeshLink:
    """One outgoing mesh connection to a peer relay (also the `Forwarder` for its keys)."""

    def __init__(self, mesh: "Mesh", relay: Any, *, queue_depth: int = 4096, room_wait: float = 2.0):
        self.mesh = mesh
        self.relay = relay
        self.id = relay_id(relay)
        self.keys: set[bytes] = set()
        self.server_key: bytes | None = None
        self.connected = False
        self.queue: deque = deque()
        self.queue_depth = queue_depth
        self._parked: Any = None
        self.scope = trio.CancelScope()
        self.forwarded = 0
        self.connects = 0
        self.nwrites = 0  # see Client.nwrites / stuck_at
        self.stuck_at = -1
        self.room_wait = room_wait
        self._room: trio.Event | None = None  # senders waiting for room in the queue

    # -- Forwarder -----------------------------------------------------------------------------
    def forward(self, src: bytes, dst: bytes, packet: bytes) -> None:
        q = self.queue
        n = len(q)
        if n >= self.queue_depth - 1:
            if n >= self.queue_depth:
                _, _, old = q.popleft()
                self.mesh.server.stats.drop("queue_head", len(old))
            self.mesh.server.pressure = self  # the sending reader yields to our writer (see Client)
        q.append((src, dst, packet))
        t = self._parked
        if t is not None:
            self._parked = None
            trio.lowlevel.reschedule(t)

    def eased(self) -> bool:
        return not self.connected or len(self.queue) <= self.queue_depth // 2

    async def wait_room(self) -> None:
        """Until the writer has taken the queue (or the link is down), at most `room_wait`
        seconds; a link that took nothing in that time is marked stuck (see `Client._relieve`)."""
        if self.eased():
            await trio.lowlevel.checkpoint()
            return
        if self._room is None:
            self._room = trio.Event()
        room = self._room
        before = self.nwrites
        with trio.move_on_after(self.room_wait):
            await room.wait()
            return
        if self.nwrites == before:
            self.stuck_at = before

    def _make_room(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    def _abort(self, _raise_cancel: Any) -> Any:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _writer(self, client: Any) -> None:
        q = self.queue
        st = self.mesh.server.stats
        current_task = trio.lowlevel.current_task
        wait = trio.lowlevel.wait_task_rescheduled
        abort = self._abort
        while True:
            if not q:
                self._parked = current_task()
                await wait(abort)
            parts: list[bytes] = []
            append = parts.append
            n = 0
            while q:
                src, dst, pkt = q.popleft()
                append(_frame_header(_FWD, 2 * KEY_LEN + len(pkt)))
                append(src)
                append(dst)
                append(pkt)
                n += 1
            self._make_room()  # the queue is empty: the senders waiting may fill it while we write
            await client.send_raw(b"".join(parts))  # its lock: the reader may answer a Ping
            self.nwrites += 1
            self.forwarded += n
            st.mesh_packets_sent += n

    # -- presence --------------------------------------------------------------------------------
    def _present(self, ev: PeerPresent) -> None:
        key = ev.key
        if key == self.mesh.server.public_key or key in self.mesh.server_keys:
            return
        if ev.flags is not None and ev.flags & PeerPresentFlags.IS_MESH_PEER:
            return
        if key not in self.keys:
            self.keys.add(key)
            self.mesh.server.add_forwarder(key, self)

    def _gone(self, key: bytes) -> None:
        if key in self.keys:
            self.keys.discard(key)
            self.mesh.server.remove_forwarder(key, self)

    def _forget(self) -> None:
        server = self.mesh.server
        for key in list(self.keys):
            server.remove_forwarder(key, self)
        self.keys.clear()
        if self.queue:
            server.stats.drop("write_error", sum(len(p) for _, _, p in self.queue), len(self.queue))
            self.queue.clear()
        self._make_room()

    # -- connection ------------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = self.mesh.min_backoff
        with self.scope:
            while True:
                started = trio.current_time()
                try:
                    await self._session()
                except _WrongPeer:
                    await trio.sleep(0.01 + random.random() * 0.02)
                    continue
                except Exception as exc:
                    if _expected(exc):  # the peer went away, restarted, or is not reachable
                        log.debug("mesh link to %s: %r", self.relay.name, exc)
                    else:
                        log.warning("mesh link to %s failed", self.relay.name, exc_info=True)
                if trio.current_time() - started > 10.0:
                    backoff = self.mesh.min_backoff
                await trio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.mesh.max_backoff)

    async def _session(self) -> None:
        mesh = self.mesh
        host, port = relay_address(self.relay)
        stream: Any = None
        try:
            with trio.fail_after(mesh.connect_timeout):
                sock = await open_tcp_raw(host, port)
                stream = RawStream(sock, mesh.tls_context(self.relay), server_side=False,
                                   server_hostname=self.relay.host or host)
                await stream.do_handshake()
                mesh.check_pin(self.relay, stream)
                info = proto.ClientInfo(mesh.server.public_key, version=proto.PROTOCOL_VERSION,
                                        mesh_key=mesh.mesh_key, can_ack_pings=True)
                client = await derp_upgrade(stream, mesh.server.private_key, host=self.relay.host or host,
                                            client_info=info)
            key = client.server_key
            if key == mesh.server.public_key or key in mesh.server_keys:
                raise _WrongPeer()
            self.server_key = key
            mesh.server_keys[key] = self
            try:
                await client.send_raw(_WATCH)
                self.connected = True
                self.connects += 1
                mesh.link_up(self)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, client)
                    await self._reader(client)
                    nursery.cancel_scope.cancel()
            finally:
                self.connected = False
                mesh.server_keys.pop(key, None)
                self._forget()
                mesh.link_down(self)
        finally:
            self._parked = None
            if stream is not None:
                stream.close()

    async def _reader(self, client: Any) -> None:
        while True:
            ev = await client.recv()
            t = type(ev)
            if t is PeerPresent:
                self._present(ev)
            elif t is PeerGone:
                self._gone(ev.key)
            elif t is proto.Restarting:
                return  # the peer is going away; reconnect after backoff


class Mesh:
    """All of this relay's outgoing mesh links, kept in line with the store's relay rows."""

    def __init__(self, server: "DerpServer", mesh_key: bytes, *, own: Any, store: Any,
                 relay_timeout: float = 60.0, resync_interval: float = 5.0,
                 min_backoff: float = 0.2, max_backoff: float = 5.0, connect_timeout: float = 10.0):
        self.server = server
        self.mesh_key = mesh_key
        self.own = own  # our DerpRelay row (region and name)
        self.store = store
        self.relay_timeout = relay_timeout
        self.resync_interval = resync_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.links: dict[tuple[int, str], MeshLink] = {}
        self.server_keys: dict[bytes, MeshLink] = {}
        self._nursery: trio.Nursery | None = None
        self._insecure_ctx = client_context(verify=False)
        self._verify_ctx: ssl.SSLContext | None = None

    @property
    def links_up(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    def link_up(self, link: MeshLink) -> None:
        self.server.stats.mesh_links_up = self.links_up
        log.info("mesh link to %s up (server key %s); mesh peers up: %d",
                 link.relay.name, link.server_key.hex()[:16] if link.server_key else "?", self.links_up)

    def link_down(self, link: MeshLink) -> None:
        self.server.stats.mesh_links_up = self.links_up
        log.info("mesh link to %s down; mesh peers up: %d", link.relay.name, self.links_up)

    # -- TLS -----------------------------------------------------------------------------------
    def tls_context(self, relay: Any) -> ssl.SSLContext:
        if relay.insecure_for_tests or (relay.cert_name or "").startswith("sha256-raw:"):
            return self._insecure_ctx  # pinned certificates are checked in check_pin
        if self._verify_ctx is None:
            self._verify_ctx = client_context(verify=True)
        return self._verify_ctx

    def check_pin(self, relay: Any, stream: RawStream) -> None:
        name = relay.cert_name or ""
        if not name.startswith("sha256-raw:") or relay.insecure_for_tests:
            return
        der = stream._tls.getpeercert(binary_form=True) if stream._tls is not None else None
        digest = hashlib.sha256(der).hexdigest() if der else ""
        if digest == name.split(":", 1)[1].lower():
            return
        if digest and digest in self._pins_at(relay_address(relay)):
            # a shared port (SO_REUSEPORT) led to this relay or another one there, each with a
            # certificate of its own: dial again at once, as for its server key (not a failure
            # to back off from: with two processes every other dial lands on the wrong one)
            raise _WrongPeer()
        raise ssl.SSLError(f"mesh peer {relay.name}: certificate does not match {name}")

    def _pins_at(self, address: tuple[str, int]) -> set[str]:
        """The pinned certificates of this relay and of the known relays at `address`."""
        rows = [self.own, *(link.relay for link in self.links.values())]
        return {r.cert_name.split(":", 1)[1].lower() for r in rows
                if (r.cert_name or "").startswith("sha256-raw:") and relay_address(r) == address}

    # -- following the fleet -----------------------------------------------------------------
    def _peers_of(self, relays: list[Any]) -> dict[tuple[int, str], Any]:
        now = utcnow()
        limit = timedelta(seconds=self.relay_timeout)
        out = {}
        for r in relays:
            if r.region_id != self.own.region_id or r.name == self.own.name:
                continue
            if r.heartbeat_at is not None and now - r.heartbeat_at > limit:
                continue
            out[relay_id(r)] = r
        return out

    def reconcile(self, relays: list[Any]) -> None:
        assert self._nursery is not None
        want = self._peers_of(relays)
        for rid in list(self.links):
            link = self.links[rid]
            new = want.get(rid)
            if new is None or relay_address(new) != relay_address(link.relay):
                log.info("mesh peer %s removed", link.relay.name)
                link.scope.cancel()
                del self.links[rid]
            else:
                link.relay = new
        for rid, relay in want.items():
            if rid not in self.links:
                link = MeshLink(self, relay)
                self.links[rid] = link
                log.info("mesh peer %s at %s:%d added", relay.name, *relay_address(relay))
                self._nursery.start_soon(link.run)
        self.server.stats.mesh_peers = len(self.links)

    async def _resync(self) -> None:
        try:
            relays = await self.store.list_relays()
        except trio.Cancelled:
            raise
        except Exception:
            log.warning("mesh: could not list relays", exc_info=True)
            return
        self.reconcile(relays)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._resync()
            task_status.started()
            nursery.start_soon(self._periodic)
            while True:
                try:
                    async with self.store.subscribe() as changes:
                        await self._resync()  # anything between the first read and now
                        async for change in changes:
                            if change.kind.startswith("relay."):
                                await self._resync()
                except trio.Cancelled:
                    raise
                except ChangesTrimmed as exc:
                    # fell behind the trimmed change log: the resync on resubscribing reloads
                    log.info("mesh: %s; reloading the relay list", exc)
                except Exception:
                    log.warning("mesh: change subscription failed; retrying", exc_info=True)
                    await trio.sleep(1.0)

    async def _periodic(self) -> None:
        while True:
            await trio.sleep(self.resync_interval)
            await self._resync()

    def close(self) -> None:
        for link in self.links.values():
            link.scope.cancel()
        self.links.clear()
