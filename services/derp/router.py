"""The relay's router: who is connected, where a key is, per-client send queues.

`DerpServer` owns the key → connection tables and routes packets; it never awaits. Each
connection is a `Client` with bounded queues (dropping the oldest packet when full, so a reader
never blocks on a slow receiver) and one writer task that drains everything queued into a
single TLS write. The connections themselves (TLS, HTTP front, session) are run by session.py.

Routing follows the spec's decision procedure: a local active connection wins; else a mesh
forwarder (the hook for region meshes: `add_forwarder`/`remove_forwarder`); else drop, answering
a disco packet with a rate-limited PeerGone(NotHere).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import trio

from trioscale.shared.proto import derp as proto
from trioscale.shared.proto.derp import (
    DISCO_MAGIC,
    KEY_LEN,
    ClosePeer,
    ForwardPacket,
    KeepAlive,
    NotePreferred,
    PeerGone,
    PeerGoneReason,
    PeerPresent,
    PeerPresentFlags,
    Ping,
    Pong,
    RemoteProtocolError,
    Restarting,
    SendPacket,
    UnknownFrame,
    WatchConns,
)

from .stats import DerpStats

log = logging.getLogger("trioscale.derp")

_frame_header = proto.frame_header
_split_send = proto.split_send_packet
_split_forward = proto.split_forward_packet
_RECV = proto.FrameType.RECV_PACKET
_SEND = proto.FrameType.SEND_PACKET
_FWD = proto.FrameType.FORWARD_PACKET
_KEEPALIVE_FRAME = proto.encode(KeepAlive())
_DISCO_MIN = proto.DISCO_MIN_LEN


class Forwarder(Protocol):
    """A way to reach keys connected to another relay of the region (a mesh peer)."""

    def forward(self, src: bytes, dst: bytes, packet: bytes) -> None: ...

    def eased(self) -> bool: ...

    # optional: `async def wait_room(self) -> None`, for a sender to wait on instead of yielding


class ConnectionClosed(Exception):
    """Raised inside a connection's tasks to end it (policy, not an error of the relay)."""


