"""The control protocol's sans-IO core (shared/proto/control.py): bytes and times in, events and
bytes out, no sockets, no clock. The Trio adapter is tested over loopback in tests/services/coord."""

from __future__ import annotations

import base64

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioscale.shared.proto import control, keys, noise

SERVER = keys.generate_private_key()
MACHINE = keys.generate_private_key()


def _initiation(version: int = 130) -> tuple[noise.Initiator, bytes]:
    init = noise.Initiator(keys.public_key(SERVER), MACHINE, version)
    return init, init.initiation


# --- the upgrade ----------------------------------------------------------------------------------


def test_parse_upgrade_noise():
    _, initiation = _initiation()
    up = control.parse_upgrade(
        {"upgrade": "Tailscale-Control-Protocol", "x-tailscale-handshake": base64.b64encode(initiation).decode()}, ""
    )
    assert isinstance(up, control.Upgrade) and not up.websocket
    assert up.initiation == initiation
    assert ("Upgrade", control.UPGRADE_PROTOCOL) in up.headers


@pytest.mark.parametrize(
    "headers, status, text",
    [
        ({}, 400, "missing next protocol"),
        ({"upgrade": "h2c"}, 400, "unsupported protocol switch"),
        ({"upgrade": control.UPGRADE_PROTOCOL}, 400, "no tailscale handshake header"),
        ({"upgrade": control.UPGRADE_PROTOCOL, "x-tailscale-handshake": "not base64!"}, 400, "invalid tailscale"),
        ({"upgrade": "websocket", "sec-websocket-key": "k"}, 400, "subprotocol"),
        ({"upgrade": "websocket", "sec-websocket-key": "k", "sec-websocket-protocol": control.UPGRADE_PROTOCOL},
         400, "X-Tailscale-Handshake parameter"),
    ],
)
def test_parse_upgrade_refusals(headers, status, text):
    refusal = control.parse_upgrade(headers, "")
    assert isinstance(refusal, control.Refusal)
    assert refusal.status == status and text in refusal.text


def test_parse_upgrade_websocket_takes_the_initiation_from_the_query():
    _, initiation = _initiation()
    query = "X-Tailscale-Handshake=" + base64.b64encode(initiation).decode().replace("+", "%2B").replace("=", "%3D")
    up = control.parse_upgrade(
        {"upgrade": "websocket", "sec-websocket-key": "abc", "sec-websocket-protocol": control.UPGRADE_PROTOCOL},
        query, lambda key: b"accept-" + key.encode(),
    )
    assert isinstance(up, control.Upgrade) and up.websocket and up.initiation == initiation
    assert ("Sec-WebSocket-Accept", "accept-abc") in up.headers


def test_answer_initiation_enforces_the_minimum_version():
    _, old = _initiation(100)
    with pytest.raises(noise.RemoteProtocolError, match="minimum 113"):
        control.answer_initiation(old, SERVER, 113)
    _, current = _initiation(130)
    hs = control.answer_initiation(current, SERVER, 113)
    assert hs.machine_key == keys.public_key(MACHINE) and hs.version == 130


def test_answer_key():
    assert control.answer_key("GET", "v=130", 113) is None
    assert control.answer_key("POST", "v=130", 113).status == 405
    assert "must be set" in control.answer_key("GET", "", 113).text
    assert "integer" in control.answer_key("GET", "v=x", 113).text
    assert "older than the minimum 113" in control.answer_key("GET", "v=90", 113).text


# --- HTTP/2 inside Noise --------------------------------------------------------------------------


class Peer:
    """A client (Noise initiator + h2 client) talking to one ControlConnection, by hand."""

    def __init__(self, cfg: control.TransportConfig | None = None, now: float = 0.0):
        self.cfg = cfg or control.TransportConfig()
        self.stats = control.TransportStats()
        init, initiation = _initiation()
        hs = control.answer_initiation(initiation, SERVER, self.cfg.min_capability_version)
        self.client_noise = init.receive_response(hs.response).connection
        self.conn = control.ControlConnection(self.cfg, self.stats, hs.connection, now)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.client_events: list = []
        self.take(self.conn.initiate(b""))

    def take(self, records: bytes) -> None:
        """What the server sent, into the client."""
        for chunk in self.client_noise.receive_data(records):
            self.client_events += self.h2.receive_data(chunk)

    def push(self, now: float = 0.0) -> list:
        """What the client has queued, into the server; the server's events (its answer is taken)."""
        events = self.conn.receive_data(self.client_noise.encrypt(self.h2.data_to_send()), now)
        self.take(self.conn.data_to_send())
        return events

    def request(self, path: str, body: bytes = b"", *, end: bool = True, length: int | None = None) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "x")]
        if length is not None:
            headers.append(("content-length", str(length)))
        self.h2.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        return sid


