"""One client connection from accept to close: TLS, the HTTP front, then the DERP session.

`Sessions.handle_tcp` runs a connection: the TLS handshake, `HttpFront.serve` until the client
asks to upgrade, then the session: the server key, the client's ClientInfo, admission (mesh key,
or `Admission.verifier` when clients are verified), and the `Client`'s reader and writer (router.py)
until either ends.

Until a client is admitted it has done nothing but cost us, so each phase before that has a
total deadline (not a per-read one, which a peer sending a byte now and then never trips):
accept → first byte (``first_byte_timeout``), accept → a complete HTTP request head, TLS
handshake included (``upgrade_timeout``; later requests on a kept-alive connection get the same
from when we start waiting for them), and the upgrade → a verified ClientInfo
(``handshake_timeout``).

Every connection's task runs in a shielded cancel scope of its own, so that a shutdown can first
queue Restarting to every client (`DerpServer.shutdown`), let the writers flush for a moment, and
only then close the connections (`Sessions.cancel_all`). `Sessions.buffered` adds up the bytes
every connection holds, for the stats (``buffers``).
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import time
from typing import Any

import h11
import trio

from trioscale.shared.net.rawstream import RawStream, shared_buffer_bytes
from trioscale.shared.net.wsstream import WebSocketByteStream
from trioscale.shared.proto import derp as proto
from trioscale.shared.proto.derp import RemoteProtocolError

from .admission import Admission
from .http import RECV_SIZE, HttpFront
from .ratelog import RateLimitedLog
from .router import Client, ConnectionClosed, DerpServer, keepalive_delay

__all__ = ["Sessions", "FIRST_BYTE_TIMEOUT", "UPGRADE_TIMEOUT", "HANDSHAKE_TIMEOUT"]

#: defaults of the pre-admission deadlines (config derp.server.*_timeout); generous enough for a
#: client on a slow, lossy link, short enough that a trickle of bytes cannot hold a connection
FIRST_BYTE_TIMEOUT = 10.0
UPGRADE_TIMEOUT = 20.0
HANDSHAKE_TIMEOUT = 15.0
#: what a mesh peer's connection may read per turn of the scheduler: it carries the packets of
#: many of the peer's clients, so it gets the share of that many clients (RawStream reads on
#: without a checkpoint while the socket has data), not the share of one
MESH_RECV_SIZE = 8 * RECV_SIZE


class _Conn:
    """What one connection holds, for the buffer accounting."""

    __slots__ = ("stream", "http", "derp", "client")

    def __init__(self, stream: Any):
        self.stream = stream
        self.http: h11.Connection | None = None
        self.derp: proto.DerpServerConnection | None = None
        self.client: Client | None = None


class Sessions:
    """The relay's client connections: runs each (`handle_tcp`) and knows what they hold."""

    def __init__(
        self,
        server: DerpServer,
        http: HttpFront,
        *,
        log: logging.Logger,
        ssl_context: ssl.SSLContext,
        keepalive_interval: float,
        keepalive_jitter: float,
        write_timeout: float | None,
        first_byte_timeout: float,
        upgrade_timeout: float,
        handshake_timeout: float,
        mesh_key: bytes | None,
        admission: Admission | None,
    ):
        self.server = server
        self.stats = server.stats
        self.http = http
        self.log = log
        self.ssl_context = ssl_context
        self.keepalive_interval = keepalive_interval
        self.keepalive_jitter = keepalive_jitter
        self.write_timeout = write_timeout
        self.first_byte_timeout = first_byte_timeout
        self.upgrade_timeout = upgrade_timeout
        self.handshake_timeout = handshake_timeout
        self.mesh_key = mesh_key
        self.admission = admission
        self.refusals = RateLimitedLog(log)
        self._scopes: set[trio.CancelScope] = set()
        self._conns: set[_Conn] = set()

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
                addr = (str(peer[0]), int(peer[1]))
                upgrade = await self.http.serve(stream, addr, conn, deadline)
                if upgrade is None:
                    return
                kind, prefix, leftover, not_ideal = upgrade
                upgrade = None  # the session holds only what it needs of the request
                if kind == "websocket":
                    await self._websocket(stream, prefix, leftover, addr, not_ideal, scope, conn)
                else:
                    await self._derp_session(stream, leftover, prefix, addr, not_ideal, scope, conn)
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

    async def _websocket(self, stream: Any, switching: bytes, leftover: bytes, peer: tuple[str, int],
                         not_ideal: bool, scope: trio.CancelScope, state: _Conn) -> None:
        with trio.fail_after(self.handshake_timeout):
            await stream.send_all(switching)
        ws = WebSocketByteStream(stream, leftover)
        state.stream = ws
        await self._derp_session(ws, b"", b"", peer, not_ideal, scope, state)

    async def _derp_session(self, stream: Any, leftover: bytes, prefix: bytes, peer: tuple[str, int],
                            not_ideal: bool, scope: trio.CancelScope, state: _Conn) -> None:
        server = self.server
        stats = self.stats
        admission = self.admission
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
                is_mesh = (self.mesh_key is not None and info.mesh_key is not None
                           and hmac.compare_digest(info.mesh_key, self.mesh_key))
                node_id = None
                if not is_mesh and admission is not None:
                    found = await admission.verifier.lookup(info.key)
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
        if expires_at is not None and admission is not None:
            admission.watch_expiry(client, expires_at)
        try:
            client.send_frame(conn.accept())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_writer, client, nursery.cancel_scope)
                if self.keepalive_interval:  # sent by DerpServer.keepalives
                    client.next_keepalive = trio.current_time() + keepalive_delay(
                        self.keepalive_interval, self.keepalive_jitter)
                try:
                    await client.reader(conn, events[1:], MESH_RECV_SIZE if is_mesh else RECV_SIZE)
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

    def cancel_all(self) -> None:
        """Close every connection now (after `DerpServer.shutdown` let the writers flush)."""
        for scope in list(self._scopes):
            scope.cancel()


_ENDED = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ssl.SSLError, OSError,
          h11.ProtocolError, RemoteProtocolError, ConnectionClosed)


def _connection_ended(exc: BaseException) -> bool:
    """A peer that went away or misbehaved (also wrapped in a nursery's exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_connection_ended(e) for e in exc.exceptions)
    return isinstance(exc, _ENDED)
