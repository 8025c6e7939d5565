"""The control listener: HTTP/1.1 (h11) → ``/ts2021`` upgrade → Noise → HTTP/2 (h2), as a Trio adapter.

ASGI servers cannot hand an upgraded connection over, so this module is its own small server.  The
protocol work is sans-IO: ``h11`` for HTTP/1.1, and :mod:`trioscale.shared.proto.control` for the
upgrade and the HTTP/2-over-Noise connection (its events, flow control, body limits and deadlines).
This module moves bytes, runs handler tasks, holds the send lock and arms the timers.

Public API
----------

``await serve_control(listeners_or_addr, server_private_key, noise_handler, http_handler=None, *,
config=None, task_status=trio.TASK_STATUS_IGNORED)``

* ``listeners_or_addr``: a list of Trio listeners (or one), a ``(host, port)`` tuple or a ``"host:port"``
  string (``port`` may be 0).  Calls ``task_status.started("host:port")`` with the first bound address
  (``[v6]:port`` for IPv6), then serves until cancelled.  Every connection runs in its own task; a bad
  connection is closed (logged at debug) and never affects the listener.
* ``server_private_key``: the 32-byte Noise static private key (see ``keys.load_or_create_private_key``).
* ``http_handler(method, path, headers, body) -> (status, headers, body)`` (async) serves every plain
  HTTP/1.1 request other than ``/key`` and ``/ts2021``: ``path`` is the request target including any
  query string, ``headers`` a ``dict`` with lower-case names (repeated headers joined by ``", "``), the
  returned headers a list of ``(name, value)`` pairs or a dict, the body ``bytes`` (or ``str``, sent as
  UTF-8).  ``None`` → everything else is 404.  An exception gives a 500.
* ``noise_handler(request: ControlRequest, response: ControlResponse)`` (async) serves each HTTP/2
  request made inside the Noise channel, in its own task, once the whole request body has arrived.
  ``request.machine_key`` is the peer identity authenticated by the handshake.  The handler answers
  with ``await response.send(status, body, headers)`` or streams with ``start`` / ``write`` / ``end``.
  ``write`` waits for HTTP/2 flow control.  If the client resets the stream (RST_STREAM, e.g. CANCEL)
  the handler task is cancelled and later writes raise :class:`StreamGone`; when the connection
  closes all its handlers are cancelled.  A handler that raises gets a 500 if nothing was sent yet
  (and the error is logged); a handler that returns without finishing its response has it ended.
* ``config``: a :class:`TransportConfig` (limits and timeouts).
* ``tls``: a :class:`~trioscale.shared.net.tls.TlsAcceptor` to serve HTTPS (ALPN ``http/1.1``: the
  client's ts2021 upgrade over TLS offers no ALPN, and nothing here speaks plain HTTP/2); the
  handshake shares the first-byte deadline. ``None``: plain HTTP.

Limits (see :class:`TransportConfig`): every phase before a request is served has a total deadline
(first byte, the HTTP/1.1 request, the HTTP/2 preface, the first HTTP/2 request, each request's
body); request bodies are bounded per request, per connection and per listener, and flow-control
credit is returned only for body bytes handed to a handler or thrown away; a connection gets a few
concurrent streams until a handler calls :meth:`ControlResponse.mark_registered`. The listener's
accounting is a :class:`TransportStats` (``serve_control(..., stats=)``), also served as JSON at
``GET /debug/stats`` to loopback peers.

Plain HTTP served here: ``GET /key?v=<capver>`` → ``{"legacyPublicKey": "mkey:00…", "publicKey":
"mkey:<hex>"}``; a missing ``v`` or one below ``config.min_capability_version`` (113) is refused with
400 and a text message (the Tailscale client then reports the status and body and retries later).
``/ts2021`` with ``Upgrade: tailscale-control-protocol`` and ``X-Tailscale-Handshake`` → ``101``, the
Noise response, the early payload (``nodeKeyChallenge``) and the HTTP/2 server preface, in that order and
without waiting for the client.  Keep-alive is honoured for plain requests, as is ``Connection: close``.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import trio

from trioscale.shared.net.addr import format_sockaddr, split_host_port
from trioscale.shared.net.limits import DEFAULT_CAPS, ConnectionLimiter
from trioscale.shared.net.listen import listener_sockets, serve_stream_sockets
from trioscale.shared.net.rawstream import RawStream, close_at_once
from trioscale.shared.net.requestid import begin_request
from trioscale.shared.net.tls import TlsAcceptor
from trioscale.shared.net.wsstream import WebSocketByteStream, accept_token
from trioscale.shared.proto import control, keys, noise
from trioscale.shared.proto.control import (
    UPGRADE_PROTOCOL,
    ConnectionTerminated,
    ControlProtocolError,
    RequestReceived,
    StreamGone,
    StreamReset,
    StreamState,
    TransportConfig,
    TransportStats,
    WindowOpened,
    headers_dict,
)

__all__ = [
    "ControlRequest",
    "ControlResponse",
    "StreamGone",
    "TransportConfig",
    "TransportStats",
    "NoiseHandler",
    "HttpHandler",
    "serve_control",
    "UPGRADE_PROTOCOL",
]

log = logging.getLogger("trioscale.coord.transport")

_RECV_SIZE = 65536
#: after a read of nothing but window credits, while the client's windows still leave CREDIT_ROOM
#: bytes to send, the session waits this long before reading again. tailscaled's HTTP/2 client
#: credits every 4 KiB it reads, one record each (about 750,000 while 5,000 nodes join a full mesh,
#: each a wake-up, a read and a decryption); paused, one read takes all that came meanwhile. A
#: request sent right after credits waits at most this long.
CREDIT_READ_PAUSE = 0.02
CREDIT_ROOM = 1 << 20


@dataclass(frozen=True)
class ControlRequest:
    """One complete HTTP/2 request received inside the Noise channel."""

    machine_key: bytes  #: client machine public key, authenticated by the Noise handshake
    protocol_version: int  #: capability version from the Noise initiation
    method: str
    path: str  #: ``:path`` as sent (may include a query string)
    headers: dict[str, str]  #: regular headers, lower-case names, repeated ones joined with ", "
    body: bytes
    stream_id: int = 0
    #: private half of the connection's early-payload ``nodeKeyChallenge`` (None if none was sent)
    challenge_private_key: bytes | None = field(default=None, repr=False)

    def release_body(self) -> None:
        """Drop the body once it is parsed: a map stream's request lives as long as the stream
        (hours), and its body (up to ``max_request_body``) need not."""
        object.__setattr__(self, "body", b"")
    #: the TCP peer, ``host:port`` (``?`` if unknown): registration caps pending logins per source
    peer: str = ""


NoiseHandler = Callable[[ControlRequest, "ControlResponse"], Awaitable[None]]
HttpHandler = Callable[
    [str, str, dict[str, str], bytes],
    Awaitable[tuple[int, Sequence[tuple[str, str]] | Mapping[str, str], bytes | str]],
]


# --- addresses -----------------------------------------------------------------------------------


def _parse_addr(addr: str | tuple[str | None, int]) -> tuple[str | None, int]:
    if isinstance(addr, tuple):
        return addr[0] or None, int(addr[1])
    host, port = split_host_port(addr)
    return host or None, port


async def _open_listeners(listeners_or_addr: Any) -> list[socket.socket | trio.abc.Listener[Any]]:
    """Listening stdlib sockets (served under the connection caps); a listener that is not a
    socket (tests' in-memory ones) is passed through."""
    if isinstance(listeners_or_addr, (str, tuple)):
        host, port = _parse_addr(listeners_or_addr)
        return list(listener_sockets(await trio.open_tcp_listeners(port, host=host)))
    items = [listeners_or_addr] if isinstance(listeners_or_addr, trio.abc.Listener) else list(listeners_or_addr)
    return [listener_sockets([lst])[0] if isinstance(lst, trio.SocketListener) else lst for lst in items]


def _listener_address(listener: Any) -> str:
    if isinstance(listener, socket.socket):
        return format_sockaddr(listener.getsockname())
    sock = getattr(listener, "socket", None)
    if sock is not None:
        return format_sockaddr(sock.getsockname())
    return repr(listener)


async def serve_control(
    listeners_or_addr: Any,
    server_private_key: bytes,
    noise_handler: NoiseHandler,
    http_handler: HttpHandler | None = None,
    *,
    config: TransportConfig | None = None,
    stats: TransportStats | None = None,
    limiter: ConnectionLimiter | None = None,
    tls: TlsAcceptor | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control protocol on ``listeners_or_addr`` until cancelled (see the module docstring).
    ``stats``: a :class:`TransportStats` the listener keeps current (pass one to read it)."""
    cfg = config or TransportConfig()
    server = _ControlServer(server_private_key, noise_handler, http_handler, cfg, stats or TransportStats())
    server.tls = tls
    listeners = await _open_listeners(listeners_or_addr)
    addresses = [_listener_address(lst) for lst in listeners]
    for a in addresses:
        log.info("control listener on %s", a)
    async with trio.open_nursery() as nursery:
        # `limiter` caps concurrent connections (default: the control listener's default caps)
        if limiter is None:
            caps = DEFAULT_CAPS["control"]
            limiter = ConnectionLimiter("control", caps.max_connections, caps.max_connections_per_source)
        socks = [lst for lst in listeners if isinstance(lst, socket.socket)]
        others = [lst for lst in listeners if not isinstance(lst, socket.socket)]
        # plain TCP on the fast-socket layer: its send_nowait carries ControlResponse.write_nowait
        await nursery.start(partial(serve_stream_sockets, server.handle_connection, socks, limiter=limiter, log=log,
                                    make_stream=RawStream))
        if others:
            await nursery.start(trio.serve_listeners, server.handle_connection, others)
        task_status.started(addresses[0] if addresses else "")


# --- per-connection ------------------------------------------------------------------------------


class _Close(Exception):
    """Internal: stop serving this connection (reason in args, logged at debug)."""


class _ControlServer:
    def __init__(
        self,
        server_private_key: bytes,
        noise_handler: NoiseHandler,
        http_handler: HttpHandler | None,
        cfg: TransportConfig,
        stats: TransportStats,
    ) -> None:
        self.stats = stats
        self.private_key = bytes(server_private_key)
        self.public_key = keys.public_key(self.private_key)
        self.noise_handler = noise_handler
        self.http_handler = http_handler
        self.cfg = cfg
        self.key_body = control.key_body(self.public_key)
        self.tls: TlsAcceptor | None = None

    async def _start_tls(self, plain: trio.abc.Stream) -> trio.abc.Stream:
        sock = getattr(plain, "socket", None)
        if not isinstance(sock, socket.socket) or self.tls is None:
            raise _Close("TLS needs the connection's socket")
        with trio.fail_after(self.cfg.first_byte_timeout):
            ctx = await self.tls.context_for(sock)
            if ctx is None:
                raise _Close("no certificate to serve this connection")
            stream = RawStream(sock, ctx)
            await stream.do_handshake()
        return stream

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        peer = "?"
        loopback = False
        try:
            sock = getattr(stream, "socket", None)
            if sock is not None:
                sockaddr = sock.getpeername()
                peer = format_sockaddr(sockaddr)
                loopback = _is_loopback(sockaddr[0])
        except OSError:
            pass
        self.stats.connections += 1
        try:
            if self.tls is not None:
                stream = await self._start_tls(stream)
            conn = _Http1Connection(self, stream, peer)
            conn.loopback = loopback
            await conn.run()
        except _Close as exc:
            log.debug("%s: closing: %s", peer, exc)

        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as exc:
            log.debug("%s: connection lost: %r", peer, exc)
        except Exception:  # never let one connection take the listener down
            log.exception("%s: unexpected error in control connection", peer)
        finally:
            self.stats.connections -= 1
            await close_at_once(stream)


@functools.lru_cache(maxsize=4096)  # asked at every connection, mostly for the same few peers
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Http1Connection:
    def __init__(self, server: _ControlServer, stream: trio.abc.Stream, peer: str) -> None:
        self.server = server
        self.cfg = server.cfg
        self.stream = stream
        self.peer = peer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.cfg.max_header_bytes)
        #: answering a HEAD request: h11 refuses any body bytes, error answers included
        self.head_request = False
        #: the peer is on this host: it may read /debug/stats
        self.loopback = False

    async def _send(self, *events: Any) -> None:
        data = b"".join(self.conn.send(ev) or b"" for ev in events)
        with trio.fail_after(self.cfg.send_timeout):
            await self.stream.send_all(data)

    async def _next_event(self) -> Any:
        while True:
            ev = self.conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            if self.conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            data = await self.stream.receive_some(_RECV_SIZE)
            self.conn.receive_data(data)

    async def _read_request(self) -> tuple[h11.Request, bytes] | None:
        ev = await self._next_event()
        if isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
            return None
        if not isinstance(ev, h11.Request):
            raise _Close(f"unexpected {type(ev).__name__}")
        request = ev
        self.head_request = request.method == b"HEAD"
        # h11 bounds only *incomplete* heads; a big head arriving in one read must be caught here.
        head_size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        if head_size > self.cfg.max_header_bytes:
            await self._simple(431, "request header fields too large\n", close=True)
            raise _Close("request head too large")
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.cfg.max_http_body:
                await self._simple(413, "request body too large\n", close=True)
                raise _Close("declared request body too large")
        body = bytearray()
        while True:
            ev = await self._next_event()
            if isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > self.cfg.max_http_body:
                    await self._simple(413, "request body too large\n", close=True)
                    raise _Close("request body too large")
            elif isinstance(ev, h11.EndOfMessage):
                return request, bytes(body)
            else:
                raise _Close(f"unexpected {type(ev).__name__} in request body")

    async def _simple(self, status: int, text: str, *, close: bool = False) -> None:
        await self._respond(status, [("Content-Type", "text/plain; charset=utf-8")], text.encode(), close=close)

    async def _respond(
        self,
        status: int,
        headers: Sequence[tuple[str, str]] | Mapping[str, str],
        body: bytes,
        *,
        head: bool = False,
        close: bool = False,
    ) -> None:
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        items = [(k, v) for k, v in items if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        items.append(("Content-Length", str(len(body))))
        if close:
            items.append(("Connection", "close"))
        events: list[Any] = [h11.Response(status_code=status, headers=items)]
        # h11 frames the answer by the request's exact method (b"HEAD"), not the upper-cased name
        # the handlers see: "HeAD" gets its body, or the declared Content-Length goes unsent
        if body and not self.head_request:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await self._send(*events)

    async def _first_byte(self) -> bool:
        """Wait (bounded) for the connection's first bytes; False if the client closed without any."""
        with trio.move_on_after(self.cfg.first_byte_timeout):
            data = await self.stream.receive_some(_RECV_SIZE)
            self.conn.receive_data(data)
            return bool(data)
        self.server.stats.connections_timed_out += 1
        raise _Close("no first byte in time")

    async def run(self) -> None:
        if not await self._first_byte():
            return
        while True:
            try:
                with trio.fail_after(self.cfg.request_timeout):
                    got = await self._read_request()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                try:
                    await self._simple(status, "bad request\n", close=True)
                except (h11.LocalProtocolError, _Close):
                    pass
                raise _Close(f"bad HTTP/1.1 request: {exc}") from None
            except trio.TooSlowError:
                self.server.stats.connections_timed_out += 1
                raise _Close("timed out waiting for a request") from None
            if got is None:
                return
            request, body = got
            upgraded = await self._dispatch(request, body)
            if upgraded:
                return
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _dispatch(self, request: h11.Request, body: bytes) -> bool:
        method = request.method.decode("ascii", "replace").upper()
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        headers = headers_dict(request.headers)
        begin_request(headers.get("x-request-id"))
        if method == "CONNECT":
            # a 2xx answer to CONNECT switches protocols in HTTP/1.1 (h11 then refuses a body);
            # nothing here tunnels, so no handler may see one
            await self._simple(405, "method not allowed\n", close=True)
            raise _Close("CONNECT request")
        if path == "/ts2021":
            return await self._upgrade(headers, query)
        if path == "/key":
            await self._serve_key(method, query)
            return False
        if path == "/debug/stats" and self.loopback and method in ("GET", "HEAD"):
            body = json.dumps(self.server.stats.as_dict()).encode()
            await self._respond(200, [("Content-Type", "application/json")], body, head=method == "HEAD")
            return False
        if self.server.http_handler is None:
            await self._simple(404, "not found\n")
            return False
        try:
            status, rheaders, rbody = await self.server.http_handler(method, target, headers, body)
            if isinstance(rbody, str):
                rbody = rbody.encode("utf-8")
        except Exception:
            log.exception("%s: http_handler failed for %s %s", self.peer, method, path)
            await self._simple(500, "internal error\n")
            return False
        await self._respond(int(status), rheaders, bytes(rbody), head=method == "HEAD")
        return False

    async def _serve_key(self, method: str, query: str) -> None:
        refusal = control.answer_key(method, query, self.cfg.min_capability_version)
        if refusal is not None:
            await self._simple(refusal.status, refusal.text)
            return
        await self._respond(200, [("Content-Type", "application/json")], self.server.key_body, head=method == "HEAD")

    async def _upgrade(self, headers: dict[str, str], query: str = "") -> bool:
        upgrade = control.parse_upgrade(headers, query, accept_token)
        if isinstance(upgrade, control.Refusal):
            await self._simple(upgrade.status, upgrade.text)
            return False
        # h11 only lets us switch when the client asked for it and finished its request.
        if self.conn.they_are_waiting_for_100_continue or self.conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            await self._simple(400, "bad upgrade request\n", close=True)
            raise _Close("upgrade request in wrong state")
        switching = self.conn.send(
            h11.InformationalResponse(status_code=101, headers=upgrade.headers, reason=b"Switching Protocols")
        )
        pending, _closed = self.conn.trailing_data
        stream: trio.abc.Stream = self.stream
        if upgrade.websocket:
            # TS2021 inside WebSocket binary messages (Tailscale's JS/WebAssembly client): no early
            # payload (that client does not read one)
            with trio.fail_after(self.cfg.send_timeout):
                await self.stream.send_all(switching)
            stream = WebSocketByteStream(self.stream, bytes(pending))
            switching = pending = b""
        try:
            hs = control.answer_initiation(upgrade.initiation, self.server.private_key, self.cfg.min_capability_version)
        except noise.RemoteProtocolError as exc:
            with trio.fail_after(self.cfg.send_timeout):
                await stream.send_all(switching + noise.error_frame(str(exc)))
            raise _Close(f"noise handshake failed: {exc}") from None

        challenge_priv: bytes | None = None
        early = b""
        if self.cfg.send_early_payload and not upgrade.websocket:
            challenge_priv = keys.generate_private_key()
            early = noise.encode_early_payload(keys.public_key(challenge_priv))
        session = _H2Session(self.server, stream, self.peer, hs, challenge_priv)
        await session.run(switching + hs.response, early, bytes(pending))
        return True


# --- HTTP/2 over Noise ---------------------------------------------------------------------------


class _Stream:
    """A stream a handler serves: the protocol's state and the handler's task-side objects."""

    __slots__ = ("state", "scope", "window", "response")

    def __init__(self, state: StreamState) -> None:
        self.state = state
        self.scope = trio.CancelScope()
        self.window = trio.Event()
        self.response: ControlResponse | None = None


class ControlResponse:
    """The handler's side of one HTTP/2 stream.  Methods raise :class:`StreamGone` once it is gone."""

    def __init__(self, session: _H2Session, stream: _Stream) -> None:
        self._session = session
        self._stream = stream
        self.started = False
        self.ended = False
        self.status: int | None = None

    @property
    def stream_id(self) -> int:
        return self._stream.state.id

    async def start(self, status: int, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Send the response headers (no content-length is added: the body may be streamed)."""
        await self._session._send_headers(self._stream, self._begin(status, headers))

    def _begin(self, status: int, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.started:
            raise RuntimeError("response already started")
        hdrs = [(":status", str(int(status)))]
        hdrs += [(k.lower(), str(v)) for k, v in headers if k.lower() not in ("connection", "transfer-encoding")]
        self.started = True
        self.status = int(status)
        return hdrs

    async def write(self, data: bytes) -> None:
        """Send body bytes, waiting for the client's flow-control window as needed."""
        if not self.started:
            raise RuntimeError("call start() before write()")
        if self.ended:
            raise RuntimeError("response already ended")
        if data:
            await self._session._send_data(self._stream, data, end=False)

    def mark_registered(self) -> None:
        """Tell the transport that this connection's machine key has a node in the tailnet: the
        connection gets the full concurrent-stream limit (before that it gets only a few)."""
        self._session.conn.mark_registered()

    def write_nowait(self, data: bytes) -> bool:
        """Send body bytes now, without waiting, if that can be done at once: the connection is not
        busy with another write, the flow-control window has room and the socket takes the bytes
        (what it does not take is finished in the background, in order). Returns False when the
        caller must use :meth:`write` instead. A map fan-out to thousands of sessions uses this to
        skip a task switch per session."""
        if not self.started or self.ended:
            return False
        return self._session._send_data_nowait(self._stream, data)

    async def end(self, data: bytes = b"") -> None:
        """Send the last body bytes (optional) and end the stream."""
        if not self.started:
            raise RuntimeError("call start() before end()")
        if self.ended:
            raise RuntimeError("response already ended")
        self.ended = True
        await self._session._send_data(self._stream, data, end=True)

    async def send(
        self, status: int, body: bytes | str = b"", headers: Sequence[tuple[str, str]] | Mapping[str, str] = ()
    ) -> None:
        """A complete response with a content-length."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        items = [(k, v) for k, v in items if k.lower() != "content-length"]
        items.append(("content-length", str(len(body))))
        hdrs = self._begin(status, items)
        self.ended = True
        await self._session._send_data(self._stream, body, end=True, headers=hdrs)


class _H2Session:
    """Runs one upgraded connection: the read loop with its deadline, a task per request, and
    every write under one lock (a cancelled partial write would corrupt the Noise record stream)."""

    def __init__(
        self,
        server: _ControlServer,
        stream: trio.abc.Stream,
        peer: str,
        hs: noise.Handshake,
        challenge_private_key: bytes | None,
    ) -> None:
        self.server = server
        self.cfg = server.cfg
        self.stream = stream
        self.peer = peer
        self.machine_key = hs.machine_key
        self.version = hs.version
        self.challenge_private_key = challenge_private_key
        self.conn = control.ControlConnection(self.cfg, server.stats, hs.connection, trio.current_time())
        self.lock = trio.Lock()
        #: synchronous sends go straight to the kernel on a plain TCP stream (None: not one)
        self.raw = stream if isinstance(stream, RawStream) and server.tls is None else None
        #: encrypted bytes a synchronous send could not put on the wire yet; they go out first
        self.backlog = b""
        #: streams being served by a handler
        self.served: dict[int, _Stream] = {}
        self.stats = server.stats
        self.closed = False
        self.read_scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None

    # -- sending (always under self.lock) --

    async def _flush_locked(self) -> None:
        records = self.conn.data_to_send()
        if (not records and not self.backlog) or self.closed:
            return
        if self.backlog:
            records, self.backlog = self.backlog + records, b""
        raw = self.raw
        if raw is not None:
            # Most writes fit the socket's buffer: hand them over without the deadline scope below
            # (entering and leaving a scope with a deadline was a few per cent of a short
            # connection's CPU). The lock acquired by every caller was the checkpoint.
            try:
                sent = raw.send_nowait(records)
            except trio.BrokenResourceError as exc:
                self._fail(f"send failed: {exc!r}")
                raise StreamGone("connection lost") from None
            if sent is not None:
                if sent == len(records):
                    return
                records = records[sent:]
        try:
            # A cancelled partial write would corrupt the record stream for everyone: shield it and
            # bound it with the send timeout instead. (One bare scope: this runs once per map
            # message per session, and fail_after's context-manager layers cost more than the send.)
            with trio.CancelScope(shield=True, deadline=trio.current_time() + self.cfg.send_timeout) as scope:
                await self.stream.send_all(records)
            if scope.cancelled_caught:
                raise trio.TooSlowError
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as exc:
            self._fail(f"send failed: {exc!r}")
            raise StreamGone("connection lost") from None

    def _send_data_nowait(self, st: _Stream, data: bytes) -> bool:
        """The synchronous path of ControlResponse.write_nowait (see there)."""
        raw = self.raw
        if raw is None or self.closed or st.state.gone or self.backlog or self.lock.locked():
            return False
        out = self.conn.send_data_now(st.state, data)
        if out is None:
            return False
        try:
            sent = raw.send_nowait(out)
        except trio.BrokenResourceError as exc:
            self._fail(f"send failed: {exc!r}")
            return True
        if sent is None:
            sent = 0
        if sent < len(out):
            self.backlog = out[sent:]
            assert self.nursery is not None
            self.nursery.start_soon(self._drain_backlog)
        return True

    async def _drain_backlog(self) -> None:
        async with self.lock:
            try:
                await self._flush_locked()
            except StreamGone:
                pass

    def _fail(self, reason: str) -> None:
        if not self.closed:
            log.debug("%s: closing HTTP/2 session: %s", self.peer, reason)
        self.closed = True
        self.conn.close()
        for st in self.served.values():
            st.window.set()
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def _send_headers(self, st: _Stream, headers: list[tuple[str, str]]) -> None:
        async with self.lock:
            if self.closed:
                raise StreamGone(f"stream {st.state.id} is gone")
            self.conn.send_headers(st.state, headers)
            await self._flush_locked()

    async def _send_data(self, st: _Stream, data: bytes, *, end: bool,
                         headers: list[tuple[str, str]] | None = None) -> None:
        """`headers`, if given, go first in the same flush (a whole small response is then one
        Noise record and one send)."""
        view = memoryview(data)
        pos = 0
        while True:
            async with self.lock:
                if self.closed:
                    raise StreamGone(f"stream {st.state.id} is gone")
                if headers is not None:
                    self.conn.send_headers(st.state, headers)
                    headers = None
                pos = self.conn.send_data(st.state, view, pos, end=end)
                await self._flush_locked()
                if pos == len(view):
                    return
                st.window = trio.Event()
                waiter = st.window
            await waiter.wait()

    # -- receiving --

    async def run(self, prefix: bytes, early: bytes, pending: bytes) -> None:
        """``prefix``: raw bytes to send first (101 + Noise response); ``early``: early payload plaintext;
        ``pending``: bytes the client sent after its upgrade request (already part of the Noise stream)."""
        first = prefix + self.conn.initiate(early)
        self.stats.sessions += 1
        reason = "client closed the connection"
        try:
            with trio.fail_after(self.cfg.send_timeout):
                await self.stream.send_all(first)
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    if pending:
                        await self._receive(pending)
                    await self._read_loop()
                except _Close as exc:  # keep it out of the nursery's ExceptionGroup
                    reason = str(exc)
                except StreamGone as exc:
                    reason = str(exc)
                finally:
                    self._fail(reason)
                    # Wake any shielded writer blocked on the socket so teardown is prompt.
                    await close_at_once(self.stream)
        finally:
            self.closed = True
            self.stats.sessions -= 1
            # handlers are done (the nursery waited for them); what is left are unfinished requests
            self.conn.teardown()
            self.served.clear()

    async def _on_deadline(self) -> None:
        async with self.lock:
            late, reason = self.conn.on_deadline(trio.current_time())
            if late:
                log.debug("%s: %d unfinished request(s) timed out", self.peer, late)
            if reason is not None and not self.conn.got_preface:
                raise _Close(reason)
            try:
                await self._flush_locked()
            except StreamGone:
                if reason is None:
                    raise
        if reason is not None:
            raise _Close(reason)

    async def _read_loop(self) -> None:
        while not self.closed:
            with trio.CancelScope(deadline=self.conn.next_deadline()) as scope:
                self.read_scope = scope
                data = await self.stream.receive_some(_RECV_SIZE)
            self.read_scope = None
            if scope.cancelled_caught:
                await self._on_deadline()
                continue
            if not data:
                return
            await self._receive(data)
            if self.conn.only_credits and self.conn.roomy(CREDIT_ROOM):
                await trio.sleep(CREDIT_READ_PAUSE)

    async def _receive(self, data: bytes) -> None:
        if not self.lock.locked():
            # No write is under way, and nothing awaits before the bytes are taken: they are taken
            # as under the lock, which is only needed when they leave something to send. Most reads
            # on a map stream are the client's window credits (tailscaled sends one per 4 KiB it
            # reads), which leave nothing; the lock would cost each of them two trips through the
            # scheduler.
            failed = self._take(data)
            if failed is not None or self.conn.has_output():
                async with self.lock:
                    await self._flush_after(failed)
        else:
            async with self.lock:
                await self._flush_after(self._take(data))
        if self.closed:
            raise _Close("connection terminated")

    def _take(self, data: bytes) -> str | None:
        """Feed the client's bytes and act on what they bring; why the connection must close, if it must."""
        try:
            events = self.conn.receive_data(data, trio.current_time())
        except ControlProtocolError as exc:
            return str(exc)
        for ev in events:
            self._on_event(ev)
        return None

    async def _flush_after(self, failed: str | None) -> None:
        """Under the lock: send what taking the bytes queued (a GOAWAY, then close, if they failed)."""
        if failed is None:
            await self._flush_locked()
            return
        try:
            await self._flush_locked()
        except StreamGone:
            pass
        raise _Close(failed)

    def _on_event(self, ev: Any) -> None:
        t = type(ev)
        if t is RequestReceived:
            self._dispatch(ev.stream, ev.body)
        elif t is WindowOpened:
            if ev.stream_id == 0:
                for st in self.served.values():
                    st.window.set()
            else:
                st = self.served.get(ev.stream_id)
                if st is not None:
                    st.window.set()
        elif t is StreamReset:
            st = self.served.get(ev.stream_id)
            if st is not None:
                st.window.set()
                st.scope.cancel()
        elif t is ConnectionTerminated:
            self._fail(ev.reason)

    def _dispatch(self, state: StreamState, body: bytes) -> None:
        request = ControlRequest(
            machine_key=self.machine_key,
            protocol_version=self.version,
            method=state.method,
            path=state.path,
            headers=state.headers,
            body=body,
            stream_id=state.id,
            challenge_private_key=self.challenge_private_key,
            peer=self.peer,
        )
        st = _Stream(state)
        st.response = ControlResponse(self, st)
        self.served[state.id] = st
        assert self.nursery is not None
        self.nursery.start_soon(self._run_handler, st, request)

    async def _run_handler(self, st: _Stream, request: ControlRequest) -> None:
        resp = st.response
        assert resp is not None
        begin_request()  # this task serves this one request: its lines carry the id
        log.debug("%s: %s %s (stream %d)", self.peer, request.method, request.path, st.state.id)
        try:
            with st.scope:
                try:
                    await self.server.noise_handler(request, resp)
                    if not resp.started:
                        log.error("%s: handler for %s %s returned without a response", self.peer, request.method,
                                  request.path)
                        await resp.send(500, b"handler sent no response\n")
                    elif not resp.ended:
                        await resp.end()
                except StreamGone:
                    log.debug("%s: stream %d gone during %s", self.peer, st.state.id, request.path)
                except Exception:
                    if st.state.gone or self.closed:
                        log.debug("%s: handler for %s failed after stream loss", self.peer, request.path, exc_info=True)
                    else:
                        log.exception("%s: handler for %s %s failed", self.peer, request.method, request.path)
                        await self._answer_failure(st, resp)
        finally:
            self.served.pop(st.state.id, None)
            st.response = None  # the stream and its response refer to each other: see teardown
            self.conn.forget(st.state, trio.current_time())
            if self.read_scope is not None and not self.conn.streams:
                self.read_scope.deadline = self.conn.next_deadline()

    async def _answer_failure(self, st: _Stream, resp: ControlResponse) -> None:
        try:
            if not resp.started:
                await resp.send(500, b"internal error\n", [("content-type", "text/plain; charset=utf-8")])
                return
            async with self.lock:
                if not st.state.gone and not self.closed:
                    self.conn.reset(st.state)
                    await self._flush_locked()
        except StreamGone:
            pass