def _responses(events: list) -> dict[int, int]:
    return {ev.stream_id: int(dict(ev.headers)[":status"]) for ev in events if isinstance(ev, h2.events.ResponseReceived)}


def test_a_request_is_an_event_once_its_body_is_complete_and_its_credit_goes_back():
    p = Peer()
    p.push()
    assert p.conn.got_preface
    sid = p.request("/machine/map", b"x" * 1000, end=False)
    assert [type(e) for e in p.push()] == []
    assert p.stats.buffered_body_bytes == 1000
    p.h2.send_data(sid, b"y" * 24, end_stream=True)
    [ready] = [e for e in p.push() if isinstance(e, control.RequestReceived)]
    assert ready.stream.path == "/machine/map" and ready.body == b"x" * 1000 + b"y" * 24
    assert p.stats.buffered_body_bytes == 0 and p.stats.open_streams == 1
    # the credit for the consumed body went back to the client
    assert any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == 0 for e in p.client_events)
    p.conn.send_headers(ready.stream, [(":status", "200")])
    assert p.conn.send_data(ready.stream, memoryview(b"ok"), 0, end=True) == 2
    p.take(p.conn.data_to_send())
    assert _responses(p.client_events) == {sid: 200}
    p.conn.forget(ready.stream, now=5.0)
    assert p.stats.open_streams == 0 and p.conn.idle_since == 5.0


def test_a_body_over_the_clients_window_goes_as_the_window_opens_and_ends_the_stream():
    p = Peer()
    p.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 40_000})
    p.h2.increment_flow_control_window(1 << 20)  # the stream's window is the one that binds
    sid = p.request("/machine/map", b"{}")
    [ready] = [e for e in p.push() if isinstance(e, control.RequestReceived)]
    p.conn.send_headers(ready.stream, [(":status", "200")])
    body = bytes(i % 251 for i in range(100_000))
    view = memoryview(body)
    assert p.conn.send_data_now(ready.stream, body) is None  # over the window: the caller waits
    pos = p.conn.send_data(ready.stream, view, 0, end=True)
    assert pos == 40_000
    p.take(p.conn.data_to_send())
    p.h2.increment_flow_control_window(100_000, stream_id=sid)
    assert any(isinstance(e, control.WindowOpened) for e in p.push())
    assert p.conn.send_data(ready.stream, view, pos, end=True) == 100_000
    p.take(p.conn.data_to_send())
    got = b"".join(e.data for e in p.client_events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
    assert got == body
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in p.client_events)


def test_bodies_over_the_limits_are_refused():
    p = Peer(control.TransportConfig(max_request_body=100))
    p.push()
    declared = p.request("/machine/register", length=101, end=False)
    p.push()
    sent = p.request("/machine/register", b"z" * 101, end=False)
    p.push()
    assert _responses(p.client_events) == {declared: 413, sent: 413}
    assert p.stats.bodies_refused == 2 and p.stats.open_streams == 0 and p.stats.buffered_body_bytes == 0


def test_streams_over_the_unregistered_limit_are_refused_until_registered():
    p = Peer(control.TransportConfig(unregistered_concurrent_streams=1))
    p.push()
    p.request("/a")
    [ready] = [e for e in p.push() if isinstance(e, control.RequestReceived)]
    # the response ended (h2 sees the stream closed) but its handler still runs: it still counts
    p.conn.send_headers(ready.stream, [(":status", "200")])
    p.conn.send_data(ready.stream, memoryview(b""), 0, end=True)
    p.take(p.conn.data_to_send())
    second = p.request("/b")
    p.push()
    assert p.stats.streams_refused == 1
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == second for e in p.client_events)
    p.conn.mark_registered()
    assert p.conn.stream_limit == p.cfg.max_concurrent_streams


