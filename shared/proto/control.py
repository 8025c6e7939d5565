"""The control protocol's connection state, sans-IO: the ``/ts2021`` upgrade, then HTTP/2 inside Noise.

Two pieces, neither touching a socket or a clock (every time is passed in as ``now``):

* `parse_upgrade` checks an HTTP/1.1 ``/ts2021`` request (``Upgrade: tailscale-control-protocol``
  with the Noise initiation in ``X-Tailscale-Handshake``, or a WebSocket upgrade with it in the
  query) and says what to answer; `answer_initiation` runs the Noise handshake on it and
  `answer_key` serves ``GET /key``.
* `ControlConnection` is one upgraded connection: bytes from the client go in (`receive_data`),
  typed events come out (`RequestReceived` once a request's body is complete, `StreamReset`,
  `WindowOpened`, `ConnectionTerminated`), and everything to send comes out of `data_to_send`
  already encrypted. It keeps the limits: request bodies per request, per connection and per
  listener (`TransportStats` is shared by a listener's connections), flow-control credit handed back
  only for body bytes a handler was given or that were thrown away, a few concurrent streams until
  `mark_registered`, and the deadlines of each phase (`next_deadline`, `on_deadline`).

The Trio adapter (services/coord/control_server.py) owns the socket, the send lock, the handler
tasks and the timers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream

from . import keys, noise

__all__ = [
    "UPGRADE_PROTOCOL",
    "HANDSHAKE_HEADER",
    "TransportConfig",
    "TransportStats",
    "Upgrade",
    "Refusal",
    "parse_upgrade",
    "answer_initiation",
    "answer_key",
    "key_body",
    "headers_dict",
    "ControlProtocolError",
    "StreamGone",
    "RequestReceived",
    "StreamReset",
    "WindowOpened",
    "ConnectionTerminated",
    "StreamState",
    "ControlConnection",
]

UPGRADE_PROTOCOL = "tailscale-control-protocol"
HANDSHAKE_HEADER = "x-tailscale-handshake"


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


def headers_dict(items: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    """Lower-case names; repeated headers joined with ``", "``."""
    out: dict[str, str] = {}
    for name, value in items:
        n = name.decode("latin-1") if isinstance(name, bytes) else name
        v = value.decode("latin-1") if isinstance(value, bytes) else value
        n = n.lower()
        out[n] = f"{out[n]}, {v}" if n in out else v
    return out


# --- the HTTP/1.1 side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Answer the request with `status` and `text` (plain text) instead of upgrading."""

    status: int
    text: str


@dataclass(frozen=True)
class Upgrade:
    """Switch protocols: answer ``101`` with `headers`, then the Noise handshake on `initiation`.
    `websocket`: the control protocol travels in WebSocket binary messages (no early payload)."""

    initiation: bytes
    headers: list[tuple[str, str]]
    websocket: bool = False


def parse_upgrade(headers: Mapping[str, str], query: str, websocket_accept: Any = None) -> Upgrade | Refusal:
    """What to answer a ``/ts2021`` request (`headers` as `headers_dict` gives them).
    `websocket_accept(key) -> bytes` computes ``Sec-WebSocket-Accept`` (the WebSocket library's)."""
    upgrade = headers.get("upgrade", "").strip().lower()
    if not upgrade:
        return Refusal(400, "missing next protocol\n")
    if upgrade == "websocket":
        # Tailscale's JS/WebAssembly client: the initiation comes in the query (a browser cannot
        # set headers) and the subprotocol names the control protocol
        protocols = [p.strip().lower() for p in headers.get("sec-websocket-protocol", "").split(",")]
        ws_key = headers.get("sec-websocket-key", "").strip()
        if UPGRADE_PROTOCOL not in protocols or not ws_key:
            return Refusal(400, f"a WebSocket upgrade must offer the {UPGRADE_PROTOCOL} subprotocol\n")
        b64 = (urllib.parse.parse_qs(query).get("X-Tailscale-Handshake") or [""])[0]
        try:
            initiation = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            initiation = b""
        if not initiation:
            return Refusal(400, "missing or invalid X-Tailscale-Handshake parameter\n")
        accept = websocket_accept(ws_key) if websocket_accept is not None else b""
        accept = accept.decode("ascii") if isinstance(accept, bytes) else str(accept)
        return Upgrade(initiation, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                    ("Sec-WebSocket-Accept", accept), ("Sec-WebSocket-Protocol", UPGRADE_PROTOCOL)],
                       websocket=True)
    if upgrade != UPGRADE_PROTOCOL:
        return Refusal(400, f"unsupported protocol switch {upgrade!r}\n")
    b64 = headers.get(HANDSHAKE_HEADER)
    if b64 is None:
        return Refusal(400, "no tailscale handshake header\n")
    try:
        initiation = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return Refusal(400, "invalid tailscale handshake header\n")
    return Upgrade(initiation, [("Upgrade", UPGRADE_PROTOCOL), ("Connection", "upgrade")])


