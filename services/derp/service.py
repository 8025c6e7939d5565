"""The DERP relay service: TLS listener, HTTP front (h11), `/derp` upgrade, relay loop.

    async def serve(options, store, *, task_status=trio.TASK_STATUS_IGNORED, ...)

binds ``derp.server.listen_addr`` (TLS), registers itself in the store as a `DerpRelay`
(heartbeat every 10 s, removed on shutdown) and reports its `DerpService` when started (counters
in ``.stats``, the bound ``.address`` and ``.port``).

Every connection's task runs in a shielded cancel scope of its own, so that a shutdown (cancel
of `serve`) can first queue Restarting to every client, let the writers flush for a moment, and
only then close the connections.

Until a client is admitted it has done nothing but cost us, so each phase before that has a
total deadline (not a per-read one, which a peer sending a byte now and then never trips):
accept → first byte (``first_byte_timeout``), accept → a complete HTTP request head, TLS
handshake included (``upgrade_timeout``; later requests on a kept-alive connection get the same
from when we start waiting for them), and the upgrade → a verified ClientInfo
(``handshake_timeout``). `DerpService.buffered` adds up the bytes every connection holds, for
the stats (``buffers``).
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import h11
import trio

from trioscale.shared.net import tls as tlsutil
from trioscale.shared.model import DerpRelay, utcnow
from trioscale.shared.net.addr import join_host_port, split_host_port
from trioscale.shared.net.limits import ConnectionLimiter, standalone_limiter
from trioscale.shared.net.listen import accept_loop
from trioscale.shared.net.rawstream import RawStream, listen_socket, shared_buffer_bytes
from trioscale.shared.net.wsstream import WebSocketByteStream, accept_token
from trioscale.shared.proto import derp as proto
from trioscale.shared.proto.derp import RemoteProtocolError
from trioscale.shared.store.base import ChangesTrimmed

from .mesh import Mesh
from .options import DerpOptions
from .ratelog import RateLimitedLog
from .router import Client, ConnectionClosed, DerpServer, keepalive_delay
from .stats import DerpStats
from .verify import ClientVerifier

__all__ = ["serve", "DerpService"]

RECV_SIZE = 1 << 18
#: defaults of the pre-admission deadlines (config derp.server.*_timeout); generous enough for a
#: client on a slow, lossy link, short enough that a trickle of bytes cannot hold a connection
FIRST_BYTE_TIMEOUT = 10.0
UPGRADE_TIMEOUT = 20.0
HANDSHAKE_TIMEOUT = 15.0
_CHALLENGE_OK = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_WILDCARDS = {"", "0.0.0.0", "::", "*"}

log = logging.getLogger("trioscale.derp")


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


async def open_listener(host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False) -> socket.socket:
    """One listening TCP socket (non-blocking); ``::`` is dual-stack, ``0.0.0.0``/empty is IPv4
    only. `reuse_port` lets several relay processes share the port (SO_REUSEPORT)."""
    if host in ("", "*"):
        host = "0.0.0.0"
    if _ip_version(host) is None:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        host = sockaddr[0]
    family = socket.AF_INET6 if _ip_version(host) == 6 else socket.AF_INET
    return listen_socket(host, port, family, reuse_port=reuse_port, backlog=backlog)


class _Conn:
    """What one connection holds, for the buffer accounting."""

    __slots__ = ("stream", "http", "derp", "client")

    def __init__(self, stream: Any):
        self.stream = stream
        self.http: h11.Connection | None = None
        self.derp: proto.DerpServerConnection | None = None
        self.client: Client | None = None


class DerpService:
    """Everything one running relay needs; `serve()` builds one and runs it."""

    def __init__(
        self,
        store: Any,
        *,
        log: logging.Logger,
        listener_stats: Callable[[], dict[str, dict[str, int]]],
        private_key: bytes,
        ssl_context: ssl.SSLContext,
        keepalive_interval: float,
        keepalive_jitter: float,
        queue_depth: int,
        write_timeout: float | None,
        handshake_timeout: float,
        mesh_key: bytes | None,
        verify_clients: bool,
        first_byte_timeout: float = FIRST_BYTE_TIMEOUT,
        upgrade_timeout: float = UPGRADE_TIMEOUT,
    ):
        self.store = store
        self.log = log
        #: connection caps of every listener in this process, for the stats
        self.listener_stats = listener_stats
        self.server = DerpServer(private_key, stats=DerpStats(), queue_depth=queue_depth)
        self.stats = self.server.stats
        self.ssl_context = ssl_context
        self.keepalive_interval = keepalive_interval
        self.keepalive_jitter = keepalive_jitter
        self.write_timeout = write_timeout
        self.handshake_timeout = handshake_timeout
        self.first_byte_timeout = first_byte_timeout
        self.upgrade_timeout = upgrade_timeout
        self.mesh_key = mesh_key
        self.verifier = ClientVerifier(store) if verify_clients else None
        self._scopes: set[trio.CancelScope] = set()
        self._conns: set[_Conn] = set()
        self.refusals = RateLimitedLog(self.log)
        # connected clients by node expiry (Unix time); entries of clients gone or re-timed are
        # skipped when they come up
        self._expiries: list[tuple[float, int, Client]] = []
        self._expiry_seq = 0
        self._expiry_wake = trio.Event()
        # filled in by serve() once bound
        self.port: int = 0
        self.address: str = ""
        self.cert_name: str = ""
        self.relay: DerpRelay | None = None
        self.mesh: Mesh | None = None

    # -- connections ---------------------------------------------------------------------------------
    async def handle_tcp(self, sock: socket.socket, peer: Any) -> None:
        if self.server.closing:
            sock.close()
            return
        with trio.CancelScope(shield=True) as scope:
            self._scopes.add(scope)
            stream = RawStream(sock, self.ssl_context, server_side=True)
            conn = _Conn(stream)
            self._conns.add(conn)
            stats = self.stats
            stats.connections_current += 1
            try:
                stats.accepts += 1
                deadline = trio.current_time() + self.upgrade_timeout
                try:
                    with trio.fail_after(min(self.first_byte_timeout, self.upgrade_timeout)):
                        await stream.wait_readable()
                    with trio.fail_at(deadline):
                        await stream.do_handshake()
                except trio.TooSlowError:
                    stats.handshake_timeouts += 1
                    return
                except (trio.BrokenResourceError, ssl.SSLError, OSError):
                    stats.tls_errors += 1
                    return
                await self._http(stream, (str(peer[0]), int(peer[1])), scope, conn, deadline)
            except trio.TooSlowError:  # only pre-admission phases have deadlines that raise
                stats.handshake_timeouts += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                pass
            except (h11.ProtocolError, RemoteProtocolError, ConnectionClosed) as exc:
                self.log.debug("derp connection from %s closed: %s", peer, exc)
            except Exception as exc:
                if _connection_ended(exc):
                    self.log.debug("derp connection from %s ended: %r", peer, exc)
                else:
                    self.log.exception("derp connection handler failed")
            finally:
                self._scopes.discard(scope)
                self._conns.discard(conn)
                stats.connections_current -= 1
                stream.close()

    async def _http(self, stream: Any, peer: tuple[str, int], scope: trio.CancelScope, state: _Conn,
                    deadline: float) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        state.http = h
        while True:
            upgrade = None
            with trio.fail_at(deadline):
                upgrade = await self._request(h, stream, peer)
            if upgrade is None:
                if h.our_state is h11.DONE and h.their_state is h11.DONE:
                    h.start_next_cycle()
                    deadline = trio.current_time() + self.upgrade_timeout
                    continue
                return
            if upgrade is False:
                return
            # the HTTP phase is over: let its parser and request go before the session starts
            kind, prefix, leftover, not_ideal = upgrade
            state.http = h = upgrade = None  # type: ignore[assignment]
            if kind == "websocket":
                await self._websocket(stream, prefix, leftover, peer, not_ideal, scope, state)
            else:
                await self._derp_session(stream, leftover, prefix, peer, not_ideal, scope, state)
            return

    async def _request(self, h: h11.Connection, stream: Any, peer: tuple[str, int]) -> Any:
        """Read and answer one request. Returns None when it was answered (and read to its
        end), False to close, or ``(kind, prefix, leftover, not_ideal)`` to upgrade: kind is
        "derp" or "websocket", prefix the ``101`` to send (b"" for a fast start)."""
        req = await self._next_event(h, stream)
        if req is None or type(req) is h11.ConnectionClosed:
            return False
        if type(req) is not h11.Request:
            return False
        self.stats.http_requests += 1
        path = req.target.split(b"?", 1)[0]
        headers = {k: v for k, v in req.headers}  # h11 lowercases names
        if path == b"/derp":
            upgrade = headers.get(b"upgrade", b"").strip().lower()
            if upgrade == b"websocket":
                protos = [p.strip().lower() for p in headers.get(b"sec-websocket-protocol", b"").split(b",")]
                if b"derp" in protos and b"sec-websocket-key" in headers:
                    key = headers[b"sec-websocket-key"].strip()
                    if not await self._request_end(h, stream):
                        return False
                    switching = h.send(h11.InformationalResponse(
                        status_code=101, reason=b"Switching Protocols",
                        headers=[(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                                 (b"Sec-WebSocket-Accept", accept_token(key)), (b"Sec-WebSocket-Protocol", b"derp")],
                    ))
                    return ("websocket", switching, h.trailing_data[0], b"ideal-node" in headers)
            if upgrade in (b"derp", b"websocket"):
                if not await self._request_end(h, stream):
                    return False
                fast = headers.get(b"derp-fast-start", b"").strip() == b"1"
                # fast start: the client knows our key and sends ClientInfo at once; no HTTP answer
                prefix = b"" if fast else h.send(h11.InformationalResponse(
                    status_code=101, reason=b"Switching Protocols",
                    headers=proto.switching_protocols_headers(self.server.public_key),
                ))
                return ("derp", prefix, h.trailing_data[0], b"ideal-node" in headers)
            await self._respond(
                h,
                stream,
                req,
                426,
                b"DERP requires connection upgrade\n",
                [(b"content-type", b"text/plain; charset=utf-8")],
            )
        elif path in (b"/derp/probe", b"/derp/latency-check"):
            if req.method in (b"GET", b"HEAD"):
                await self._respond(h, stream, req, 200, b"", [(b"access-control-allow-origin", b"*")])
            else:
                await self._respond(h, stream, req, 405, b"bogus probe method\n", [])
        elif path == b"/generate_204":
            extra = [(b"cache-control", b"no-cache, no-store, must-revalidate, no-transform, max-age=0")]
            challenge = headers.get(b"x-tailscale-challenge")
            if challenge is not None and len(challenge) <= 64 and _CHALLENGE_OK.issuperset(challenge):
                extra.append((b"x-tailscale-response", b"response " + challenge))
            await self._respond(h, stream, req, 204, b"", extra)
        elif path == b"/health":
            await self._respond(h, stream, req, 200, b"ok\n", [(b"content-type", b"text/plain")])
        elif path == b"/robots.txt":
            await self._respond(h, stream, req, 200, b"User-agent: *\nDisallow: /\n", [(b"content-type", b"text/plain")])
        elif path == b"/debug/stats" and _is_loopback(peer[0]):
            body = json.dumps(self.stats_dict()).encode()
            await self._respond(h, stream, req, 200, body, [(b"content-type", b"application/json")])
        elif path == b"/":
            await self._respond(h, stream, req, 200, b"trioscale DERP relay\n", [(b"content-type", b"text/plain")])
        else:
            await self._respond(h, stream, req, 404, b"not found\n", [(b"content-type", b"text/plain")])
        # finish reading the request, then maybe serve another on this connection
        while True:
            ev = await self._next_event(h, stream)
            if ev is None or type(ev) in (h11.EndOfMessage, h11.ConnectionClosed):
                break
        return None

    async def _request_end(self, h: h11.Connection, stream: trio.abc.Stream) -> bool:
        """Read an upgrade request to its end (h11 switches protocols only after it); False if
        the connection closed first."""
        while True:
            ev = await self._next_event(h, stream)
            if type(ev) is h11.EndOfMessage:
                return True
            if ev is None or type(ev) is h11.ConnectionClosed:
                return False

    async def _next_event(self, h: h11.Connection, stream: trio.abc.Stream) -> Any:
        while True:
            ev = h.next_event()
            if ev is h11.NEED_DATA:
                data = await stream.receive_some(RECV_SIZE)
                h.receive_data(data)
                continue
            if ev is h11.PAUSED:
                return None
            return ev

    async def _respond(self, h, stream, req, status: int, body: bytes, headers: list) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        out = h.send(h11.Response(status_code=status, headers=headers))
        if body and req.method != b"HEAD":
            out += h.send(h11.Data(data=body))
        out += h.send(h11.EndOfMessage())
        await stream.send_all(out)

    async def _websocket(self, stream, switching: bytes, leftover: bytes, peer, not_ideal: bool, scope, state) -> None:
        with trio.fail_after(self.handshake_timeout):
            await stream.send_all(switching)
        ws = WebSocketByteStream(stream, leftover)
        state.stream = ws
        await self._derp_session(ws, b"", b"", peer, not_ideal, scope, state)

    async def _derp_session(self, stream, leftover: bytes, prefix: bytes, peer, not_ideal: bool, scope, state) -> None:
        server = self.server
        stats = self.stats
        conn = proto.DerpServerConnection(server.private_key)
        state.derp = conn
        events: list = []
        expires_at = None
        try:
            with trio.fail_after(self.handshake_timeout):
                await stream.send_all(prefix + conn.server_key_frame())
                if leftover:
                    events = conn.receive_data(leftover)
                    leftover = b""
                while not events:
                    data = await stream.receive_some(RECV_SIZE)
                    if not data:
                        return
                    events = conn.receive_data(data)
                    data = b""  # (the frame is held by `events` or the decoder)
                info = events[0]
                if type(info) is not proto.ClientInfo:
                    raise RemoteProtocolError("expected ClientInfo")
                is_mesh = self.mesh_key is not None and info.mesh_key is not None and _consteq(info.mesh_key, self.mesh_key)
                node_id = None
                if not is_mesh and self.verifier is not None:
                    found = await self.verifier.lookup(info.key)
                    if found is None:
                        stats.clients_rejected += 1
                        self.refusals.info("derp: refused unknown node key %s from %s", info.key.hex()[:16], peer[0])
                        return
                    node_id, expires_at = found
                    if expires_at is not None and expires_at <= time.time():
                        stats.clients_rejected += 1
                        stats.clients_expired += 1
                        self.refusals.info("derp: refused expired node %s (key %s) from %s", node_id,
                                           info.key.hex()[:16], peer[0])
                        return
        except RemoteProtocolError as exc:
            # a peer that cannot speak DERP (or is probing our parser): one line, no traceback
            stats.protocol_errors += 1
            self.refusals.warning("derp: handshake from %s refused: %s", peer[0], exc)
            return
        client = Client(server, info.key, stream, info=info, peer=peer, is_mesh=is_mesh, not_ideal=not_ideal, node_id=node_id)
        client.scope = scope
        state.client = client
        server.register(client)
        if expires_at is not None:
            self._watch_expiry(client, expires_at)
        try:
            client.send_frame(conn.accept())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_writer, client, nursery.cancel_scope)
                if self.keepalive_interval:  # sent by DerpServer.keepalives
                    client.next_keepalive = trio.current_time() + keepalive_delay(
                        self.keepalive_interval, self.keepalive_jitter)
                try:
                    await client.reader(conn, events[1:], RECV_SIZE)
                except RemoteProtocolError as exc:
                    stats.protocol_errors += 1
                    self.log.debug("derp client %s protocol error: %s", info.key.hex()[:16], exc)
                except ConnectionClosed as exc:
                    self.log.debug("derp client %s closed: %s", info.key.hex()[:16], exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
                    self.log.debug("derp client %s connection lost: %r", info.key.hex()[:16], exc)
                nursery.cancel_scope.cancel()
        finally:
            server.unregister(client)

    async def _run_writer(self, client: Client, conn_scope: trio.CancelScope) -> None:
        try:
            await client.writer(self.write_timeout)
        except ConnectionClosed:
            pass
        finally:
            conn_scope.cancel()

    # -- store integration -------------------------------------------------------------------------
    async def follow_changes(self) -> None:
        """Keep the admission cache honest and drop deleted nodes' connections."""
        store = self.store
        first = True
        while True:
            try:
                async with store.subscribe() as changes:
                    if self.verifier is not None:
                        self.verifier.clear()  # events before this subscription are not replayed
                        if not first:  # a node may have been deleted or expired in the gap
                            await self._recheck_clients()
                    first = False
                    async for change in changes:
                        await self._on_change(change)
            except trio.Cancelled:
                raise
            except ChangesTrimmed as exc:
                # missed changes: resubscribing from the newest seq clears the admission cache
                self.log.info("derp: %s", exc)
                continue
            except Exception:
                self.log.warning("derp: change subscription failed; retrying", exc_info=True)
                await trio.sleep(1.0)

    async def _on_change(self, change: Any) -> None:
        verifier = self.verifier
        kind = change.kind
        data = change.data or {}
        if kind == "node.created":
            if verifier is not None:
                verifier.evict_unknown()
            return
        if kind not in ("node.deleted", "node.updated"):
            return
        node_id = data.get("id")
        if verifier is not None and node_id is not None:
            verifier.evict_node(node_id)
        if verifier is None or node_id is None:
            return
        affected = [c for c in self.server.clients() if c.node_id == node_id]
        if kind == "node.deleted":
            for c in affected:
                self.log.info("derp: closing connection of deleted node %s", node_id)
                c.close()
            return
        fields = data.get("fields")
        if fields is not None and "node_key" not in fields and "expiry" not in fields:
            return
        for c in affected:
            try:
                node = await self.store.get_node_by_node_key(c.key)
            except Exception:
                self.log.warning("derp: store lookup failed", exc_info=True)
                continue
            if node is None or node.id != node_id:
                c.close()
                continue
            expiry = getattr(node, "expiry", None)
            self._watch_expiry(c, expiry.timestamp() if expiry is not None else None)

    async def _recheck_clients(self) -> None:
        """After missed changes: look every connected node up again (deleted, re-keyed, expiry)."""
        for c in [c for c in self.server.clients() if c.node_id is not None]:
            try:
                node = await self.store.get_node_by_node_key(c.key)
            except Exception:
                self.log.warning("derp: store lookup failed", exc_info=True)
                return
            if node is None or node.id != c.node_id:
                self.log.info("derp: closing connection of node %s (gone or re-keyed)", c.node_id)
                c.close()
                continue
            expiry = getattr(node, "expiry", None)
            expires_at = expiry.timestamp() if expiry is not None else None
            if expires_at != c.expires_at:
                self._watch_expiry(c, expires_at)

    # -- node expiry -----------------------------------------------------------------------------------
    def _watch_expiry(self, client: Client, expires_at: float | None) -> None:
        """Close `client` when its node expires (now, if it already has)."""
        client.expires_at = expires_at
        if expires_at is None:
            return
        self._expiry_seq += 1
        heapq.heappush(self._expiries, (expires_at, self._expiry_seq, client))
        if len(self._expiries) > 2 * self.stats.clients_current + 1024:
            # entries of closed or re-timed clients wait for their (maybe months away) time:
            # rebuild from the live ones so that reconnecting clients cannot grow the heap
            live = [(c.expires_at, i, c) for i, c in enumerate(self.server.clients()) if c.expires_at is not None]
            heapq.heapify(live)
            self._expiries[:] = live
            self._expiry_seq = len(live)
        if self._expiries[0][2] is client:
            self._expiry_wake.set()

    async def expire_clients(self) -> None:
        """Close connections of nodes whose expiry has come (a timer for the nearest)."""
        heap = self._expiries
        while True:
            now = time.time()
            while heap and heap[0][0] <= now:
                at, _, client = heapq.heappop(heap)
                if client.expires_at != at or client.closed or client.scope is None:
                    continue  # re-timed since, or gone
                if client not in self.server.connections_for(client.key):
                    continue
                self.stats.clients_expired += 1
                self.log.info("derp: closing connection of expired node %s", client.node_id)
                client.close()
            self._expiry_wake = trio.Event()
            # the wall clock may jump: look again at least every minute
            delay = min(60.0, heap[0][0] - now) if heap else 60.0
            with trio.move_on_after(max(0.0, delay)):
                await self._expiry_wake.wait()

    def buffered(self) -> dict[str, int]:
        """Bytes held for connections right now, by kind (computed when asked, off the hot path)."""
        streams = http = handshake = queues = 0
        for c in self._conns:
            stream = c.stream
            if hasattr(stream, "buffered"):
                streams += stream.buffered()
            if c.http is not None:
                http += len(c.http.trailing_data[0])
            if c.derp is not None:
                handshake += c.derp.buffered
            if c.client is not None:
                queues += c.client.buffered()
        shared = shared_buffer_bytes()
        return {
            "connections": len(self._conns),
            "read_shared": shared,
            "streams": streams,
            "http": http,
            "frames": handshake,
            "send_queues": queues,
            "total": shared + streams + http + handshake + queues,
        }

    @property
    def addresses(self) -> dict[str, str]:
        return {"derp": self.address}

    def stats_dict(self) -> dict[str, Any]:
        d = self.stats.as_dict()
        d["buffers"] = self.buffered()
        d["listeners"] = self.listener_stats()
        if self.verifier is not None:
            d["verify_cache"] = {"size": len(self.verifier), "hits": self.verifier.hits, "misses": self.verifier.misses}
        return d

    async def close_all(self, grace: float) -> None:
        await self.server.shutdown(grace)
        for scope in list(self._scopes):
            scope.cancel()