def test_deadlines_are_the_callers_clock():
    p = Peer(control.TransportConfig(h2_preface_timeout=10.0, request_body_timeout=30.0), now=100.0)
    assert p.conn.next_deadline() == 110.0
    p.push(now=101.0)
    sid = p.request("/slow", b"a", end=False)
    p.push(now=102.0)
    assert p.conn.next_deadline() == 132.0
    assert p.conn.on_deadline(132.0) == (1, None)
    p.take(p.conn.data_to_send())
    assert _responses(p.client_events) == {sid: 408}
    assert p.stats.requests_timed_out == 1
    # idle from then on: the connection is to close after h2_idle_timeout (a GOAWAY first)
    assert p.conn.next_deadline() == 132.0 + p.cfg.h2_idle_timeout
    assert p.conn.on_deadline(132.0 + p.cfg.h2_idle_timeout) == (0, "idle HTTP/2 connection")
    p.take(p.conn.data_to_send())
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in p.client_events)


def test_no_preface_in_time():
    p = Peer(now=0.0)
    assert p.conn.on_deadline(p.cfg.h2_preface_timeout) == (0, "no HTTP/2 preface in time")
    assert p.stats.connections_timed_out == 1


def test_reset_and_goaway_from_the_client():
    p = Peer()
    p.push()
    sid = p.request("/stream")
    [ready] = [e for e in p.push() if isinstance(e, control.RequestReceived)]
    p.h2.reset_stream(sid)
    assert control.StreamReset(sid) in p.push()
    assert ready.stream.gone
    with pytest.raises(control.StreamGone):
        p.conn.send_headers(ready.stream, [(":status", "200")])
    p.h2.close_connection()
    [ended] = p.push()
    assert isinstance(ended, control.ConnectionTerminated) and p.conn.closed
    p.conn.teardown()
    assert p.stats.open_streams == 0


def test_garbage_is_a_protocol_error():
    p = Peer()
    with pytest.raises(control.ControlProtocolError, match="noise"):
        p.conn.receive_data(b"\x04\x00\x10" + bytes(16), 0.0)
    q = Peer()
    with pytest.raises(control.ControlProtocolError, match="h2"):
        q.conn.receive_data(q.client_noise.encrypt(b"GET / HTTP/1.1\r\n\r\n" + bytes(40)), 0.0)


# --- DATA frames built in one go ------------------------------------------------------------------