def answer_initiation(initiation: bytes, server_private_key: bytes, min_version: int) -> noise.Handshake:
    """The Noise handshake of an upgrade; noise.RemoteProtocolError (send `noise.error_frame`)
    when it fails or the client is older than `min_version`."""
    version = noise.parse_initiation_version(initiation)
    if version < min_version:
        raise noise.RemoteProtocolError(f"unsupported client version {version} (minimum {min_version})")
    return noise.respond(initiation, server_private_key)


def key_body(server_public_key: bytes) -> bytes:
    """The JSON of ``GET /key``."""
    return json.dumps(
        {"legacyPublicKey": keys.MACHINE.zero(), "publicKey": keys.MACHINE.format(server_public_key)},
        separators=(",", ":"),
    ).encode()


def answer_key(method: str, query: str, min_version: int) -> Refusal | None:
    """None: serve `key_body`; else the refusal (a missing or too old ``v``: the client reports the
    status and text and retries later)."""
    if method not in ("GET", "HEAD"):
        return Refusal(405, "method not allowed\n")
    values = urllib.parse.parse_qs(query).get("v")
    if not values:
        return Refusal(400, "capability version must be set (v=N)\n")
    try:
        version = int(values[0])
    except ValueError:
        return Refusal(400, "capability version must be an integer\n")
    if version < min_version:
        return Refusal(
            400,
            f"unsupported client version: capability version {version} is older than the minimum "
            f"{min_version}; please update Tailscale\n",
        )
    return None


# --- HTTP/2 inside Noise --------------------------------------------------------------------------


class ControlProtocolError(Exception):
    """The client broke Noise or HTTP/2: send what `data_to_send` holds (a GOAWAY), then close."""


class StreamGone(Exception):
    """The stream (or the whole connection) is gone; nothing more can be sent on it."""


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request is complete: hand it to a handler. Its body's flow-control credit is already
    queued back to the client."""

    stream: "StreamState"
    body: bytes


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The client reset a stream a handler is serving: cancel the handler."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The client gave flow-control credit: writers waiting on `stream_id` (0: every stream) may go on."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The client sent GOAWAY."""

    reason: str


class StreamState:
    __slots__ = ("id", "method", "path", "headers", "body", "flow", "deadline", "gone", "dispatched")

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
        self.gone = False
        self.dispatched = False