_ENDED = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ssl.SSLError, OSError,
          h11.ProtocolError, RemoteProtocolError, ConnectionClosed)


def _connection_ended(exc: BaseException) -> bool:
    """A peer that went away or misbehaved (also wrapped in a nursery's exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_connection_ended(e) for e in exc.exceptions)
    return isinstance(exc, _ENDED)


def _consteq(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


def _is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _parse_mesh_key(value: Any) -> bytes | None:
    if value in (None, ""):
        return None
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        return bytes(value)
    text = str(value).strip()
    if len(text) != 64:
        raise ValueError("derp mesh key must be 64 hex characters")
    return bytes.fromhex(text)


def _load_tls(
    cert_path: Path | None, key_path: Path | None, data_dir: Path, names: list[str]
) -> tuple[ssl.SSLContext, str]:
    """SSLContext and the DERP map CertName ("sha256-raw:<hex>" for our self-signed cert)."""
    if cert_path and key_path:
        return _no_tickets(tlsutil.server_context(cert_path, key_path)), ""
    cert_path = Path(data_dir) / "derp_tls_cert.pem"
    key_path = Path(data_dir) / "derp_tls_key.pem"
    tlsutil.ensure_self_signed(cert_path, key_path, names)
    ctx = _no_tickets(tlsutil.server_context(cert_path, key_path))
    return ctx, "sha256-raw:" + tlsutil.cert_sha256(cert_path.read_bytes())


def _no_tickets(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """DERP clients keep one long connection and do not resume TLS sessions: session tickets
    would only cost every handshake (anyone's) two ticket encryptions."""
    try:
        ctx.num_tickets = 0
    except (AttributeError, ValueError):
        pass
    return ctx


def _load_private_key(path: Path) -> bytes:
    from trioscale.shared.proto import keys

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return keys.load_or_create_private_key(path)


async def serve(
    options: DerpOptions,
    store: Any,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    limiter: ConnectionLimiter | None = None,
    stun_port: int | None = None,
    listener_stats: Callable[[], dict[str, dict[str, int]]] | None = None,
    keepalive_interval: float = proto.KEEPALIVE_INTERVAL,
    keepalive_jitter: float = 5.0,
    queue_depth: int = 32,
    write_timeout: float | None = 2.0,
    handshake_timeout: float | None = None,  # default: options.handshake_timeout
    first_byte_timeout: float | None = None,  # default: options.first_byte_timeout
    upgrade_timeout: float | None = None,  # default: options.upgrade_timeout
    heartbeat_interval: float | None = None,  # default: options.heartbeat_interval
    shutdown_grace: float = 1.0,
    reuse_port: bool | None = None,
) -> None:
    """Run the DERP relay until cancelled (see the module docstring).

    `limiter` caps the listener (default: a listener of its own); `stun_port` is the port of the
    STUN responder in this process, published in the DERP map (default: the configured one);
    `listener_stats` gives the caps of every listener in the process for the debug stats
    (default: this listener's). `reuse_port` (default: ``options.reuse_port``) binds with
    SO_REUSEPORT so that several relay processes of one host share the port; give each its own
    ``private_key_path`` and a common ``mesh_key`` so that they mesh like the relays of a region."""
    host, port = options.listen_host, options.listen_port
    data_dir = options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    private_key = await trio.to_thread.run_sync(_load_private_key, options.private_key_path)
    publish_host = options.hostname or (host if host not in _WILDCARDS else socket.gethostname())
    names = [publish_host, "localhost", "127.0.0.1", "::1"]
    if host not in _WILDCARDS:
        names.append(host)
    for extra in (options.ipv4, options.ipv6):
        if extra and _ip_version(extra):
            names.append(extra)
    ssl_context, cert_name = await trio.to_thread.run_sync(
        _load_tls, options.tls_cert_path, options.tls_key_path, data_dir, names)
    if limiter is None:
        limiter = standalone_limiter("derp")
    if listener_stats is None:
        own = limiter

        def listener_stats() -> dict[str, dict[str, int]]:
            return {own.name: own.stats()}

    svc = DerpService(
        store,
        log=log,
        listener_stats=listener_stats,
        private_key=private_key,
        ssl_context=ssl_context,
        keepalive_interval=keepalive_interval,
        keepalive_jitter=keepalive_jitter,
        queue_depth=queue_depth,
        write_timeout=write_timeout,
        handshake_timeout=_seconds(handshake_timeout, options.handshake_timeout, HANDSHAKE_TIMEOUT),
        first_byte_timeout=_seconds(first_byte_timeout, options.first_byte_timeout, FIRST_BYTE_TIMEOUT),
        upgrade_timeout=_seconds(upgrade_timeout, options.upgrade_timeout, UPGRADE_TIMEOUT),
        mesh_key=_parse_mesh_key(options.mesh_key),
        verify_clients=options.verify_clients,
    )
    if reuse_port is None:
        reuse_port = options.reuse_port
    listener = await open_listener(host, port, reuse_port=reuse_port)
    bound_host, bound_port = listener.getsockname()[:2]
    address = join_host_port(host or bound_host, bound_port)
    svc.port = bound_port
    svc.address = address
    svc.cert_name = cert_name
    svc.log.info("DERP relay listening on %s (TLS), server key %s", address, svc.server.public_key.hex())

    ipv4 = options.ipv4 or (publish_host if _ip_version(publish_host) == 4 else "")
    ipv6 = options.ipv6 or (publish_host if _ip_version(publish_host) == 6 else "")
    region_id = options.region_id
    name = f"{region_id}-{publish_host}-{bound_port}"
    if reuse_port:  # several processes share host:port: tell their rows apart by server key
        name += "-" + svc.server.public_key.hex()[:8]
    relay = DerpRelay(
        region_id=region_id,
        name=name,
        host=publish_host,
        region_code=options.region_code,
        region_name=options.region_name,
        ipv4=ipv4,
        ipv6=ipv6,
        derp_port=bound_port,
        # a configured port 0 is picked at bind time by a STUN responder elsewhere: publish the usual one
        stun_port=stun_port or options.stun_port or 3478,
        cert_name=cert_name,
        insecure_for_tests=bool(options.insecure_for_tests),
    )
    svc.relay = relay

    async with trio.open_nursery() as nursery:
        try:
            if svc.keepalive_interval:
                nursery.start_soon(svc.server.keepalives, svc.keepalive_interval, svc.keepalive_jitter)
            nursery.start_soon(partial(accept_loop, listener, svc.handle_tcp, nursery, limiter=limiter, log=svc.log))
            if svc.verifier is not None:
                nursery.start_soon(svc.follow_changes)
                nursery.start_soon(svc.expire_clients)
            await _upsert_relay(svc, relay)
            if heartbeat_interval is None:
                heartbeat_interval = options.heartbeat_interval
            nursery.start_soon(_heartbeat, svc, relay, heartbeat_interval)
            if svc.mesh_key is not None:
                svc.mesh = Mesh(
                    svc.server,
                    svc.mesh_key,
                    own=relay,
                    store=store,
                    relay_timeout=_relay_timeout(options.relay_timeout, heartbeat_interval),
                    resync_interval=max(1.0, min(heartbeat_interval, 10.0)),
                )
                await nursery.start(svc.mesh.run)
            task_status.started(svc)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if svc.mesh is not None:
                    svc.mesh.close()
                await svc.close_all(shutdown_grace)
                with trio.move_on_after(2.0):
                    try:
                        await store.delete_relay(relay.region_id, relay.name)
                    except Exception:
                        svc.log.warning("derp: could not delete relay row", exc_info=True)
                svc.log.info("DERP relay on %s stopped", address)


def _seconds(explicit: float | None, configured: float, default: float) -> float:
    """A deadline in seconds: the explicit argument, else the configured one (0: `default`)."""
    if explicit is not None:
        return float(explicit)
    return configured if configured > 0 else default


def _relay_timeout(configured: float, heartbeat_interval: float) -> float:
    """Rows older than this are dead relays (``derp.relay_timeout``, else 3 heartbeats + 5 s)."""
    return configured if configured > 0 else 3 * heartbeat_interval + 5.0


async def _upsert_relay(svc: DerpService, relay: DerpRelay) -> None:
    try:
        await svc.store.upsert_relay(relay)
    except Exception:
        svc.log.warning("derp: relay heartbeat to the store failed", exc_info=True)


async def _heartbeat(svc: DerpService, relay: DerpRelay, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        relay = replace(relay, heartbeat_at=utcnow())
        svc.relay = relay
        await _upsert_relay(svc, relay)