def _open_stream(window: int, request_ended: bool = False) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """(server, client) with stream 1 open (half closed by the client with `request_ended`, as a
    map stream is) and `window` bytes of stream credit from the client."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.increment_flow_control_window(1 << 24)
    client.send_headers(1, [(":method", "POST"), (":path", "/machine/map"), (":scheme", "http"),
                            (":authority", "ctl")], end_stream=request_ended)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")])
    client.receive_data(server.data_to_send())
    return server, client


@pytest.mark.parametrize("request_ended", [False, True], ids=["request-open", "request-ended"])
@pytest.mark.parametrize("as_view", [False, True], ids=["bytes", "memoryview"])
@pytest.mark.parametrize("size", [1, 16384, 16385, 630_000])
def test_data_frames_are_what_the_library_would_queue_and_count_the_same(size, as_view, request_ended):
    data = bytes(i % 253 for i in range(size))
    (ours, client), (theirs, _) = _open_stream(1 << 22, request_ended), _open_stream(1 << 22, request_ended)
    built = control.data_frames(ours, 1, memoryview(data) if as_view else data)
    step = theirs.max_outbound_frame_size
    for pos in range(0, size, step):
        theirs.send_data(1, data[pos : pos + step])
    assert built == theirs.data_to_send() and ours.data_to_send() == b""
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.local_flow_control_window(1) == theirs.local_flow_control_window(1)
    # the stream goes on as the library's would: it ends, and the client has the body whole
    ours.end_stream(1)
    events = client.receive_data(built + ours.data_to_send())
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == data
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


@pytest.mark.parametrize("request_ended", [False, True], ids=["request-open", "request-ended"])
def test_data_frames_on_a_closed_stream_are_refused(request_ended):
    server, _ = _open_stream(1 << 16, request_ended)
    server.end_stream(1)
    with pytest.raises(h2.exceptions.ProtocolError):
        control.data_frames(server, 1, b"late")


_PING = (8).to_bytes(3, "big") + bytes([6, 0]) + (0).to_bytes(4, "big") + bytes(8)


def _window_update(stream_id: int, increment: int, flags: int = 0) -> bytes:
    return (4).to_bytes(3, "big") + bytes([8, flags]) + stream_id.to_bytes(4, "big") + increment.to_bytes(4, "big")


_WINDOWS = st.lists(st.tuples(st.sampled_from([0, 0, 1, 1, 1, 3, 0x80000001]),  # 3: never opened
                              st.one_of(st.integers(1, 1 << 16), st.integers(1, 1 << 16), st.integers(1, 2**31 - 1),
                                        st.just(0)),
                              st.sampled_from([0, 0, 1])), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(frames=_WINDOWS, request_ended=st.booleans(), tail=st.sampled_from([b"", b"", b"", b"\x00", _PING]),
       as_view=st.booleans())
def test_window_updates_count_as_the_library_would_or_leave_it_to_the_library(frames, request_ended, tail, as_view):
    """Whatever the chunk, the windows end where the library's own handling leaves them, and a
    chunk the fast path refuses (anything but positive increments for open streams within the
    limit, or anything besides WINDOW_UPDATEs) is left untouched for the library to judge."""
    chunk = b"".join(_window_update(sid, inc, flags) for sid, inc, flags in frames) + tail
    (ours, _), (theirs, _) = _open_stream(1 << 16, request_ended), _open_stream(1 << 16, request_ended)
    before = (ours.outbound_flow_control_window, ours.streams[1].outbound_flow_control_window)
    opened = control.window_updates(ours, memoryview(chunk) if as_view else chunk)
    try:
        events = theirs.receive_data(chunk)
    except h2.exceptions.ProtocolError:
        events = None
    if opened is None:
        assert (ours.outbound_flow_control_window, ours.streams[1].outbound_flow_control_window) == before
        return
    assert events is not None and theirs.data_to_send() == b""
    assert all(isinstance(e, h2.events.WindowUpdated) for e in events)
    assert sorted(opened) == sorted({e.stream_id for e in events})
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.streams[1].outbound_flow_control_window == theirs.streams[1].outbound_flow_control_window


def test_window_updates_take_what_tailscaleds_client_sends():
    """Go's HTTP/2 client credits every 4 KiB it reads on both the connection and the stream, in
    one write: the fast path takes that, and refuses a partial frame held from before."""
    (server, _) = _open_stream(1 << 16, request_ended=True)
    window, stream_window = server.outbound_flow_control_window, server.streams[1].outbound_flow_control_window
    assert control.window_updates(server, _window_update(0, 4096) + _window_update(1, 4096)) == [0, 1]
    assert server.outbound_flow_control_window == window + 4096
    assert server.streams[1].outbound_flow_control_window == stream_window + 4096
    server.receive_data(_window_update(0, 1)[:5])  # half a frame, held by the library
    assert control.window_updates(server, _window_update(0, 4096)) is None
    assert server.outbound_flow_control_window == window + 4096


def test_window_credits_through_the_connection_open_its_streams_and_leave_nothing_to_send():
    """The client's credits (the fast path) come out as WindowOpened and queue no answer, so the
    session need not take its write lock, and say they were only credits (the session may then
    pause its reads while the windows are roomy); a PING does queue an answer (its ACK)."""
    p = Peer()
    p.push()
    sid = p.request("/machine/map", b"{}")
    [ready] = [e for e in p.push() if isinstance(e, control.RequestReceived)]
    p.conn.send_headers(ready.stream, [(":status", "200")])
    p.take(p.conn.data_to_send())
    assert not p.conn.has_output()
    window = p.conn.h2.outbound_flow_control_window
    p.h2.increment_flow_control_window(4096)
    p.h2.increment_flow_control_window(4096, stream_id=sid)
    events = p.conn.receive_data(p.client_noise.encrypt(p.h2.data_to_send()), 0.0)
    assert sorted(e.stream_id for e in events if isinstance(e, control.WindowOpened)) == [0, sid]
    assert p.conn.h2.outbound_flow_control_window == window + 4096
    assert not p.conn.has_output() and p.conn.only_credits
    # room: the connection's window and the answered stream's (65,535 + 4,096 by default here)
    assert p.conn.roomy(60_000) and not p.conn.roomy(70_000)
    p.h2.increment_flow_control_window(1 << 20)
    p.conn.receive_data(p.client_noise.encrypt(p.h2.data_to_send()), 0.0)
    assert not p.conn.roomy(70_000)  # the stream's window still binds
    p.h2.ping(b"12345678")
    p.conn.receive_data(p.client_noise.encrypt(p.h2.data_to_send()), 0.0)
    assert p.conn.has_output() and not p.conn.only_credits
    p.take(p.conn.data_to_send())
    assert any(isinstance(e, h2.events.PingAckReceived) for e in p.client_events)