class Client:
    """One admitted DERP connection."""

    __slots__ = (
        "server",
        "key",
        "info",
        "stream",
        "peer_ip",
        "peer_port",
        "flags",
        "is_mesh",
        "node_id",
        "data",
        "disco",
        "ctl",
        "pong",
        "_parked",
        "peers_seen",
        "preferred",
        "scope",
        "_pg_tokens",
        "_pg_at",
        "closed",
        "nwrites",
        "stuck_at",
        "expires_at",
        "next_keepalive",
    )

    def __init__(
        self,
        server: "DerpServer",
        key: bytes,
        stream: Any,
        *,
        info: proto.ClientInfo | None = None,
        peer: tuple[str, int] = ("", 0),
        is_mesh: bool = False,
        not_ideal: bool = False,
        node_id: int | None = None,
    ):
        self.server = server
        self.key = key
        self.info = info
        self.stream = stream
        self.peer_ip, self.peer_port = peer[0], peer[1]
        flags = 0
        if info is not None and info.is_prober:
            flags |= PeerPresentFlags.IS_PROBER
        if is_mesh:
            flags |= PeerPresentFlags.IS_MESH_PEER
        if not_ideal:
            flags |= PeerPresentFlags.NOT_IDEAL
        self.flags = int(flags or PeerPresentFlags.IS_REGULAR)
        self.is_mesh = is_mesh
        self.node_id = node_id
        depth = server.queue_depth
        self.data: deque = deque(maxlen=depth)  # (src, packet)
        self.disco: deque = deque(maxlen=depth)
        self.ctl: list[bytes] = []  # ready-made control frames (a list: an empty deque costs 600 B)
        self.pong: bytes | None = None
        self._parked = None
        self.peers_seen: set[bytes] = set()
        self.preferred = False
        self.scope: trio.CancelScope | None = None
        self._pg_tokens = 3.0
        self._pg_at = 0.0
        self.closed = False
        self.nwrites = 0  # writes completed (the reader's pressure relief watches it)
        self.stuck_at = -1  # nwrites when a relief made no progress: don't yield again until it moves
        self.expires_at: float | None = None  # the node's expiry (Unix time), with verify-clients
        self.next_keepalive = float("inf")  # Trio time of the next KeepAlive (DerpServer.keepalives)

    def buffered(self) -> int:
        """Bytes queued for this client (packets and control frames)."""
        n = sum(len(p) for _, p in self.data) + sum(len(p) for _, p in self.disco)
        n += sum(len(f) for f in self.ctl)
        return n + (len(self.pong) if self.pong is not None else 0)

    # -- producers (never block) ---------------------------------------------------------------
    def enqueue_packet(self, src: bytes, packet: bytes) -> None:
        q = self.disco if packet.startswith(DISCO_MAGIC) else self.data
        n = len(q)
        if n >= q.maxlen - 1:
            if n == q.maxlen:
                st = self.server.stats
                st.packets_dropped += 1
                st.bytes_dropped += len(q[0][1])
                st.drop_queue_head += 1
            self.server.pressure = self  # the sender's reader yields so that our writer can drain
        q.append((src, packet))
        t = self._parked
        if t is not None:
            self._parked = None
            trio.lowlevel.reschedule(t)

    def send_frame(self, frame: bytes) -> None:
        """Queue a control frame (bytes); control frames are few and never dropped."""
        self.ctl.append(frame)
        t = self._parked
        if t is not None:
            self._parked = None
            trio.lowlevel.reschedule(t)

    def send_pong(self, data: bytes) -> None:
        if self.pong is None:  # one slot: pings arriving faster than we answer are dropped
            self.pong = data
            t = self._parked
            if t is not None:
                self._parked = None
                trio.lowlevel.reschedule(t)

    def close(self) -> None:
        """End this connection (from anywhere, e.g. node deleted, ClosePeer, newer duplicate)."""
        self.closed = True
        if self.scope is not None:
            self.scope.cancel()

    def eased(self) -> bool:
        """Queues at most half full again (or the connection is gone)."""
        half = self.server.queue_depth // 2
        return self.closed or (len(self.data) <= half and len(self.disco) <= half)

    @property
    def idle(self) -> bool:
        return not (self.ctl or self.data or self.disco or self.pong)

    @property
    def flushed(self) -> bool:
        """Nothing queued and the writer parked (so no write is in flight)."""
        return self._parked is not None and self.idle

    def _allow_peer_gone(self, now: float) -> bool:
        tokens = min(3.0, self._pg_tokens + (now - self._pg_at))
        self._pg_at = now
        if tokens >= 1.0:
            self._pg_tokens = tokens - 1.0
            return True
        self._pg_tokens = tokens
        return False

    # -- the writer task -------------------------------------------------------------------------
    def _abort(self, _raise_cancel: Any) -> Any:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def writer(self, write_timeout: float | None) -> None:
        """Drain all queues into one buffer per write; returns (raises) when the stream fails."""
        server = self.server
        st = server.stats
        stream = self.stream
        ctl, disco, data = self.ctl, self.disco, self.data
        seen = self.peers_seen
        subscribe = server._subscribe_gone
        current_task = trio.lowlevel.current_task
        wait = trio.lowlevel.wait_task_rescheduled
        abort = self._abort
        timeout = write_timeout if write_timeout else float("inf")
        while True:
            if not (ctl or disco or data or self.pong is not None):
                self._parked = current_task()
                await wait(abort)
            parts: list[bytes] = []
            append = parts.append
            nframes = 0
            if ctl:
                parts.extend(ctl)
                nframes += len(ctl)
                ctl.clear()
            if self.pong is not None:
                append(proto.encode(Pong(self.pong)))
                self.pong = None
                st.pongs_sent += 1
                nframes += 1
            npkts = 0
            nbytes = 0
            for q in (disco, data):
                while q:
                    src, pkt = q.popleft()
                    n = len(pkt)
                    append(_frame_header(_RECV, KEY_LEN + n))
                    append(src)
                    append(pkt)
                    npkts += 1
                    nbytes += n
                    if src not in seen:
                        seen.add(src)
                        subscribe(src, self)
            buf = b"".join(parts)
            with trio.move_on_after(timeout) as cs:
                try:
                    await stream.send_all(buf)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    st.drop("write_error", nbytes, npkts)
                    raise ConnectionClosed("write failed") from None
            if cs.cancelled_caught:
                st.write_timeouts += 1
                st.drop("write_error", nbytes, npkts)
                raise ConnectionClosed("write timed out")
            st.writes += 1
            self.nwrites += 1
            st.frames_written += nframes + npkts
            st.packets_relayed += npkts
            st.bytes_relayed += nbytes

    # -- the reader --------------------------------------------------------------------------------
    async def reader(self, conn: proto.DerpServerConnection, pending: list, recv_size: int = 1 << 18) -> None:
        """Read and act on frames until EOF. Raises RemoteProtocolError / ConnectionClosed."""
        server = self.server
        stream = self.stream
        route = server.route
        me = self.key
        active = server._active
        control = self._control
        for ev in pending:  # whatever came with ClientInfo (fast start)
            if type(ev) is SendPacket:
                route(self, ev.dst, ev.packet)
            else:
                control(ev)
        if pending and active.get(me) is not self and not self.closed:
            server._make_active(self)
        feed = conn.receive_frames
        decode = conn.decode_frame
        receive = stream.receive_some
        SEND, FWD = _SEND, _FWD
        split_send, split_forward = _split_send, _split_forward
        mesh = self.is_mesh
        route_fwd = server.route_forwarded
        while True:
            data = await receive(recv_size)
            if not data:
                return
            frames = feed(data)
            if not frames:
                continue
            for t, payload in frames:
                if t == SEND:
                    dst, packet = split_send(payload)
                    route(self, dst, packet)
                    if server.pressure is not None:
                        await self._relieve(server)
                elif t == FWD and mesh and type(payload) is not int:
                    src, dst, packet = split_forward(payload)
                    route_fwd(self, src, dst, packet)
                    if server.pressure is not None:
                        await self._relieve(server)
                else:
                    ev = decode(t, payload)
                    if ev is not None:
                        control(ev)
            if active.get(me) is not self and not self.closed:
                server._make_active(self)  # the last writer among duplicates is active

    async def _relieve(self, server: "DerpServer") -> None:
        """A destination's queue is nearly full. One read can carry hundreds of packets (after a
        stall, or from a fast sender), more than a queue holds, and the destination's writer only
        runs when this task yields: so yield (a few times at most) to let it drain, instead of
        dropping packets that a writer with a free socket could have sent. A destination whose
        socket is full stays full and loses its oldest packets, as before.

        A mesh link is different: it carries many clients' packets to a peer relay that reads it
        as fast as it can, so a full link means the senders outrun the region, not that one
        receiver is slow. The sender waits for room (as derper's synchronous ForwardPacket makes
        it wait), which slows it down to what the mesh moves instead of losing the difference;
        a link that makes no progress for a while drops like a stuck client."""
        dest = server.pressure
        server.pressure = None
        if dest.stuck_at == dest.nwrites:
            return  # its writer has not finished a write since we last waited in vain: drop
        wait_room = getattr(dest, "wait_room", None)
        if wait_room is not None:
            await wait_room()
            return
        before = dest.nwrites
        for _ in range(4):
            await trio.lowlevel.checkpoint()
            if dest.eased():
                break
        else:
            if dest.nwrites == before:
                dest.stuck_at = before  # a slow socket: further packets drop without waiting
        server.pressure = None

    def _control(self, ev: Any) -> None:
        server = self.server
        st = server.stats
        t = type(ev)
        if t is Ping:
            st.pings_received += 1
            self.send_pong(ev.data)
        elif t is Pong:
            st.pongs_received += 1
        elif t is NotePreferred:
            if ev.preferred != self.preferred:
                self.preferred = ev.preferred
                st.home_clients += 1 if ev.preferred else -1
        elif t is ForwardPacket:
            if not self.is_mesh:
                raise ConnectionClosed("ForwardPacket without mesh key: insufficient permissions")
            server.route_forwarded(self, ev.src, ev.dst, ev.packet)
        elif t is WatchConns:
            if not self.is_mesh:
                raise ConnectionClosed("WatchConns without mesh key: insufficient permissions")
            server.add_watcher(self)
        elif t is ClosePeer:
            if not self.is_mesh:
                raise ConnectionClosed("ClosePeer without mesh key: insufficient permissions")
            server.close_key(ev.key)
        elif t is UnknownFrame:
            st.unknown_frames += 1
        else:
            st.unknown_frames += 1


