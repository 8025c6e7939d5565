"""A Trio client for the TS2021 control protocol, for our tests and load tools (not for production nodes).

* :func:`http_request` — one plain HTTP/1.1 request (h11) on a fresh TCP connection.
* :func:`fetch_server_key` — ``GET /key?v=N`` → the server's Noise public key.
* :func:`open_noise_client` — async context manager: ``/ts2021`` upgrade, Noise initiator, early payload,
  HTTP/2 client (h2) over Noise records.  The yielded :class:`NoiseClient` multiplexes any number of
  concurrent requests on the one connection:

  - ``await client.request(method, path, body, headers)`` → :class:`Response`
  - ``await client.post_json(path, obj)`` → :class:`Response` (``.json()`` parses the body)
  - ``async with client.stream(method, path, body) as s:`` → :class:`ResponseStream` (``async for chunk
    in s``; leaving the block early resets the stream with CANCEL)
  - ``await client.sink(method, path, body, on_data)`` hands the response body to ``on_data`` piece by
    piece, read without h2 after the headers (cheap enough for thousands of map streams in a load tool);
    with ``reader=`` a :class:`SinkReader` it is read by one task for every such connection
  - ``async with client.map_stream(map_request) as maps:`` → ``async for msg in maps`` yields decoded
    MapResponse dicts (framing per :mod:`trioscale.shared.proto.mapframe`).

Everything lives in per-instance state and tasks, so a load tool can run thousands of clients in one
process.
"""

from __future__ import annotations

import base64
import json
import math
import os
import select
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import trio

from trioscale.shared.proto import keys, mapframe, noise

__all__ = [
    "DEFAULT_VERSION",
    "ControlClientError",
    "StreamReset",
    "Response",
    "ResponseStream",
    "MapStream",
    "NoiseClient",
    "SinkReader",
    "http_request",
    "fetch_server_key",
    "open_noise_client",
]

DEFAULT_VERSION = 130
_RECV_SIZE = 65536
#: the SETTINGS_MAX_FRAME_SIZE Go's HTTP/2 client sends (its MaxReadFrameSize default, 1 MiB)
GO_MAX_READ_FRAME_SIZE = 1 << 20
_END = object()


class ControlClientError(Exception):
    """The server or the connection failed (HTTP status, protocol error, connection lost)."""


