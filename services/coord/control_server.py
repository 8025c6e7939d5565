"""The control listener: HTTP/1.1 (h11) → ``/ts2021`` upgrade → Noise → HTTP/2 (h2), as a Trio adapter.

ASGI servers cannot hand an upgraded connection over, so this module is its own small server.  The
protocol work is done by sans-IO pieces (``h11``, ``h2``, :mod:`trioscale.shared.proto.noise`); this
module only moves bytes, runs tasks and enforces limits and timeouts.

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

import base64
import binascii
import ipaddress
import json
import logging
import math
import os
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import trio

from trioscale.shared.net.limits import DEFAULT_CAPS, ConnectionLimiter
from trioscale.shared.net.listen import listener_sockets, serve_stream_sockets
from trioscale.shared.net.wsstream import WebSocketByteStream, accept_token
from trioscale.shared.proto import keys, noise

__all__ = [
    "ControlRequest",
    "ControlResponse",
    "StreamGone",
    "TransportConfig",
    "TransportStats",
    "NoiseHandler",
    "HttpHandler",
    "serve_control",
    "format_address",
    "UPGRADE_PROTOCOL",
]

log = logging.getLogger("trioscale.coord.transport")

UPGRADE_PROTOCOL = "tailscale-control-protocol"
HANDSHAKE_HEADER = "x-tailscale-handshake"
_RECV_SIZE = 65536


class StreamGone(Exception):
    """The HTTP/2 stream (or its whole connection) is gone; nothing more can be sent on it."""


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


@dataclass(frozen=True)
class TransportConfig:
    """Limits and timeouts of the control listener (seconds, bytes).

    Request bodies inside Noise are small: a RegisterRequest or MapRequest is a few KiB of JSON,
    most of it Hostinfo, which the store caps at 64 KiB. So one request may carry 256 KiB (four
    times the largest Hostinfo we keep) and the unfinished bodies of one connection 1 MiB. Flow
    control enforces both: a stream's receive window is one request body, the connection's window
    is ``max_connection_body``, and credit goes back only for bytes a handler was handed (or that
    were thrown away), so a client that never ends its requests cannot make us hold more.
    ``max_buffered_bodies`` bounds all unfinished bodies of the listener together: past it, the
    stream that brings more bytes is refused (503), whatever connection it is on.
    """

    min_capability_version: int = 113
    max_header_bytes: int = 16 * 1024  #: HTTP/1.1 request line + headers
    #: plain HTTP/1.1 request body (nothing served on plain HTTP here needs more than a few bytes)
    max_http_body: int = 64 * 1024
    max_request_body: int = 256 * 1024  #: one HTTP/2 request body inside Noise
    #: unfinished HTTP/2 request bodies of one connection (its receive window; at least 65535)
    max_connection_body: int = 1 << 20
    max_buffered_bodies: int = 64 << 20  #: unfinished HTTP/2 request bodies of the whole listener
    #: concurrent HTTP/2 streams once the connection's machine key has a node in the tailnet
    max_concurrent_streams: int = 250
    #: concurrent HTTP/2 streams before that (a real client uses one or two to register)
    unregistered_concurrent_streams: int = 4
    max_header_list_size: int = 64 * 1024  #: HTTP/2 decoded header list
    first_byte_timeout: float = 10.0  #: from accept to the client's first byte
    request_timeout: float = 30.0  #: to receive one whole HTTP/1.1 request (incl. keep-alive idle)
    h2_preface_timeout: float = 10.0  #: after the 101, for the client's HTTP/2 preface
    first_request_timeout: float = 30.0  #: after the 101, for the first HTTP/2 request's headers
    request_body_timeout: float = 30.0  #: from an HTTP/2 request's headers to its end; then 408 + reset
    #: close an HTTP/2 connection that has had no open stream for this long (frames such as PING
    #: do not count: only requests keep a connection busy)
    h2_idle_timeout: float = 300.0
    send_timeout: float = 60.0  #: any single socket write
    send_early_payload: bool = True


@dataclass
class TransportStats:
    """The listener's own accounting, live (read by tests and the coordinator's stats)."""

    connections: int = 0  #: open TCP connections (plain HTTP/1.1 or upgraded)
    sessions: int = 0  #: of those, upgraded to Noise + HTTP/2
    open_streams: int = 0  #: HTTP/2 streams held (unfinished requests + running handlers)
    buffered_body_bytes: int = 0  #: bytes of unfinished request bodies held right now
    peak_buffered_body_bytes: int = 0
    bodies_refused: int = 0  #: requests refused for their size (413) or the listener's budget (503)
    streams_refused: int = 0  #: streams over the connection's concurrent-stream limit (REFUSED_STREAM)
    requests_timed_out: int = 0  #: unfinished requests reset at their deadline
    connections_timed_out: int = 0  #: connections closed at a phase deadline (first byte, upgrade, ...)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# --- addresses -----------------------------------------------------------------------------------


def format_address(sockaddr: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket address tuple."""
    host, port = sockaddr[0], sockaddr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _parse_addr(addr: str | tuple[str | None, int]) -> tuple[str | None, int]:
    if isinstance(addr, tuple):
        return addr[0] or None, int(addr[1])
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {addr!r} is not host:port")
    host = host.strip("[]")
    return host or None, int(port)


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
        return format_address(listener.getsockname())
    sock = getattr(listener, "socket", None)
    if sock is not None:
        return format_address(sock.getsockname())
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
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control protocol on ``listeners_or_addr`` until cancelled (see the module docstring).
    ``stats``: a :class:`TransportStats` the listener keeps current (pass one to read it)."""
    cfg = config or TransportConfig()
    server = _ControlServer(server_private_key, noise_handler, http_handler, cfg, stats or TransportStats())
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
        await nursery.start(partial(serve_stream_sockets, server.handle_connection, socks, limiter=limiter, log=log))
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
        self.key_body = json.dumps(
            {"legacyPublicKey": keys.MACHINE.zero(), "publicKey": keys.MACHINE.format(self.public_key)},
            separators=(",", ":"),
        ).encode()

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        peer = "?"
        loopback = False
        try:
            sock = getattr(stream, "socket", None)
            if sock is not None:
                sockaddr = sock.getpeername()
                peer = format_address(sockaddr)
                loopback = _is_loopback(sockaddr[0])
        except OSError:
            pass
        self.stats.connections += 1
        try:
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
            await trio.aclose_forcefully(stream)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _headers_dict(items: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        n = name.decode("latin-1") if isinstance(name, bytes) else name
        v = value.decode("latin-1") if isinstance(value, bytes) else value
        n = n.lower()
        out[n] = f"{out[n]}, {v}" if n in out else v
    return out


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
        headers = _headers_dict(request.headers)
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
        if method not in ("GET", "HEAD"):
            await self._simple(405, "method not allowed\n")
            return
        values = urllib.parse.parse_qs(query).get("v")
        if not values:
            await self._simple(400, "capability version must be set (v=N)\n")
            return
        try:
            version = int(values[0])
        except ValueError:
            await self._simple(400, "capability version must be an integer\n")
            return
        minimum = self.cfg.min_capability_version
        if version < minimum:
            await self._simple(
                400,
                f"unsupported client version: capability version {version} is older than the minimum "
                f"{minimum}; please update Tailscale\n",
            )
            return
        await self._respond(200, [("Content-Type", "application/json")], self.server.key_body, head=method == "HEAD")

    async def _upgrade(self, headers: dict[str, str], query: str = "") -> bool:
        upgrade = headers.get("upgrade", "").strip().lower()
        if not upgrade:
            await self._simple(400, "missing next protocol\n")
            return False
        if upgrade == "websocket":
            return await self._upgrade_websocket(headers, query)
        if upgrade != UPGRADE_PROTOCOL:
            await self._simple(400, f"unsupported protocol switch {upgrade!r}\n")
            return False
        b64 = headers.get(HANDSHAKE_HEADER)
        if b64 is None:
            await self._simple(400, "no tailscale handshake header\n")
            return False
        try:
            initiation = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            await self._simple(400, "invalid tailscale handshake header\n")
            return False

        # h11 only lets us switch when the client asked for it and finished its request.
        if self.conn.they_are_waiting_for_100_continue or self.conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            await self._simple(400, "bad upgrade request\n", close=True)
            raise _Close("upgrade request in wrong state")
        switching = self.conn.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[("Upgrade", UPGRADE_PROTOCOL), ("Connection", "upgrade")],
                reason=b"Switching Protocols",
            )
        )
        pending, _closed = self.conn.trailing_data

        try:
            version = noise.parse_initiation_version(initiation)
            if version < self.cfg.min_capability_version:
                raise noise.RemoteProtocolError(
                    f"unsupported client version {version} (minimum {self.cfg.min_capability_version})"
                )
            hs = noise.respond(initiation, self.server.private_key)
        except noise.RemoteProtocolError as exc:
            with trio.fail_after(self.cfg.send_timeout):
                await self.stream.send_all(switching + noise.error_frame(str(exc)))
            raise _Close(f"noise handshake failed: {exc}") from None

        challenge_priv: bytes | None = None
        early = b""
        if self.cfg.send_early_payload:
            challenge_priv = keys.generate_private_key()
            early = noise.encode_early_payload(keys.public_key(challenge_priv))
        session = _H2Session(self.server, self.stream, self.peer, hs, challenge_priv)
        await session.run(switching + hs.response, early, bytes(pending))
        return True

    async def _upgrade_websocket(self, headers: dict[str, str], query: str) -> bool:
        """TS2021 inside WebSocket binary messages (Tailscale's JS/WebAssembly client): the Noise
        initiation comes in the query (a browser cannot set headers), the subprotocol names the
        control protocol, and no early payload is sent (that client does not read one)."""
        protocols = [p.strip().lower() for p in headers.get("sec-websocket-protocol", "").split(",")]
        ws_key = headers.get("sec-websocket-key", "").strip()
        if UPGRADE_PROTOCOL not in protocols or not ws_key:
            await self._simple(400, f"a WebSocket upgrade must offer the {UPGRADE_PROTOCOL} subprotocol\n")
            return False
        b64 = (urllib.parse.parse_qs(query).get("X-Tailscale-Handshake") or [""])[0]
        try:
            initiation = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            initiation = b""
        if not initiation:
            await self._simple(400, "missing or invalid X-Tailscale-Handshake parameter\n")
            return False
        if self.conn.they_are_waiting_for_100_continue or self.conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            await self._simple(400, "bad upgrade request\n", close=True)
            raise _Close("upgrade request in wrong state")
        switching = self.conn.send(h11.InformationalResponse(
            status_code=101, reason=b"Switching Protocols",
            headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                     ("Sec-WebSocket-Accept", accept_token(ws_key)), ("Sec-WebSocket-Protocol", UPGRADE_PROTOCOL)],
        ))
        pending, _closed = self.conn.trailing_data
        with trio.fail_after(self.cfg.send_timeout):
            await self.stream.send_all(switching)
        ws = WebSocketByteStream(self.stream, bytes(pending))
        try:
            version = noise.parse_initiation_version(initiation)
            if version < self.cfg.min_capability_version:
                raise noise.RemoteProtocolError(
                    f"unsupported client version {version} (minimum {self.cfg.min_capability_version})"
                )
            hs = noise.respond(initiation, self.server.private_key)
        except noise.RemoteProtocolError as exc:
            with trio.fail_after(self.cfg.send_timeout):
                await ws.send_all(noise.error_frame(str(exc)))
            raise _Close(f"noise handshake failed: {exc}") from None
        session = _H2Session(self.server, ws, self.peer, hs, None)
        await session.run(hs.response, b"", b"")
        return True


# --- HTTP/2 over Noise ---------------------------------------------------------------------------


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """A non-blocking stdlib socket on a duplicate of a plain TCP stream's descriptor, or None."""
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        raw = socket.socket(fileno=os.dup(stream.socket.fileno()))
        raw.setblocking(False)
    except OSError:
        return None
    return raw


class _Stream:
    __slots__ = ("id", "method", "path", "headers", "body", "flow", "deadline", "scope", "gone", "window",
                 "response", "dispatched")

    def __init__(self, stream_id: int, method: str, path: str, headers: dict[str, str], deadline: float) -> None:
        self.id = stream_id
        self.method = method
        self.path = path
        self.headers = headers
        self.body = bytearray()
        #: flow-controlled bytes received and not yet handed back to the client (body + padding)
        self.flow = 0
        #: when the request must have ended (HEADERS + request_body_timeout)
        self.deadline = deadline
        self.scope = trio.CancelScope()
        self.gone = False
        self.window = trio.Event()
        self.response: ControlResponse | None = None
        self.dispatched = False


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
        return self._stream.id

    async def start(self, status: int, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Send the response headers (no content-length is added: the body may be streamed)."""
        if self.started:
            raise RuntimeError("response already started")
        hdrs = [(":status", str(int(status)))]
        hdrs += [(k.lower(), str(v)) for k, v in headers if k.lower() not in ("connection", "transfer-encoding")]
        self.started = True
        self.status = int(status)
        await self._session._send_headers(self._stream, hdrs)

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
        self._session.mark_registered()

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
        await self.start(status, items)
        await self.end(body)


class _H2Session:
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
        self.noise = hs.connection
        self.machine_key = hs.machine_key
        self.version = hs.version
        self.challenge_private_key = challenge_private_key
        self.lock = trio.Lock()
        #: a second handle on the TCP socket for synchronous non-blocking sends (None: not plain TCP)
        self.raw = _raw_socket(stream)
        #: encrypted bytes a synchronous send could not put on the wire yet; they go out first
        self.backlog = b""
        self.streams: dict[int, _Stream] = {}
        #: streams whose request has not ended yet (their bodies are what we buffer)
        self.unfinished: dict[int, _Stream] = {}
        self.stats = server.stats
        self.buffered = 0  #: bytes in this connection's unfinished bodies
        self.registered = False
        self.stream_limit = self.cfg.unregistered_concurrent_streams
        self.seen_request = False
        self.closed = False
        self.got_preface = False
        self.preface_deadline = self.first_request_deadline = self.idle_since = trio.current_time()
        self.read_scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None
        cfg = self.cfg
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8", validate_inbound_headers=True)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: cfg.unregistered_concurrent_streams,
                # one byte over the body cap, so that an over-long body shows itself (413) instead
                # of stalling on a full window
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: min(cfg.max_request_body + 1, (1 << 31) - 1),
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: cfg.max_header_list_size,
            },
        )

    # -- sending (always under self.lock) --

    async def _flush_locked(self) -> None:
        data = self.h2.data_to_send()
        if (not data and not self.backlog) or self.closed:
            return
        records = self.noise.encrypt(data) if data else b""
        if self.backlog:
            records, self.backlog = self.backlog + records, b""
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
        if self.raw is None or self.closed or st.gone or self.backlog or self.lock.locked():
            return False
        try:
            if self.h2.local_flow_control_window(st.id) < len(data):
                return False
            size = self.h2.max_outbound_frame_size
            for pos in range(0, len(data), size):
                self.h2.send_data(st.id, data[pos : pos + size])
        except h2.exceptions.ProtocolError:
            return False  # the stream is closing: the async path reports it
        out = self.noise.encrypt(self.h2.data_to_send())
        try:
            sent = self.raw.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(f"send failed: {exc!r}")
            return True
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
        for st in self.streams.values():
            st.gone = True
            st.window.set()
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def _send_headers(self, st: _Stream, headers: list[tuple[str, str]]) -> None:
        async with self.lock:
            if st.gone or self.closed:
                raise StreamGone(f"stream {st.id} is gone")
            try:
                self.h2.send_headers(st.id, headers)
            except h2.exceptions.ProtocolError as exc:
                st.gone = True
                raise StreamGone(f"stream {st.id}: {exc}") from None
            await self._flush_locked()

    async def _send_data(self, st: _Stream, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        pos = 0
        while True:
            async with self.lock:
                if st.gone or self.closed:
                    raise StreamGone(f"stream {st.id} is gone")
                try:
                    while pos < len(view):
                        window = min(self.h2.local_flow_control_window(st.id), self.h2.max_outbound_frame_size)
                        if window <= 0:
                            break
                        n = min(window, len(view) - pos)
                        last = pos + n == len(view)
                        self.h2.send_data(st.id, bytes(view[pos : pos + n]), end_stream=end and last)
                        pos += n
                    if pos == len(view) and end and not view:
                        self.h2.end_stream(st.id)
                except h2.exceptions.ProtocolError as exc:
                    st.gone = True
                    raise StreamGone(f"stream {st.id}: {exc}") from None
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
        self.h2.initiate_connection()
        extra = self.cfg.max_connection_body - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        first = prefix + self.noise.encrypt(early + self.h2.data_to_send())
        upgraded = trio.current_time()
        self.preface_deadline = upgraded + self.cfg.h2_preface_timeout
        self.first_request_deadline = upgraded + self.cfg.first_request_timeout
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
                    await trio.aclose_forcefully(self.stream)
        finally:
            self.closed = True
            self.stats.sessions -= 1
            # handlers are done (the nursery waited for them); what is left are unfinished requests
            for st in self.unfinished.values():
                self._account(-len(st.body))
            self.stats.open_streams -= len(self.streams)
            self.unfinished.clear()
            self.streams.clear()
            if self.raw is not None:
                self.raw.close()

    # -- limits and deadlines --

    def mark_registered(self) -> None:
        if self.registered or self.closed:
            return
        self.registered = True
        self.stream_limit = self.cfg.max_concurrent_streams
        try:
            # sent with the handler's next write
            self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.stream_limit})
        except h2.exceptions.ProtocolError:
            pass

    def _account(self, n: int) -> None:
        self.buffered += n
        stats = self.stats
        stats.buffered_body_bytes += n
        if stats.buffered_body_bytes > stats.peak_buffered_body_bytes:
            stats.peak_buffered_body_bytes = stats.buffered_body_bytes

    def _release(self, st: _Stream) -> None:
        """The stream's body was handed to its handler or thrown away: stop counting it and give
        its flow-control credit back to the client."""
        self._account(-len(st.body))
        st.body = bytearray()
        flow, st.flow = st.flow, 0
        if flow and not self.closed:
            try:
                self.h2.acknowledge_received_data(flow, st.id)
            except (h2.exceptions.ProtocolError, ValueError):
                pass

    def _forget(self, st: _Stream) -> None:
        if self.unfinished.pop(st.id, None) is not None:
            self._release(st)
        if self.streams.pop(st.id, None) is not None:
            self.stats.open_streams -= 1
            if not self.streams:
                self.idle_since = trio.current_time()
                if self.read_scope is not None:
                    self.read_scope.deadline = self._next_deadline()

    def _next_deadline(self) -> float:
        if not self.got_preface:
            return self.preface_deadline
        deadline = math.inf
        for st in self.unfinished.values():
            deadline = min(deadline, st.deadline)
        if not self.seen_request:
            deadline = min(deadline, self.first_request_deadline)
        elif not self.streams:
            deadline = min(deadline, self.idle_since + self.cfg.h2_idle_timeout)
        return deadline

    async def _on_deadline(self) -> None:
        now = trio.current_time()
        if not self.got_preface:
            self.stats.connections_timed_out += 1
            raise _Close("no HTTP/2 preface in time")
        late = [st for st in self.unfinished.values() if st.deadline <= now]
        if late:
            log.debug("%s: %d unfinished request(s) timed out", self.peer, len(late))
            self.stats.requests_timed_out += len(late)
            async with self.lock:
                for st in late:
                    self._refuse(st, 408)
                await self._flush_locked()
        if not self.seen_request and now >= self.first_request_deadline:
            self.stats.connections_timed_out += 1
            await self._goaway()
            raise _Close("no request in time after the upgrade")
        if self.seen_request and not self.streams and now >= self.idle_since + self.cfg.h2_idle_timeout:
            await self._goaway()
            raise _Close("idle HTTP/2 connection")

    async def _read_loop(self) -> None:
        while not self.closed:
            with trio.CancelScope(deadline=self._next_deadline()) as scope:
                self.read_scope = scope
                data = await self.stream.receive_some(_RECV_SIZE)
            self.read_scope = None
            if scope.cancelled_caught:
                await self._on_deadline()
                continue
            if not data:
                return
            await self._receive(data)

    async def _goaway(self) -> None:
        async with self.lock:
            try:
                self.h2.close_connection()
                await self._flush_locked()
            except (h2.exceptions.ProtocolError, StreamGone):
                pass

    async def _receive(self, data: bytes) -> None:
        try:
            chunks = self.noise.receive_data(data)
        except noise.RemoteProtocolError as exc:
            raise _Close(f"noise: {exc}") from None
        for chunk in chunks:
            async with self.lock:
                try:
                    events = self.h2.receive_data(chunk)
                except h2.exceptions.ProtocolError as exc:
                    try:
                        await self._flush_locked()  # h2 queued a GOAWAY
                    except StreamGone:
                        pass
                    raise _Close(f"h2: {exc!r}") from None
                for ev in events:
                    self._on_event(ev)
                await self._flush_locked()
            if self.closed:
                raise _Close("connection terminated")

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.got_preface = True
            for st in self.streams.values():
                st.window.set()
        elif isinstance(ev, h2.events.RequestReceived):
            self._on_request(ev)
        elif isinstance(ev, h2.events.DataReceived):
            self._on_data(ev)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.unfinished.get(ev.stream_id)
            if st is not None:
                self._dispatch(st)
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.gone = True
                st.window.set()
                st.scope.cancel()
                if not st.dispatched:
                    self._forget(st)
        elif isinstance(ev, h2.events.WindowUpdated):
            if ev.stream_id == 0:
                for st in self.streams.values():
                    st.window.set()
            else:
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.window.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._fail(f"client sent GOAWAY ({ev.error_code!r})")

    def _on_data(self, ev: h2.events.DataReceived) -> None:
        st = self.unfinished.get(ev.stream_id)
        flow = ev.flow_controlled_length or 0
        if st is None:
            # nobody will consume these bytes (a stream we refused or forgot): credit them back now
            if flow:
                try:
                    self.h2.acknowledge_received_data(flow, ev.stream_id)
                except (h2.exceptions.ProtocolError, ValueError):
                    pass
            return
        st.flow += flow
        st.body += ev.data
        self._account(len(ev.data))
        if len(st.body) > self.cfg.max_request_body or self.buffered > self.cfg.max_connection_body:
            log.debug("%s: request body of %s on stream %d over %d bytes: 413", self.peer, st.path, st.id,
                      self.cfg.max_request_body)
            self.stats.bodies_refused += 1
            self._refuse(st, 413)
        elif self.stats.buffered_body_bytes > self.cfg.max_buffered_bodies:
            log.debug("%s: unfinished request bodies over the listener's budget: 503 on stream %d", self.peer,
                      st.id)
            self.stats.bodies_refused += 1
            self._refuse(st, 503)

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        self.seen_request = True
        if len(self.streams) >= self.stream_limit:
            # h2 enforces the limit on streams *it* sees open; ours also counts handlers still
            # running after their response ended. Refuse the stream, keep the connection.
            self.stats.streams_refused += 1
            try:
                self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            except h2.exceptions.ProtocolError:
                pass
            return
        method = path = ""
        regular: list[tuple[str, str]] = []
        for name, value in ev.headers:
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif not name.startswith(":"):
                regular.append((name, value))
        headers = _headers_dict(regular)
        st = _Stream(ev.stream_id, method, path, headers, trio.current_time() + self.cfg.request_body_timeout)
        self.streams[st.id] = st
        self.unfinished[st.id] = st
        self.stats.open_streams += 1
        declared = headers.get("content-length", "")
        if len(declared) > 12 or (declared.isdigit() and int(declared) > self.cfg.max_request_body):
            self.stats.bodies_refused += 1
            self._refuse(st, 413)

    def _refuse(self, st: _Stream, status: int) -> None:
        self._forget(st)
        st.gone = True
        try:
            self.h2.send_headers(st.id, [(":status", str(status)), ("content-length", "0")], end_stream=True)
            self.h2.reset_stream(st.id, h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass

    def _dispatch(self, st: _Stream) -> None:
        st.dispatched = True
        del self.unfinished[st.id]
        request = ControlRequest(
            machine_key=self.machine_key,
            protocol_version=self.version,
            method=st.method,
            path=st.path,
            headers=st.headers,
            body=bytes(st.body),
            stream_id=st.id,
            challenge_private_key=self.challenge_private_key,
            peer=self.peer,
        )
        self._release(st)  # handed to the handler: the client may send the next request's bytes
        st.response = ControlResponse(self, st)
        assert self.nursery is not None
        self.nursery.start_soon(self._run_handler, st, request)

    async def _run_handler(self, st: _Stream, request: ControlRequest) -> None:
        resp = st.response
        assert resp is not None
        try:
            with st.scope:
                try:
                    await self.server.noise_handler(request, resp)
                    if not resp.started:
                        log.error("%s: handler for %s %s returned without a response", self.peer, st.method, st.path)
                        await resp.send(500, b"handler sent no response\n")
                    elif not resp.ended:
                        await resp.end()
                except StreamGone:
                    log.debug("%s: stream %d gone during %s", self.peer, st.id, st.path)
                except Exception:
                    if st.gone or self.closed:
                        log.debug("%s: handler for %s failed after stream loss", self.peer, st.path, exc_info=True)
                    else:
                        log.exception("%s: handler for %s %s failed", self.peer, st.method, st.path)
                        await self._answer_failure(st, resp)
        finally:
            self._forget(st)

    async def _answer_failure(self, st: _Stream, resp: ControlResponse) -> None:
        try:
            if not resp.started:
                await resp.send(500, b"internal error\n", [("content-type", "text/plain; charset=utf-8")])
                return
            async with self.lock:
                if not st.gone and not self.closed:
                    st.gone = True
                    try:
                        self.h2.reset_stream(st.id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    except h2.exceptions.ProtocolError:
                        pass
                    await self._flush_locked()
        except StreamGone:
            pass