def keepalive_delay(interval: float, jitter: float) -> float:
    # Clients drop a connection 120 s after the last frame; the jitter spreads keepalives of
    # many clients but never pushes one past `interval` (at most every 60 s by default).
    return interval - random.uniform(0.0, min(jitter, interval / 2)) if jitter > 0 else interval


class DerpServer:
    """Key tables, routing and watcher notifications for one relay process."""

    def __init__(
        self,
        private_key: bytes,
        *,
        stats: DerpStats | None = None,
        queue_depth: int = 32,
        clock: Callable[[], float] = trio.current_time,
    ):
        self.private_key = private_key
        self.public_key = proto.public_key_of(private_key)
        self.stats = stats or DerpStats()
        self.queue_depth = queue_depth
        self._clock = clock
        self._active: dict[bytes, Client] = {}  # key → the connection packets go to
        self._sets: dict[bytes, list[Client]] = {}  # key → all its connections, oldest first
        self._forwarders: dict[bytes, list[Forwarder]] = {}  # key → mesh peers that have it
        self._gone_subs: dict[bytes, set[Client]] = {}  # key → clients that received from it
        self._watchers: list[Client] = []
        self.closing = False
        self.pressure: Client | Forwarder | None = None  # a (nearly) full queue, set when enqueuing

    # -- lookups ---------------------------------------------------------------------------------
    def where(self, key: bytes) -> Client | Forwarder | None:
        """Where packets for `key` go: a local connection, a mesh forwarder, or nowhere."""
        c = self._active.get(key)
        if c is not None:
            return c
        if key in self._sets:
            return None
        fwd = self._forwarders.get(key)
        return fwd[0] if fwd else None

    def clients(self) -> list[Client]:
        return [c for conns in self._sets.values() for c in conns]

    def connections_for(self, key: bytes) -> list[Client]:
        return list(self._sets.get(key, ()))

    # -- registration ------------------------------------------------------------------------------
    def register(self, client: Client) -> None:
        key = client.key
        conns = self._sets.setdefault(key, [])
        conns.append(client)
        self._active[key] = client  # the newest connection wins
        st = self.stats
        st.clients_current += 1
        st.clients_total += 1
        if client.is_mesh:
            st.mesh_clients += 1
        if self._watchers:
            frame = proto.encode(PeerPresent(key, client.peer_ip or None, client.peer_port, client.flags))
            for w in self._watchers:
                if w is not client:
                    w.send_frame(frame)
                    st.peer_present_sent += 1

    def unregister(self, client: Client) -> None:
        key = client.key
        conns = self._sets.get(key)
        if conns is None or client not in conns:
            return
        conns.remove(client)
        st = self.stats
        st.clients_current -= 1
        if client.is_mesh:
            st.mesh_clients -= 1
        if client.preferred:
            client.preferred = False
            st.home_clients -= 1
        if client in self._watchers:
            self._watchers.remove(client)
            st.watchers -= 1
        queued = list(client.data) + list(client.disco)
        if queued:
            st.drop("gone_disconnected", sum(len(p) for _, p in queued), len(queued))
            client.data.clear()
            client.disco.clear()
        for k in client.peers_seen:
            subs = self._gone_subs.get(k)
            if subs is not None:
                subs.discard(client)
                if not subs:
                    del self._gone_subs[k]
        if conns:
            if self._active.get(key) is client:
                self._active[key] = conns[-1]
            return
        del self._sets[key]
        self._active.pop(key, None)
        if self._watchers:
            frame = proto.encode(PeerGone(key, PeerGoneReason.DISCONNECTED))
            for w in self._watchers:
                w.send_frame(frame)
                st.peer_gone_sent += 1
        if key not in self._forwarders:
            self._key_gone(key)

    def _make_active(self, client: Client) -> None:
        if client in self._sets.get(client.key, ()):
            self._active[client.key] = client

    def _subscribe_gone(self, key: bytes, client: Client) -> None:
        subs = self._gone_subs.get(key)
        if subs is None:
            subs = self._gone_subs[key] = set()
        subs.add(client)

    def _key_gone(self, key: bytes) -> None:
        """`key` left the region: tell everyone who received from it."""
        subs = self._gone_subs.pop(key, None)
        if not subs:
            return
        frame = proto.encode(PeerGone(key, PeerGoneReason.DISCONNECTED))
        for c in subs:
            c.peers_seen.discard(key)
            c.send_frame(frame)
            self.stats.peer_gone_sent += 1

    # -- routing (hot path) ------------------------------------------------------------------------
    def route(self, src: Client, dst: bytes, packet: bytes) -> None:
        st = self.stats
        st.packets_received += 1
        st.bytes_received += len(packet)
        c = self._active.get(dst)
        if c is not None:
            c.enqueue_packet(src.key, packet)
            return
        if dst in self._sets:
            reason = "dup_client"
        else:
            fwd = self._forwarders.get(dst)
            if fwd:
                st.packets_forwarded_out += 1
                st.bytes_forwarded_out += len(packet)
                try:
                    fwd[0].forward(src.key, dst, packet)
                except Exception:  # a broken mesh link must not take the sender down
                    log.debug("mesh forward failed", exc_info=True)
                return
            reason = "unknown_dest"
        st.drop(reason, len(packet))
        if len(packet) >= _DISCO_MIN and packet.startswith(DISCO_MAGIC) and src._allow_peer_gone(self._clock()):
            src.send_frame(proto.encode(PeerGone(dst, PeerGoneReason.NOT_HERE)))
            st.peer_gone_sent += 1

    def route_forwarded(self, mesh: Client, src: bytes, dst: bytes, packet: bytes) -> None:
        """A packet a mesh peer forwarded: local delivery only, never re-forwarded."""
        st = self.stats
        st.packets_forwarded_in += 1
        st.bytes_forwarded_in += len(packet)
        c = self._active.get(dst)
        if c is not None:
            c.enqueue_packet(src, packet)
            return
        st.drop("unknown_dest_on_fwd", len(packet))
        if len(packet) >= _DISCO_MIN and packet.startswith(DISCO_MAGIC) and mesh._allow_peer_gone(self._clock()):
            mesh.send_frame(proto.encode(PeerGone(dst, PeerGoneReason.NOT_HERE)))
            st.peer_gone_sent += 1

    # -- mesh hooks ----------------------------------------------------------------------------------
    def add_watcher(self, client: Client) -> None:
        if client.key == self.public_key or client in self._watchers:
            return  # our own mesh client looped back, or a repeat
        st = self.stats
        for key, c in self._active.items():
            client.send_frame(proto.encode(PeerPresent(key, c.peer_ip or None, c.peer_port, c.flags)))
            st.peer_present_sent += 1
        self._watchers.append(client)
        st.watchers += 1

    def add_forwarder(self, key: bytes, fwd: Forwarder) -> None:
        lst = self._forwarders.setdefault(key, [])
        if fwd not in lst:
            lst.append(fwd)  # the earliest registered stays preferred

    def remove_forwarder(self, key: bytes, fwd: Forwarder) -> None:
        lst = self._forwarders.get(key)
        if not lst or fwd not in lst:
            return
        lst.remove(fwd)
        if not lst:
            del self._forwarders[key]
            if key not in self._sets:
                self._key_gone(key)

    # -- administration --------------------------------------------------------------------------------
    def close_key(self, key: bytes) -> int:
        conns = list(self._sets.get(key, ()))
        for c in conns:
            c.close()
        return len(conns)

    async def keepalives(self, interval: float, jitter: float) -> None:
        """KeepAlive every client when its `next_keepalive` comes. One task for all: a task
        (and timer) per idle client would cost more than the rest of the client."""
        tick = min(1.0, interval / 4)
        st = self.stats
        while True:
            await trio.sleep(tick)
            now = self._clock()
            for conns in list(self._sets.values()):
                for c in conns:
                    if c.next_keepalive <= now:
                        c.next_keepalive = now + keepalive_delay(interval, jitter)
                        c.send_frame(_KEEPALIVE_FRAME)
                        st.keepalives_sent += 1

    def broadcast(self, frame: bytes) -> None:
        for c in self.clients():
            c.send_frame(frame)

    def restarting_frame(self, reconnect_in_ms: int, try_for_ms: int) -> bytes:
        return proto.encode(Restarting(reconnect_in_ms, try_for_ms))

    async def shutdown(self, grace: float, *, reconnect_in_ms: int = 1000, try_for_ms: int = 30000) -> None:
        """Tell every client we are restarting, give writers `grace` seconds to flush, close all."""
        self.closing = True
        clients = self.clients()
        if clients:
            frame = self.restarting_frame(reconnect_in_ms, try_for_ms)
            for c in clients:
                c.send_frame(frame)
                self.stats.restarting_sent += 1
            with trio.move_on_after(grace):
                while any(not c.flushed for c in clients if not c.closed):
                    await trio.sleep(0.01)
        for c in self.clients():
            c.close()


__all__ = ["DerpServer", "Client", "Forwarder", "ConnectionClosed", "RemoteProtocolError"]