class ControlConnection:
    """One upgraded connection's HTTP/2-over-Noise state (see the module docstring)."""

    def __init__(self, cfg: TransportConfig, stats: TransportStats, connection: noise.NoiseConnection,
                 now: float) -> None:
        self.cfg = cfg
        self.stats = stats
        self.noise = connection
        self.streams: dict[int, StreamState] = {}
        #: whether the last bytes taken were nothing but the client's window credits
        self.only_credits = False
        #: streams whose request has not ended yet (their bodies are what we buffer)
        self.unfinished: dict[int, StreamState] = {}
        self.buffered = 0  #: bytes in this connection's unfinished bodies
        self.registered = False
        self.stream_limit = cfg.unregistered_concurrent_streams
        self.seen_request = False
        self.closed = False
        self.got_preface = False
        self.preface_deadline = now + cfg.h2_preface_timeout
        self.first_request_deadline = now + cfg.first_request_timeout
        self.idle_since = now
        #: DATA frames built here (`data_frames`) and what the library held before them, in order
        self._frames: list[bytes] = []
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

    # -- output --

    def initiate(self, early: bytes = b"") -> bytes:
        """The first bytes after the Noise response: the early payload and our HTTP/2 preface."""
        self.h2.initiate_connection()
        extra = self.cfg.max_connection_body - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        return self.noise.encrypt(early + self.h2.data_to_send())

    def roomy(self, room: int) -> bool:
        """Whether the client's windows leave at least `room` bytes to send, on the connection
        and on every stream being answered: credits it sends now are not needed soon."""
        h = self.h2
        if h.outbound_flow_control_window < room:
            return False
        for stream_id in self.streams:
            stream = h.streams.get(stream_id)
            if stream is not None and stream.outbound_flow_control_window < room:
                return False
        return True

    def has_output(self) -> bool:
        """Whether `data_to_send` would return anything, without taking it (the library's buffer
        is read defensively: a version without it always "has" output)."""
        return bool(self._frames) or bool(getattr(self.h2, "_data_to_send", True))

    def data_to_send(self) -> bytes:
        """Everything queued, as Noise records (b"" when nothing is)."""
        data = self.h2.data_to_send()
        if self._frames:
            self._frames.append(data)
            data = b"".join(self._frames)
            self._frames = []
        return self.noise.encrypt(data) if data else b""

    def _queue_frames(self, frames: bytes) -> None:
        """Queue DATA frames built outside the library (`data_frames`) after what it holds."""
        held = self.h2.data_to_send()
        if held:
            self._frames.append(held)
        self._frames.append(frames)

    def send_headers(self, st: StreamState, headers: list[tuple[str, str]]) -> None:
        if st.gone or self.closed:
            raise StreamGone(f"stream {st.id} is gone")
        try:
            self.h2.send_headers(st.id, headers)
        except h2.exceptions.ProtocolError as exc:
            st.gone = True
            raise StreamGone(f"stream {st.id}: {exc}") from None

    def send_data(self, st: StreamState, view: memoryview, pos: int, *, end: bool) -> int:
        """Queue body bytes from `pos` as far as flow control allows; the new position (equal to
        ``len(view)`` when all went, the stream then ended if `end`)."""
        if st.gone or self.closed:
            raise StreamGone(f"stream {st.id} is gone")
        h = self.h2
        try:
            room = min(h.local_flow_control_window(st.id), len(view) - pos)
            if room > 0:
                self._queue_frames(data_frames(h, st.id, view[pos : pos + room]))
                pos += room
            if pos == len(view) and end:
                h.end_stream(st.id)  # an empty DATA frame with END_STREAM after the body
        except h2.exceptions.ProtocolError as exc:
            st.gone = True
            raise StreamGone(f"stream {st.id}: {exc}") from None
        return pos

    def send_data_now(self, st: StreamState, data: bytes) -> bytes | None:
        """All of `data` on `st` at once, as Noise records, or None when the window is too small
        (or the stream is closing): the caller then waits with `send_data`."""
        if self.closed or st.gone:
            return None
        h = self.h2
        try:
            stream = h.streams[st.id]
            if min(h.outbound_flow_control_window, stream.outbound_flow_control_window) < len(data):
                return None
            frames = data_frames(h, st.id, data)
        except (KeyError, h2.exceptions.ProtocolError):
            return None
        # data_to_send's work inline, for the flusher's one small write per session
        held = h.data_to_send()
        if self._frames:
            self._frames += (held, frames)
            frames = b"".join(self._frames)
            self._frames = []
        elif held:
            frames = held + frames
        return self.noise.encrypt(frames)

    def reset(self, st: StreamState, code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        """Reset a stream whose handler failed after its response started."""
        if st.gone or self.closed:
            return
        st.gone = True
        try:
            self.h2.reset_stream(st.id, code)
        except h2.exceptions.ProtocolError:
            pass

    def goaway(self) -> None:
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            pass

    def close(self) -> None:
        """The connection is gone (failed or ended): every stream with it."""
        self.closed = True
        for st in self.streams.values():
            st.gone = True

    def teardown(self) -> None:
        """Give back this connection's share of the listener's accounting (once, at the end)."""
        self.close()
        for st in self.unfinished.values():
            self._account(-len(st.body))
        self.stats.open_streams -= len(self.streams)
        self.unfinished.clear()
        self.streams.clear()
        # h2's connection refers to itself through its table of frame handlers (bound methods),
        # so only the cyclic collector could free it and the ~45 objects it holds: in a join
        # storm thousands of closed connections piled up for one full collection, a pause of
        # 0.7-0.9 s. Without the table, reference counting frees them now.
        if hasattr(self.h2, "_frame_dispatch_table"):
            self.h2._frame_dispatch_table = None

    # -- limits and deadlines --

    def mark_registered(self) -> None:
        """The connection's machine key has a node: the full concurrent-stream limit (sent with
        the next write)."""
        if self.registered or self.closed:
            return
        self.registered = True
        self.stream_limit = self.cfg.max_concurrent_streams
        try:
            self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.stream_limit})
        except h2.exceptions.ProtocolError:
            pass

    def _account(self, n: int) -> None:
        self.buffered += n
        stats = self.stats
        stats.buffered_body_bytes += n
        if stats.buffered_body_bytes > stats.peak_buffered_body_bytes:
            stats.peak_buffered_body_bytes = stats.buffered_body_bytes

    def _release(self, st: StreamState) -> None:
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

    def forget(self, st: StreamState, now: float) -> None:
        """The stream is done with (its handler returned, or it was refused or reset)."""
        if self.unfinished.pop(st.id, None) is not None:
            self._release(st)
        if self.streams.pop(st.id, None) is not None:
            self.stats.open_streams -= 1
            if not self.streams:
                self.idle_since = now

    def next_deadline(self) -> float:
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

    def on_deadline(self, now: float) -> tuple[int, str | None]:
        """Act on the deadlines that have come: late requests get 408 and a reset; a connection
        that missed its preface or first request, or sat idle, is to be closed (after a GOAWAY,
        except for a missing preface). Returns (requests timed out, reason to close or None)."""
        if not self.got_preface:
            self.stats.connections_timed_out += 1
            return 0, "no HTTP/2 preface in time"
        late = [st for st in self.unfinished.values() if st.deadline <= now]
        if late:
            self.stats.requests_timed_out += len(late)
            for st in late:
                self._refuse(st, 408, now)
        if not self.seen_request and now >= self.first_request_deadline:
            self.stats.connections_timed_out += 1
            self.goaway()
            return len(late), "no request in time after the upgrade"
        if self.seen_request and not self.streams and now >= self.idle_since + self.cfg.h2_idle_timeout:
            self.goaway()
            return len(late), "idle HTTP/2 connection"
        return len(late), None

    # -- input --

    def receive_data(self, data: bytes, now: float) -> list[Any]:
        """Feed the client's bytes. Raises ControlProtocolError when the connection must close."""
        try:
            chunks = self.noise.receive_data(data)
        except noise.RemoteProtocolError as exc:
            raise ControlProtocolError(f"noise: {exc}") from None
        out: list[Any] = []
        self.only_credits = bool(chunks)
        for chunk in chunks:
            opened = window_updates(self.h2, chunk)
            if opened is not None:
                out.extend(WindowOpened(stream_id) for stream_id in opened)
                continue
            self.only_credits = False
            try:
                events = self.h2.receive_data(chunk)
            except h2.exceptions.ProtocolError as exc:
                raise ControlProtocolError(f"h2: {exc!r}") from None  # h2 queued a GOAWAY
            for ev in events:
                self._on_event(ev, now, out)
            if self.closed:
                break
        return out

    def _on_event(self, ev: Any, now: float, out: list[Any]) -> None:
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.got_preface = True
            out.append(WindowOpened(0))
        elif isinstance(ev, h2.events.RequestReceived):
            self._on_request(ev, now)
        elif isinstance(ev, h2.events.DataReceived):
            self._on_data(ev, now)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.unfinished.get(ev.stream_id)
            if st is not None:
                out.append(self._dispatch(st))
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.gone = True
                if st.dispatched:
                    out.append(StreamReset(st.id))
                else:
                    self.forget(st, now)
        elif isinstance(ev, h2.events.WindowUpdated):
            out.append(WindowOpened(ev.stream_id))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.close()
            out.append(ConnectionTerminated(f"client sent GOAWAY ({ev.error_code!r})"))

    def _on_data(self, ev: h2.events.DataReceived, now: float) -> None:
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
            self.stats.bodies_refused += 1
            self._refuse(st, 413, now)
        elif self.stats.buffered_body_bytes > self.cfg.max_buffered_bodies:
            self.stats.bodies_refused += 1
            self._refuse(st, 503, now)

    def _on_request(self, ev: h2.events.RequestReceived, now: float) -> None:
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
        headers = headers_dict(regular)
        st = StreamState(ev.stream_id, method, path, headers, now + self.cfg.request_body_timeout)
        self.streams[st.id] = st
        self.unfinished[st.id] = st
        self.stats.open_streams += 1
        declared = headers.get("content-length", "")
        if len(declared) > 12 or (declared.isdigit() and int(declared) > self.cfg.max_request_body):
            self.stats.bodies_refused += 1
            self._refuse(st, 413, now)

    def _refuse(self, st: StreamState, status: int, now: float) -> None:
        self.forget(st, now)
        st.gone = True
        try:
            self.h2.send_headers(st.id, [(":status", str(status)), ("content-length", "0")], end_stream=True)
            self.h2.reset_stream(st.id, h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass

    def _dispatch(self, st: StreamState) -> RequestReceived:
        st.dispatched = True
        del self.unfinished[st.id]
        body = bytes(st.body)
        self._release(st)  # handed to the handler: the client may send the next request's bytes
        return RequestReceived(st, body)


_SERVER_OPEN = h2.connection.ConnectionState.SERVER_OPEN
_HALF_CLOSED_REMOTE = h2.stream.StreamState.HALF_CLOSED_REMOTE
_DATA_FRAME_HEAD = struct.Struct(">BHBBI")  # length (24 bits, as 8 + 16), type 0 (DATA), no flags, stream


_WINDOW_UPDATE_HEAD = b"\x00\x00\x04\x08"  # length 4, type WINDOW_UPDATE (its flags mean nothing)
_WINDOW_UPDATE_SIZE = 13
_WINDOW_STATES = (h2.stream.StreamState.OPEN, _HALF_CLOSED_REMOTE)
_LARGEST_WINDOW = 2**31 - 1


def _holds_anything(frames: Any) -> bool:
    """Whether the library's frame buffer holds bytes of a frame, of the preface, or of a header
    block; its private fields, read defensively: a version without them holds "something"."""
    try:
        return bool(frames._data or frames._preamble_len or frames._headers_buffer)
    except AttributeError:
        return True


def window_updates(h: h2.connection.H2Connection, chunk: bytes | memoryview) -> list[int] | None:
    """Apply `chunk` to `h`'s flow-control windows as the library would, when it is nothing but
    whole WINDOW_UPDATE frames that the library would take without a word: the connection open,
    no partial frame held, every increment positive, every stream open (or half-closed by the
    client) and no window pushed past its limit. Returns the stream ids (0: the connection) whose
    windows grew, or None, having changed nothing, for anything else (the library then judges
    it, errors included). tailscaled's HTTP/2 client credits every 4 KiB it reads with one or two
    of these; through the library they cost a streaming session more than its messages did."""
    size = len(chunk)
    if not size or size % _WINDOW_UPDATE_SIZE or size > 16 * _WINDOW_UPDATE_SIZE:
        return None
    if h.state_machine.state is not _SERVER_OPEN:
        return None
    if _holds_anything(h.incoming_buffer):
        return None
    grows: dict[int, int] = {}
    for pos in range(0, size, _WINDOW_UPDATE_SIZE):
        if chunk[pos : pos + 4] != _WINDOW_UPDATE_HEAD:
            return None
        stream_id = int.from_bytes(chunk[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        increment = int.from_bytes(chunk[pos + 9 : pos + 13], "big") & 0x7FFFFFFF
        if not increment:
            return None
        grows[stream_id] = grows.get(stream_id, 0) + increment
    streams = h.streams
    for stream_id, increment in grows.items():
        if stream_id:
            stream = streams.get(stream_id)
            if stream is None or stream.state_machine.state not in _WINDOW_STATES:
                return None
            window = stream.outbound_flow_control_window
        else:
            window = h.outbound_flow_control_window
        if window + increment > _LARGEST_WINDOW:
            return None
    for stream_id, increment in grows.items():
        if stream_id:
            streams[stream_id].outbound_flow_control_window += increment
        else:
            h.outbound_flow_control_window += increment
    return list(grows)


def data_frames(h: h2.connection.H2Connection, stream_id: int, data: bytes | memoryview) -> bytes:
    """`data` as the DATA frames `H2Connection.send_data` would queue for it chunk by chunk (no
    padding, no END_STREAM), with the same accounting: the state machines take SEND_DATA and both
    flow-control windows shrink by its length. The caller has checked the window. A first map is
    dozens of frames, and the library's path (a frame object, a serialisation and a buffer append
    per frame, 9 us each) cost more than sealing them; the frames are returned, not queued."""
    size = len(data)
    if not size:
        return b""
    stream = h.streams[stream_id]
    # a streaming response's state (the request ended, the connection open) is one SEND_DATA
    # leaves as it is: skip the library's transition lookups then (4 % of a one-change pass)
    if h.state_machine.state is not _SERVER_OPEN:
        h.state_machine.process_input(h2.connection.ConnectionInputs.SEND_DATA)
    if stream.state_machine.state is not _HALF_CLOSED_REMOTE:
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_DATA)
    step = h.max_outbound_frame_size
    if size <= step:
        stream.outbound_flow_control_window -= size
        h.outbound_flow_control_window -= size
        return _DATA_FRAME_HEAD.pack(size >> 16, size & 0xFFFF, 0, 0, stream_id) + data
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for pos in range(0, size, step):
        part = view[pos : pos + step]
        n = len(part)
        parts.append(_DATA_FRAME_HEAD.pack(n >> 16, n & 0xFFFF, 0, 0, stream_id))
        parts.append(part)
    stream.outbound_flow_control_window -= size
    h.outbound_flow_control_window -= size
    return b"".join(parts)