class StreamReset(ControlClientError):
    """The server reset the stream."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _hdict(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in items:
        k = (k.decode("latin-1") if isinstance(k, bytes) else k).lower()
        v = v.decode("latin-1") if isinstance(v, bytes) else v
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _h11_next(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECV_SIZE))
            continue
        return ev


async def http_request(
    host: str,
    port: int,
    method: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 10.0,
) -> Response:
    """One HTTP/1.1 request on a new connection (``Connection: close``)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            hdrs = [("Host", _host_header(host, port)), ("Connection", "close")]
            hdrs += list(headers)
            if body or method.upper() in ("POST", "PUT", "PATCH"):
                hdrs.append(("Content-Length", str(len(body))))
            out = conn.send(h11.Request(method=method, target=target, headers=hdrs))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            ev = await _h11_next(conn, stream)
            if not isinstance(ev, h11.Response):
                raise ControlClientError(f"unexpected {ev!r}")
            data = bytearray()
            while True:
                e = await _h11_next(conn, stream)
                if isinstance(e, h11.Data):
                    data += e.data
                elif isinstance(e, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            return Response(ev.status_code, _hdict(ev.headers), bytes(data))


async def fetch_server_key(host: str, port: int, version: int = DEFAULT_VERSION, *, timeout: float = 10.0) -> bytes:
    """``GET /key?v=<version>`` → the server's Noise public key (32 raw bytes)."""
    resp = await http_request(host, port, "GET", f"/key?v={version}", timeout=timeout)
    if resp.status != 200:
        raise ControlClientError(f"/key: HTTP {resp.status}: {resp.body[:200]!r}")
    try:
        key = keys.MACHINE.from_json(resp.json().get("publicKey"))
    except (ValueError, AttributeError) as exc:
        raise ControlClientError(f"/key: bad response: {exc}") from None
    if key is None:
        raise ControlClientError("/key: server has no noise key")
    return key


class _ClientStream:
    __slots__ = ("id", "send", "recv", "headers_ready", "status", "headers", "window", "closed", "error", "sink")

    def __init__(self, stream_id: int, sink: Callable[[bytes], None] | None = None) -> None:
        self.id = stream_id
        self.sink = sink
        self.send, self.recv = trio.open_memory_channel[Any](math.inf)
        self.headers_ready = trio.Event()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.window = trio.Event()
        self.closed = False  # no more data will arrive
        self.error: Exception | None = None


class _RawSink:
    """The one stream a connection reads without h2 once its response headers are in
    (:meth:`NoiseClient.sink`): DATA goes straight to ``on_data``; flow control is ours."""

    __slots__ = ("st", "on_data", "buf", "stream_unacked", "conn_unacked", "threshold", "done", "error")

    def __init__(self, st: _ClientStream, threshold: int) -> None:
        self.st = st
        self.on_data: Callable[[bytes], None] = st.sink  # type: ignore[assignment]
        self.buf = bytearray()
        self.stream_unacked = self.conn_unacked = 0
        #: window credit is handed back in steps this big (half the stream's initial window)
        self.threshold = threshold
        self.done = trio.Event()
        self.error: Exception | None = None

    def finish(self, error: Exception | None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


#: an HTTP/2 frame header (RFC 9113, section 4.1): length (3 bytes), type, flags, stream id (4)
_HEADER = 9


def _frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + stream_id.to_bytes(4, "big") + payload


def _length_at(buf: bytearray | bytes, pos: int) -> int:
    """The payload length of the frame whose header starts at `pos`."""
    return int.from_bytes(buf[pos : pos + 3], "big")


def _complete(buf: bytearray | bytes, limit: int) -> int:
    """Where the last whole HTTP/2 frame in `buf` ends (a frame over `limit` counts as whole,
    so that h2 sees it and refuses it)."""
    pos, n = 0, len(buf)
    while n - pos >= _HEADER:
        length = _length_at(buf, pos)
        if length > limit:
            return n
        if n - pos - _HEADER < length:
            break
        pos += _HEADER + length
    return pos


# HTTP/2 frame types and flags the raw sink acts on (RFC 9113, section 6)
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
_END_STREAM, _ACK, _PADDED = 0x1, 0x1, 0x8


class ResponseStream:
    """A response whose body is consumed incrementally; iterate for body chunks."""

    def __init__(self, client: NoiseClient, st: _ClientStream) -> None:
        self._client = client
        self._st = st
        self.status = st.status
        self.headers = st.headers
        self.finished = False

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        if self.finished:
            raise StopAsyncIteration
        item = await self._st.recv.receive()
        if item is _END:
            self.finished = True
            raise StopAsyncIteration
        if isinstance(item, Exception):
            self.finished = True
            raise item
        data, flow = item
        await self._client._ack(self._st.id, flow)
        return data

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Cancel the stream (RST_STREAM CANCEL) unless it has already finished."""
        if not self.finished:
            self.finished = True
            await self._client._reset(self._st.id)


class MapStream:
    """Iterates decoded MapResponse messages of a ``/machine/map`` response."""

    def __init__(self, body: ResponseStream, compress: str | None, max_frame_size: int) -> None:
        self.response = body
        self._decoder = mapframe.MapStreamDecoder(compress, max_frame_size=max_frame_size)
        self._ready: list[Any] = []

    def __aiter__(self) -> MapStream:
        return self

    async def __anext__(self) -> Any:
        while not self._ready:
            try:
                chunk = await self.response.__anext__()
            except StopAsyncIteration:
                if self._decoder.buffered:
                    raise ControlClientError("map stream ended inside a message") from None
                raise
            self._ready.extend(self._decoder.receive_messages(chunk))
        return self._ready.pop(0)


class NoiseClient:
    """One TS2021 connection.  Create with :func:`open_noise_client`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        handshake: noise.Handshake,
        machine_private_key: bytes,
        initial_window_size: int,
    ) -> None:
        self._stream = stream
        self._noise = handshake.connection
        self.handshake = handshake
        self.version = handshake.version
        self.server_public_key = handshake.peer_static
        self.machine_private_key = machine_private_key
        self.machine_key = keys.public_key(machine_private_key)
        self.early_payload: dict[str, Any] | None = None
        self.challenge_public_key: bytes | None = None
        self._early: noise.EarlyPayloadParser | None = noise.EarlyPayloadParser()
        self._early_done = trio.Event()
        self._lock = trio.Lock()
        self._streams: dict[int, _ClientStream] = {}
        self._closed: Exception | None = None
        self._closed_event = trio.Event()
        #: stream id -> error code of each RST_STREAM the server sent (hostile-client tests read it)
        self.resets: dict[int, int] = {}
        #: body bytes sent by open_unfinished (requests that never end)
        self.sent_unfinished = 0
        self._ignore_stream_limit = False
        self._conn_window = trio.Event()
        #: plaintext not yet handed to h2: h2 is only given whole frames, so that a raw sink can
        #: take over the byte stream at a frame boundary
        self._inbuf = bytearray()
        self._sink_pending = False
        self._raw: _RawSink | None = None
        #: the SinkReader the sink's connection is handed to once its headers are in (None: this
        #: connection's own reader task reads it), and the socket it reads there
        self._sink_reader: SinkReader | None = None
        self._sink_fd = -1
        #: the connection's nursery (open_noise_client's), for the sends a SinkReader cannot wait on
        self._nursery: trio.Nursery | None = None
        self._initial_window_size = initial_window_size
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
                # as Tailscale's client (Go's HTTP/2 client) says it
                h2.settings.SettingCodes.MAX_FRAME_SIZE: GO_MAX_READ_FRAME_SIZE,
            },
        )
        # h2 reads settings given at creation as in force already, so it never applies this one
        # when the server acknowledges it: set the limit it checks frames against too
        self._h2.max_inbound_frame_size = GO_MAX_READ_FRAME_SIZE
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(1 << 30)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- plumbing --

    async def _flush_locked(self) -> None:
        await self._send_locked(self._h2.data_to_send())

    async def _send_locked(self, data: bytes) -> None:
        if data and self._closed is None:
            records = self._noise.encrypt(data)
            try:
                with trio.CancelScope(shield=True):
                    with trio.fail_after(30):
                        await self._stream.send_all(records)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as exc:
                self._shutdown(ControlClientError(f"connection lost: {exc!r}"))
                raise self._closed from None  # type: ignore[misc]

    def _shutdown(self, exc: Exception) -> None:
        if self._closed is None:
            self._closed = exc
        self._closed_event.set()
        for st in self._streams.values():
            if not st.closed:
                st.closed = True
                st.send.send_nowait(exc)
            st.headers_ready.set()
            st.window.set()
        if self._raw is not None:
            self._raw.finish(exc)
        if self._sink_reader is not None:
            self._sink_reader.drop(self)  # a closed socket reads as ready until it is let go
        self._early_done.set()

    async def _process(self, data: bytes) -> None:
        chunks = self._noise.receive_data(data)
        if self._raw is not None:
            # the sink's bytes: one read's records handed on as one piece (a first map of 10,000
            # peers is 330 records, and each call costs more than its record's bytes)
            if chunks:
                await self._raw_receive(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            return
        for chunk in chunks:
            if self._early is not None:
                if not self._early.receive_data(chunk):
                    continue
                self.early_payload = self._early.payload
                self.challenge_public_key = self._early.challenge_public_key
                chunk = self._early.rest
                self._early = None
                self._early_done.set()
                if not chunk:
                    continue
            if self._raw is not None:
                await self._raw_receive(chunk)
                continue
            buf = self._inbuf
            buf += chunk
            end = _complete(buf, self._h2.max_inbound_frame_size)
            if not end:
                continue
            async with self._lock:
                if not self._sink_pending:
                    whole = bytes(buf[:end])
                    del buf[:end]
                    for ev in self._h2.receive_data(whole):
                        self._on_event(ev)
                else:
                    # frame by frame, so that the response headers of the sink's stream switch
                    # the rest of the bytes over to it
                    pos = 0
                    while pos < end and self._raw is None:
                        n = _HEADER + _length_at(buf, pos)
                        for ev in self._h2.receive_data(bytes(buf[pos : pos + n])):
                            self._on_event(ev)
                        pos += n
                    del buf[:pos]
                await self._flush_locked()
            if self._raw is not None and buf:
                rest = bytes(buf)
                buf.clear()
                await self._raw_receive(rest)

    async def _raw_receive(self, chunk: bytes) -> None:
        out = self._raw_frames(chunk)
        if out:
            async with self._lock:
                await self._send_locked(out)

    def _raw_frames(self, chunk: bytes) -> bytes:
        """The sink's byte stream: HTTP/2 frames parsed by hand, DATA of its stream handed on;
        returns the frames to send back (SETTINGS and PING answered, window credit returned in
        large steps)."""
        raw = self._raw
        assert raw is not None
        buf = raw.buf
        buf += chunk
        sid = raw.st.id
        out = []
        pos, size = 0, len(buf)
        while size - pos >= _HEADER:
            length = _length_at(buf, pos)
            if size - pos - _HEADER < length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            fsid = int.from_bytes(buf[pos + 5 : pos + _HEADER], "big") & 0x7FFFFFFF
            start, pos = pos + _HEADER, pos + _HEADER + length
            if ftype == _DATA:
                raw.conn_unacked += length
                if fsid == sid and not raw.done.is_set():
                    raw.stream_unacked += length
                    if flags & _PADDED:
                        raw.on_data(bytes(buf[start + 1 : pos - buf[start]]))
                    else:
                        raw.on_data(bytes(buf[start:pos]))
                    if flags & _END_STREAM:
                        raw.finish(None)
            elif fsid == sid and ftype == _HEADERS and flags & _END_STREAM:
                raw.finish(None)  # trailers
            elif fsid == sid and ftype == _RST_STREAM:
                code = int.from_bytes(buf[start:pos], "big")
                self.resets[sid] = code
                raw.finish(StreamReset(f"stream {sid} reset: {code}"))
            elif ftype == _SETTINGS and not flags & _ACK:
                out.append(_frame(_SETTINGS, _ACK, 0))
            elif ftype == _PING and not flags & _ACK:
                out.append(_frame(_PING, _ACK, 0, bytes(buf[start:pos])))
            elif ftype == _GOAWAY:
                self._shutdown(ControlClientError("server sent GOAWAY"))
                return b""
        del buf[:pos]
        if raw.conn_unacked >= raw.threshold:
            out.append(_frame(_WINDOW_UPDATE, 0, 0, raw.conn_unacked.to_bytes(4, "big")))
            raw.conn_unacked = 0
        if raw.stream_unacked >= raw.threshold and not raw.done.is_set():
            out.append(_frame(_WINDOW_UPDATE, 0, sid, raw.stream_unacked.to_bytes(4, "big")))
            raw.stream_unacked = 0
        return b"".join(out)

    async def _send_frames(self, frames: bytes) -> None:
        async with self._lock:
            try:
                await self._send_locked(frames)
            except ControlClientError:
                pass  # the connection is shut down, and the sink told why

    def _sink_read(self) -> None:
        """The SinkReader found the socket readable: one read, handled at once."""
        try:
            data = os.read(self._sink_fd, _RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._shutdown(ControlClientError(f"connection lost: {exc!r}"))
            return
        if not data:
            self._shutdown(ControlClientError("server closed the connection"))
            return
        try:
            chunks = self._noise.receive_data(data)
            out = self._raw_frames(chunks[0] if len(chunks) == 1 else b"".join(chunks)) if chunks else b""
        except noise.NoiseError as exc:
            self._shutdown(ControlClientError(f"protocol error: {exc!r}"))
            return
        if out and self._closed is None:
            assert self._nursery is not None
            self._nursery.start_soon(self._send_frames, out)

    def _hand_over(self) -> bool:
        """Give the connection to its SinkReader once the sink's headers are in; whether it was."""
        if self._raw is None or self._sink_reader is None:
            return False
        self._sink_fd = self._stream.socket.fileno()  # type: ignore[attr-defined]
        self._sink_reader.adopt(self)
        return True

    async def _reader(self, initial: bytes = b"") -> None:
        try:
            if initial:
                await self._process(initial)
            while not self._hand_over():
                data = await self._stream.receive_some(_RECV_SIZE)
                if not data:
                    raise ControlClientError("server closed the connection")
                await self._process(data)
        except (noise.NoiseError, h2.exceptions.ProtocolError) as exc:
            self._shutdown(ControlClientError(f"protocol error: {exc!r}"))
        except ControlClientError as exc:
            self._shutdown(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._shutdown(ControlClientError(f"connection lost: {exc!r}"))

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            st = self._streams.get(ev.stream_id)
            if st is not None:
                h = dict(ev.headers)
                st.status = int(h.get(":status", "0"))
                st.headers = _hdict((k, v) for k, v in ev.headers if not k.startswith(":"))
                if st.sink is not None:
                    self._sink_pending = False
                    if st.status == 200:
                        self._raw = _RawSink(st, max(self._initial_window_size // 2, 1))
                st.headers_ready.set()
        elif isinstance(ev, h2.events.DataReceived):
            st = self._streams.get(ev.stream_id)
            if st is None or st.closed:
                if ev.flow_controlled_length:
                    self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            else:
                st.send.send_nowait((ev.data, ev.flow_controlled_length))
        elif isinstance(ev, h2.events.StreamEnded):
            st = self._streams.get(ev.stream_id)
            if self._raw is not None and self._raw.st is st:
                self._raw.finish(None)  # a 200 without a body
            if st is not None and not st.closed:
                st.closed = True
                st.send.send_nowait(_END)
                st.headers_ready.set()
        elif isinstance(ev, h2.events.StreamReset):
            self.resets[ev.stream_id] = int(ev.error_code)
            st = self._streams.get(ev.stream_id)
            if st is not None:
                if not st.closed:
                    st.closed = True
                    st.send.send_nowait(StreamReset(f"stream {ev.stream_id} reset: {ev.error_code!r}"))
                st.headers_ready.set()
                st.window.set()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for st in self._streams.values():
                st.window.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._shutdown(ControlClientError(f"server sent GOAWAY ({ev.error_code!r})"))

    async def _ack(self, stream_id: int, flow: int) -> None:
        if not flow:
            return
        async with self._lock:
            if self._closed is not None:
                return
            try:
                self._h2.acknowledge_received_data(flow, stream_id)
            except h2.exceptions.ProtocolError:
                return
            await self._flush_locked()

    async def _reset(self, stream_id: int) -> None:
        async with self._lock:
            st = self._streams.pop(stream_id, None)
            if st is not None:
                st.closed = True
            if self._closed is not None:
                return
            try:
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                return
            await self._flush_locked()

    async def _open(self, method: str, path: str, body: bytes, headers: Sequence[tuple[str, str]],
                    sink: Callable[[bytes], None] | None = None) -> _ClientStream:
        await self._early_done.wait()
        async with self._lock:
            if self._closed is not None:
                raise self._closed
            if sink is not None:
                if self._sink_pending or self._raw is not None:
                    raise ControlClientError("a connection carries one sink")
                self._sink_pending = True
            sid = self._h2.get_next_available_stream_id()
            st = _ClientStream(sid, sink)
            self._streams[sid] = st
            hdrs = [(":method", method), (":scheme", "http"), (":authority", "unused"), (":path", path)]
            hdrs += [(k.lower(), v) for k, v in headers]
            if body:
                hdrs.append(("content-length", str(len(body))))
            self._h2.send_headers(sid, hdrs, end_stream=not body)
            await self._flush_locked()
        view = memoryview(body)
        pos = 0
        while pos < len(view):
            async with self._lock:
                if self._closed is not None:
                    raise self._closed
                if st.closed:
                    break  # server answered (or reset) early
                while pos < len(view):
                    n = min(self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size, len(view) - pos)
                    if n <= 0:
                        break
                    self._h2.send_data(sid, bytes(view[pos : pos + n]), end_stream=pos + n == len(view))
                    pos += n
                await self._flush_locked()
                if pos < len(view):
                    st.window = trio.Event()
                    waiter = st.window
            if pos < len(view):
                await waiter.wait()
        return st

    # -- public API --

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> AsyncIterator[ResponseStream]:
        """Send a request; yield once the response headers arrived.  Leaving early cancels the stream."""
        st = await self._open(method, path, body, headers)
        rs: ResponseStream | None = None
        try:
            await st.headers_ready.wait()
            if st.status == 0:
                item = st.recv.receive_nowait() if st.closed else None
                raise item if isinstance(item, Exception) else ControlClientError("no response headers")
            rs = ResponseStream(self, st)
            yield rs
        finally:
            with trio.CancelScope(shield=True):
                if rs is None or not rs.finished:
                    await self._reset(st.id)
                else:
                    self._streams.pop(st.id, None)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> Response:
        """A request whose whole response body is read."""
        async with self.stream(method, path, body, headers) as rs:
            data = await rs.read_all()
            return Response(rs.status, rs.headers, data)

    async def sink(self, method: str, path: str, body: bytes, on_data: Callable[[bytes], None],
                   reader: SinkReader | None = None) -> None:
        """Send a request and hand each piece of its response body to ``on_data`` as it arrives,
        until the server ends the stream. For load tools holding thousands of long responses (map
        streams): once a 200's headers are in, the rest of the connection is read without h2, a
        header parse and a call per DATA frame instead of h2's state machine, event and frame
        repr. The connection takes no other request after that.

        With `reader`, past the headers the connection is read by that :class:`SinkReader`
        (one task for all of a fleet's sinks) instead of by a task of its own.

        A status other than 200 raises :class:`ControlClientError` with the body text, a reset
        stream :class:`StreamReset`, a lost connection :class:`ControlClientError`."""
        self._sink_reader = reader
        try:
            st = await self._open(method, path, body, (), sink=on_data)
            await st.headers_ready.wait()
            raw = self._raw
            if raw is None or raw.st is not st:
                self._sink_pending = False  # no 200 came (reset, or the connection failed)
                if self._closed is not None:
                    raise self._closed
                text = await ResponseStream(self, st).read_all()
                self._streams.pop(st.id, None)
                raise ControlClientError(f"{path}: HTTP {st.status}: {text[:200]!r}")
            await raw.done.wait()
            if raw.error is not None:
                raise raw.error
        finally:
            if reader is not None:
                reader.drop(self)

    async def post_json(self, path: str, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return await self.request("POST", path, body, headers)

    @asynccontextmanager
    async def map_stream(
        self,
        map_request: Mapping[str, Any],
        *,
        path: str = "/machine/map",
        max_frame_size: int = mapframe.MAX_FRAME_SIZE,
    ) -> AsyncIterator[MapStream]:
        """POST a MapRequest and iterate its decoded MapResponse messages.

        The compression follows ``map_request["Compress"]``.  A non-200 status raises
        :class:`ControlClientError` with the body text.
        """
        body = json.dumps(dict(map_request), separators=(",", ":")).encode()
        async with self.stream("POST", path, body) as rs:
            if rs.status != 200:
                text = await rs.read_all()
                raise ControlClientError(f"map: HTTP {rs.status}: {text[:200]!r}")
            yield MapStream(rs, map_request.get("Compress") or None, max_frame_size)

    # -- a hostile client's moves (for tests and benchmarks/hostile.py) --

    async def wait_closed(self) -> Exception:
        """Wait until the connection is gone (closed by the server or lost); returns why."""
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    def ignore_stream_limit(self) -> None:
        """Let :meth:`open_unfinished` open streams past the server's SETTINGS_MAX_CONCURRENT_STREAMS,
        as a hostile peer would."""
        self._ignore_stream_limit = True

    async def open_unfinished(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> int:
        """Open a stream and send as much of ``body`` as flow control allows right now, without ever
        ending the request; returns the stream id (see :meth:`stream_outcome`)."""
        await self._early_done.wait()
        async with self._lock:
            if self._closed is not None:
                raise self._closed
            if self._ignore_stream_limit:
                self._h2.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
                self._h2.remote_settings.acknowledge()
            sid = self._h2.get_next_available_stream_id()
            st = _ClientStream(sid)
            self._streams[sid] = st
            hdrs = [(":method", method), (":scheme", "http"), (":authority", "unused"), (":path", path)]
            hdrs += [(k.lower(), v) for k, v in headers]
            self._h2.send_headers(sid, hdrs)
            view = memoryview(body)
            pos = 0
            while pos < len(view):
                n = min(self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size, len(view) - pos)
                if n <= 0:
                    break
                self._h2.send_data(sid, bytes(view[pos : pos + n]))
                pos += n
            self.sent_unfinished += pos
            await self._flush_locked()
        return sid

    async def stream_outcome(self, stream_id: int) -> tuple[int, int | None]:
        """Wait until a stream opened with :meth:`open_unfinished` is over: ``(status, reset code)``
        (status 0 if no response came; reset code None if it ended without RST_STREAM)."""
        st = self._streams[stream_id]
        while True:
            item = await st.recv.receive()
            if item is _END:
                return st.status, self.resets.get(stream_id)
            if isinstance(item, Exception):
                return st.status, self.resets.get(stream_id)
            await self._ack(stream_id, item[1])

    async def ping(self) -> None:
        """Send an HTTP/2 PING (traffic that is not a request)."""
        async with self._lock:
            if self._closed is not None:
                raise self._closed
            self._h2.ping(b"trioscal")
            await self._flush_locked()

    async def aclose(self) -> None:
        async with self._lock:
            if self._closed is None:
                try:
                    self._h2.close_connection()
                    await self._flush_locked()
                except (h2.exceptions.ProtocolError, ControlClientError):
                    pass
            self._shutdown(ControlClientError("client closed"))
        await trio.aclose_forcefully(self._stream)


class SinkReader:
    """Reads the sinks of many connections (:meth:`NoiseClient.sink` with ``reader=``) from one
    task: one epoll set of their sockets, one read per ready socket, handled in place. A load tool
    holding thousands of map streams spent more on a task per connection (a failed read, a
    wait and an epoll change each time a message came, then a wake-up) than on the messages; a
    fleet of simulated nodes must cost less than the server it measures. Linux only (epoll)."""

    def __init__(self, batch: int = 1024) -> None:
        self._epoll = select.epoll()
        self._clients: dict[int, NoiseClient] = {}
        self._batch = batch

    def __len__(self) -> int:
        return len(self._clients)

    def adopt(self, client: NoiseClient) -> None:
        self._clients[client._sink_fd] = client
        self._epoll.register(client._sink_fd, select.EPOLLIN)

    def drop(self, client: NoiseClient) -> None:
        fd = client._sink_fd
        if self._clients.get(fd) is client:
            del self._clients[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # closed already: the kernel dropped it from the set

    async def run(self) -> None:
        """Read until cancelled; then the set is closed."""
        epoll, clients = self._epoll, self._clients
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _ in epoll.poll(0, self._batch):
                    client = clients.get(fd)
                    if client is not None:
                        client._sink_read()
        finally:
            epoll.close()


async def _read_exactly(stream: trio.abc.Stream, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = await stream.receive_some(_RECV_SIZE)
        if not data:
            raise ControlClientError("connection closed during handshake")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


@asynccontextmanager
async def open_noise_client(
    host: str,
    port: int,
    *,
    machine_private_key: bytes | None = None,
    version: int = DEFAULT_VERSION,
    server_public_key: bytes | None = None,
    initial_window_size: int = 4 << 20,
    timeout: float = 10.0,
    path: str = "/ts2021",
    local_address: str | None = None,
) -> AsyncIterator[NoiseClient]:
    """Connect, upgrade, handshake and start HTTP/2; yield a :class:`NoiseClient`; close on exit.

    ``server_public_key`` defaults to the one fetched from ``/key``.  ``timeout`` bounds the whole setup.
    ``local_address`` binds the connection's source (e.g. ``127.0.0.2``: another host, to the server).
    """
    machine_private_key = machine_private_key or keys.generate_private_key()
    with trio.fail_after(timeout):
        if server_public_key is None:
            server_public_key = await fetch_server_key(host, port, version)
        init = noise.Initiator(server_public_key, machine_private_key, version)
        stream = await trio.open_tcp_stream(host, port, local_address=local_address)
        try:
            conn = h11.Connection(h11.CLIENT)
            req = h11.Request(
                method="POST",
                target=path,
                headers=[
                    ("Host", _host_header(host, port)),
                    ("Upgrade", "tailscale-control-protocol"),
                    ("Connection", "upgrade"),
                    ("X-Tailscale-Handshake", base64.b64encode(init.initiation).decode()),
                    ("Content-Length", "0"),
                ],
            )
            await stream.send_all(conn.send(req) + conn.send(h11.EndOfMessage()))
            ev = await _h11_next(conn, stream)
            if not isinstance(ev, (h11.InformationalResponse, h11.Response)) or ev.status_code != 101:
                status = getattr(ev, "status_code", ev)
                raise ControlClientError(f"upgrade refused: {status}")
            if _hdict(ev.headers).get("upgrade") != "tailscale-control-protocol":
                raise ControlClientError("upgrade: wrong Upgrade header in 101")
            rest, _ = conn.trailing_data
            buf = bytearray(rest)
            header = await _read_exactly(stream, buf, 3)
            try:
                body = await _read_exactly(stream, buf, noise.Initiator.reply_length(header))
                hs = init.receive_response(header + body)
            except noise.NoiseError as exc:
                raise ControlClientError(f"handshake: {exc}") from None
            client = NoiseClient(stream, hs, machine_private_key, initial_window_size)
            await stream.send_all(client._noise.encrypt(client._h2.data_to_send()))
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    # Exceptions from the caller's block are re-raised after the nursery, not wrapped in a group.
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        client._nursery = nursery
        # Bytes that arrived together with the handshake reply are already Noise records.
        nursery.start_soon(client._reader, bytes(buf))
        try:
            # The server speaks first (early payload and/or SETTINGS): wait for it so that
            # early_payload / challenge_public_key are known when the caller gets the client.
            with trio.fail_after(timeout):
                await client._early_done.wait()
            if client._closed is not None:
                raise client._closed
            yield client
        except BaseException as exc:
            body_exc = exc
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
            nursery.cancel_scope.cancel()
    if body_exc is not None:
        raise body_exc
