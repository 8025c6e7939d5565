"""The control listener on loopback, driven by trioscale.shared.testing.noiseclient and raw sockets."""

import base64
import functools
import json
import os
import struct
from types import SimpleNamespace

import pytest
import trio

from trioscale.services.coord.control_server import ControlRequest, StreamGone, TransportConfig, serve_control
from trioscale.shared.testing import noiseclient as nc
from trioscale.shared.proto import keys, mapframe, noise


class Routes:
    """noise_handler that dispatches on the path to per-test async functions."""

    def __init__(self):
        self.routes = {}
        self.seen = []

    async def __call__(self, req: ControlRequest, resp):
        self.seen.append(req)
        fn = self.routes.get(req.path)
        if fn is None:
            await resp.send(404, b"no route\n")
            return
        await fn(req, resp)


async def http_handler(method, path, headers, body):
    if path == "/boom":
        raise RuntimeError("boom")
    if path.startswith("/health"):
        return 200, [("Content-Type", "text/plain")], f"ok {method} {path} {len(body)}"
    return 404, {}, b"nope\n"


@pytest.fixture
async def server(nursery):
    sk = keys.generate_private_key()
    routes = Routes()
    cfg = TransportConfig(request_timeout=5.0, h2_preface_timeout=2.0)
    addr = await nursery.start(
        functools.partial(serve_control, ("127.0.0.1", 0), sk, routes, http_handler, config=cfg)
    )
    host, port = addr.rsplit(":", 1)
    return SimpleNamespace(host=host, port=int(port), key=keys.public_key(sk), routes=routes, addr=addr)


def client(server, **kw):
    return nc.open_noise_client(server.host, server.port, **kw)


async def read_until_eof(stream, limit=1 << 20):
    data = bytearray()
    with trio.fail_after(5):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
            assert len(data) < limit
    return bytes(data)


# --- plain HTTP ----------------------------------------------------------------------------------------


async def test_started_reports_bound_port(server):
    assert server.addr.startswith("127.0.0.1:") and server.port > 0


async def test_key(server):
    r = await nc.http_request(server.host, server.port, "GET", "/key?v=130")
    assert r.status == 200
    assert r.json() == {"legacyPublicKey": "mkey:" + "0" * 64, "publicKey": keys.MACHINE.format(server.key)}
    assert await nc.fetch_server_key(server.host, server.port) == server.key


@pytest.mark.parametrize(("query", "needle"), [("v=112", b"unsupported client version"), ("", b"must be set"),
                                               ("v=abc", b"integer")])
async def test_key_refuses_old_or_missing_version(server, query, needle):
    r = await nc.http_request(server.host, server.port, "GET", "/key?" + query)
    assert r.status == 400
    assert needle in r.body
    with pytest.raises(nc.ControlClientError, match="400"):
        await nc.fetch_server_key(server.host, server.port, 100)


async def test_keep_alive_and_connection_close(server):
    s = await trio.open_tcp_stream(server.host, server.port)
    async with s:
        req = b"GET /key?v=130 HTTP/1.1\r\nHost: x\r\n\r\n"
        await s.send_all(req + req)  # pipelined on one keep-alive connection
        await s.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await read_until_eof(s)  # the server closes after the Connection: close request
    assert data.count(b"HTTP/1.1 200") == 3
    assert data.endswith(b"ok GET /health 0")
    assert data.lower().count(b"connection: close") == 1


async def test_http_handler_routing(server):
    r = await nc.http_request(server.host, server.port, "POST", "/health?x=1", body=b"abc")
    assert (r.status, r.body) == (200, b"ok POST /health?x=1 3")
    r = await nc.http_request(server.host, server.port, "GET", "/elsewhere")
    assert r.status == 404
    r = await nc.http_request(server.host, server.port, "GET", "/boom")
    assert r.status == 500


async def test_http_body_and_header_limits(server):
    s = await trio.open_tcp_stream(server.host, server.port)
    async with s:
        await s.send_all(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        data = await read_until_eof(s)
    assert data.startswith(b"HTTP/1.1 413")
    s = await trio.open_tcp_stream(server.host, server.port)
    async with s:  # chunked: the limit is enforced while reading
        await s.send_all(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n"
        try:
            for _ in range(20):
                await s.send_all(piece)
        except trio.BrokenResourceError:
            pass
        data = await read_until_eof(s)
    assert data == b"" or data.startswith(b"HTTP/1.1 413")
    s = await trio.open_tcp_stream(server.host, server.port)
    async with s:
        await s.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        data = await read_until_eof(s)
    assert data.startswith(b"HTTP/1.1 431")


async def test_malformed_http_gets_400(server):
    s = await trio.open_tcp_stream(server.host, server.port)
    async with s:
        await s.send_all(b"\x00\x01garbage garbage\r\n\r\n")
        data = await read_until_eof(s)
    assert data.startswith(b"HTTP/1.1 400")
    await assert_still_serving(server)


async def assert_still_serving(server):
    assert await nc.fetch_server_key(server.host, server.port) == server.key
    async with client(server) as c:
        server.routes.routes["/ping"] = lambda req, resp: resp.send(200, b"pong")
        r = await c.request("GET", "/ping")
        assert (r.status, r.body) == (200, b"pong")


# --- upgrade and handshake ----------------------------------------------------------------------------


def upgrade_request(initiation_b64, extra=b""):
    return (
        b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
        b"X-Tailscale-Handshake: " + initiation_b64 + b"\r\nContent-Length: 0\r\n"
        b"User-Agent: Go-http-client/1.1\r\n\r\n" + extra
    )


async def raw_upgrade(server, initiation, extra=b""):
    s = await trio.open_tcp_stream(server.host, server.port)
    await s.send_all(upgrade_request(base64.b64encode(initiation), extra))
    buf = bytearray()
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buf:
            chunk = await s.receive_some(65536)
            assert chunk, bytes(buf)
            buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    return s, head, bytearray(rest)


async def test_101_then_noise_response_without_waiting(server):
    m = keys.generate_private_key()
    init = noise.Initiator(server.key, m, 130)
    s, head, rest = await raw_upgrade(server, init.initiation)
    async with s:
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
        assert b"Upgrade: tailscale-control-protocol" in lines
        assert b"Connection: upgrade" in lines
        with trio.fail_after(5):
            while len(rest) < noise.RESPONSE_LEN + 3:
                rest += await s.receive_some(65536)
        hs = init.receive_response(bytes(rest[:51]))
        assert hs.version == 130
        # then the early payload and the server's HTTP/2 SETTINGS, unprompted
        parser = noise.EarlyPayloadParser()
        conn = hs.connection
        pending = bytes(rest[51:])
        with trio.fail_after(5):
            while not parser.done:
                for pt in conn.receive_data(pending):
                    if parser.receive_data(pt):
                        break
                if not parser.done:
                    pending = await s.receive_some(65536)
        assert parser.challenge_public_key is not None and len(parser.challenge_public_key) == 32
        assert parser.rest[3] == 0x04  # an HTTP/2 SETTINGS frame follows


async def test_noise_client_identity_and_early_payload(server):
    m = keys.generate_private_key()

    async def whoami(req, resp):
        await resp.send(200, json.dumps({"m": keys.MACHINE.format(req.machine_key), "v": req.protocol_version,
                                         "method": req.method, "body": req.body.decode(),
                                         "lb": req.headers.get("ts-lb"),
                                         "chal": keys.CHALLENGE.format(keys.public_key(req.challenge_private_key))}))

    server.routes.routes["/machine/whoami"] = whoami
    async with client(server, machine_private_key=m, version=123) as c:
        assert c.server_public_key == server.key
        r = await c.post_json("/machine/whoami", {"x": 1}, headers=[("Ts-Lb", "nodekey:" + "1" * 64)])
        assert r.status == 200
        got = r.json()
        assert got["m"] == keys.MACHINE.format(keys.public_key(m))
        assert got["v"] == 123 and got["method"] == "POST" and got["body"] == '{"x":1}'
        assert got["lb"] == "nodekey:" + "1" * 64
        assert got["chal"] == keys.CHALLENGE.format(c.challenge_public_key)


async def test_pipelined_h2_bytes_after_upgrade_headers(server):
    """Bytes sent right behind the upgrade request belong to the Noise stream (here: none valid yet,
    so they must not be taken as HTTP/1.1)."""
    init = noise.Initiator(server.key, keys.generate_private_key(), 130)
    s, head, rest = await raw_upgrade(server, init.initiation, extra=b"\x04\x00\x20" + os.urandom(32))
    async with s:
        assert head.startswith(b"HTTP/1.1 101")
        data = rest + await read_until_eof(s)
        assert data[:3] == b"\x02\x00\x30"  # noise response first, then closed for the bad record


@pytest.mark.parametrize(
    ("header", "status"),
    [(b"!!!not-base64!!!", b"400"), (None, b"400")],
)
async def test_bad_handshake_header(server, header, status):
    s = await trio.open_tcp_stream(server.host, server.port)
    async with s:
        req = b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
        if header is not None:
            req += b"X-Tailscale-Handshake: " + header + b"\r\n"
        req += b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        await s.send_all(req)
        data = await read_until_eof(s)
    assert data.startswith(b"HTTP/1.1 " + status)
    await assert_still_serving(server)


async def test_missing_or_wrong_upgrade(server):
    r = await nc.http_request(server.host, server.port, "POST", "/ts2021")
    assert r.status == 400 and b"missing next protocol" in r.body
    r = await nc.http_request(server.host, server.port, "POST", "/ts2021", headers=[("Upgrade", "websocket")])
    assert r.status == 400


@pytest.mark.parametrize("mangle", ["short", "type", "tag", "version"])
async def test_bad_initiation_gets_error_frame(server, mangle):
    init = bytearray(noise.Initiator(server.key, keys.generate_private_key(), 130).initiation)
    if mangle == "short":
        init = init[:-1]
    elif mangle == "type":
        init[2] = 9
    elif mangle == "tag":
        init[-1] ^= 0xFF
    elif mangle == "version":
        init = bytearray(noise.Initiator(server.key, keys.generate_private_key(), 100).initiation)
    s, head, rest = await raw_upgrade(server, bytes(init))
    async with s:
        assert head.startswith(b"HTTP/1.1 101")
        data = bytes(rest) + await read_until_eof(s)
    assert data[0] == noise.MSG_ERROR
    (n,) = struct.unpack(">H", data[1:3])
    assert len(data) == 3 + n
    if mangle == "version":
        assert b"unsupported client version" in data
    await assert_still_serving(server)


async def test_client_refused_for_old_noise_version(server):
    with pytest.raises(nc.ControlClientError, match="unsupported client version"):
        async with client(server, version=112, server_public_key=server.key):
            pass


@pytest.mark.parametrize("kind", ["garbage", "bad_record", "wrong_type", "oversize", "h2_garbage"])
async def test_garbage_after_upgrade_closes_cleanly(server, kind):
    init = noise.Initiator(server.key, keys.generate_private_key(), 130)
    s, head, rest = await raw_upgrade(server, init.initiation)
    async with s:
        with trio.fail_after(5):
            while len(rest) < 51:
                rest += await s.receive_some(65536)
        hs = init.receive_response(bytes(rest[:51]))
        if kind == "garbage":
            payload = os.urandom(500)
        elif kind == "bad_record":
            payload = b"\x04\x00\x20" + os.urandom(32)
        elif kind == "wrong_type":
            payload = b"\x05\x00\x20" + os.urandom(32)
        elif kind == "oversize":
            payload = b"\x04\x10\x00" + os.urandom(4096)
        else:  # valid Noise records carrying something that is not HTTP/2
            payload = hs.connection.encrypt(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(100))
        await s.send_all(payload)
        await read_until_eof(s)  # must be closed, not hang
    await assert_still_serving(server)


async def test_no_h2_preface_times_out(server):
    init = noise.Initiator(server.key, keys.generate_private_key(), 130)
    s, _, _ = await raw_upgrade(server, init.initiation)
    async with s:
        with trio.fail_after(5):  # preface timeout is 2 s in this fixture
            await read_until_eof(s)


# --- HTTP/2 over Noise ---------------------------------------------------------------------------------


async def test_concurrent_requests_on_one_connection(server):
    started = 0
    all_started = trio.Event()
    n = 20

    async def slow(req, resp):
        nonlocal started
        started += 1
        if started == n:
            all_started.set()
        await all_started.wait()  # only completes if all n handlers run at the same time
        await resp.send(200, req.body[::-1])

    async def known(req, resp):
        resp.mark_registered()  # as the map handler does once the machine key has a node
        await resp.send(200, b"")

    server.routes.routes["/machine/slow"] = slow
    server.routes.routes["/machine/known"] = known
    results = {}
    async with client(server) as c:
        assert (await c.request("POST", "/machine/known")).status == 200

        async def one(i):
            r = await c.request("POST", "/machine/slow", b"req-%03d" % i)
            results[i] = (r.status, r.body)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
    assert results == {i: (200, (b"req-%03d" % i)[::-1]) for i in range(n)}


async def test_whole_small_response_is_one_noise_record(server):
    # resp.send writes headers and body in one flush: one record and one send per answer (a
    # registration's answer took two before)
    async def small(req, resp):
        await resp.send(200, b"small body")

    server.routes.routes["/machine/small"] = small
    records = []
    async with client(server) as c:
        receive = c._noise.receive_data

        def recording(data):
            out = receive(data)
            records.extend(out)
            return out

        c._noise.receive_data = recording
        r = await c.request("POST", "/machine/small")
        assert (r.status, r.body) == (200, b"small body")

    def frames(record):
        pos, out = 0, []
        while pos + 9 <= len(record):
            length = int.from_bytes(record[pos:pos + 3], "big")
            out.append((record[pos + 3], record[pos + 4], int.from_bytes(record[pos + 5:pos + 9], "big") & 0x7FFFFFFF))
            pos += 9 + length
        return out

    holding = [frames(rec) for rec in records if any(t == 0x1 and sid % 2 == 1 for t, _, sid in frames(rec))]
    assert len(holding) == 1, records
    kinds = [(t, flags & 0x1) for t, flags, sid in holding[0] if sid % 2 == 1]
    # HEADERS, then the body's DATA, the last with END_STREAM: all in one record
    assert kinds[0] == (0x1, 0) and kinds[-1] == (0x0, 1), kinds
    assert all(t == 0x0 for t, _ in kinds[1:]), kinds


async def test_long_streamed_response_respects_flow_control(server):
    chunk = bytes(range(256)) * 40  # 10240 bytes
    count = 100  # ~1 MB, far more than the 65535-byte window the client grants

    async def big(req, resp):
        await resp.start(200, [("content-type", "application/octet-stream")])
        for _ in range(count):
            await resp.write(chunk)
        await resp.end()

    server.routes.routes["/machine/big"] = big
    async with client(server, initial_window_size=65535) as c:
        with trio.fail_after(20):
            async with c.stream("GET", "/machine/big") as rs:
                assert rs.status == 200
                assert "content-length" not in rs.headers
                received = bytearray()
                async for part in rs:
                    received += part
                    await trio.sleep(0)  # a slowish reader
    assert received == chunk * count


async def test_write_nowait_keeps_order_with_backlog_and_async_writes(server):
    """The synchronous fast path: whatever the socket does not take at once goes out first, in
    order, before any later write; when it cannot write (window, busy) it says so."""
    chunks = [bytes([i % 251]) * (4096 + i) for i in range(300)]  # ~1.3 MB: the socket fills up
    used = {"nowait": 0, "async": 0}

    async def mixed(req, resp):
        await resp.start(200, [])
        for i, chunk in enumerate(chunks):
            if i % 7 != 3 and resp.write_nowait(chunk):
                used["nowait"] += 1
            else:
                used["async"] += 1
                await resp.write(chunk)
        await resp.end()

    server.routes.routes["/machine/mixed"] = mixed
    async with client(server, initial_window_size=1 << 22) as c:
        with trio.fail_after(20):
            async with c.stream("GET", "/machine/mixed") as rs:
                received = bytearray()
                async for part in rs:
                    received += part
                    if len(received) < 200_000:
                        await trio.sleep(0.01)  # slow at first, so sends are only partly taken
    assert received == b"".join(chunks)
    assert used["nowait"] > 0 and used["async"] > 0


async def test_map_stream_messages(server):
    async def map_handler(req, resp):
        mreq = json.loads(req.body)
        await resp.start(200)
        await resp.write(mapframe.keepalive(mreq.get("Compress")))
        for i in range(3):
            await resp.write(mapframe.encode_message({"Seq": i, "Pad": "x" * 20000}, mreq.get("Compress")))
        await resp.end()

    server.routes.routes["/machine/map"] = map_handler
    async with client(server) as c:
        for compress in ("zstd", ""):
            async with c.map_stream({"Compress": compress, "Stream": True}) as ms:
                msgs = [m async for m in ms]
            assert msgs[0] == {"KeepAlive": True}
            assert [m["Seq"] for m in msgs[1:]] == [0, 1, 2]


async def test_client_cancel_cancels_handler_and_later_writes_raise(server):
    entered = trio.Event()
    cancelled = trio.Event()
    reset_done = trio.Event()
    late_write_done = trio.Event()
    outcome = {}

    async def forever(req, resp):
        await resp.start(200)
        entered.set()
        try:
            while True:
                await resp.write(b"tick")
                await trio.sleep(0.01)
        except trio.Cancelled:
            cancelled.set()
            with trio.CancelScope(shield=True):
                await reset_done.wait()
                try:
                    await resp.write(b"after")
                except StreamGone:
                    outcome["gone"] = True
                finally:
                    late_write_done.set()
            raise

    server.routes.routes["/machine/map"] = forever
    async with client(server) as c:
        with trio.fail_after(5):
            async with c.stream("POST", "/machine/map", b"{}") as rs:
                await entered.wait()
                async for _ in rs:
                    break
            # leaving the block sent RST_STREAM(CANCEL)
            await cancelled.wait()
            reset_done.set()
            await late_write_done.wait()  # the write after the reset has failed
            # the connection itself is still fine
            server.routes.routes["/ping"] = lambda req, resp: resp.send(200, b"pong")
            assert (await c.request("GET", "/ping")).body == b"pong"
    assert outcome == {"gone": True}


async def test_connection_close_cancels_handlers(server):
    entered = trio.Event()
    cancelled = trio.Event()

    async def hang(req, resp):
        await resp.start(200)
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    server.routes.routes["/machine/map"] = hang
    with trio.fail_after(5):
        async with client(server) as c:
            async with c.stream("POST", "/machine/map", b"{}"):
                await entered.wait()
                await c.aclose()
        await cancelled.wait()


async def test_handler_errors_become_500(server):
    async def broken(req, resp):
        raise ValueError("handler bug")

    async def silent(req, resp):
        return None

    async def half(req, resp):
        await resp.start(200)
        await resp.write(b"partial")

    server.routes.routes.update({"/machine/broken": broken, "/machine/silent": silent, "/machine/half": half})
    async with client(server) as c:
        assert (await c.request("POST", "/machine/broken", b"{}")).status == 500
        assert (await c.request("POST", "/machine/silent")).status == 500
        r = await c.request("POST", "/machine/half")
        assert (r.status, r.body) == (200, b"partial")  # ended for the handler
        assert (await c.request("GET", "/unknown")).status == 404


async def test_request_body_limit(server):
    server.routes.routes["/machine/register"] = lambda req, resp: resp.send(200, b"{}")
    async with client(server) as c:
        r = await c.request("POST", "/machine/register", b"x" * ((1 << 20) + 10))
        assert r.status == 413
        assert (await c.request("POST", "/machine/register", b"{}")).status == 200


async def test_many_clients(server):
    server.routes.routes["/echo"] = lambda req, resp: resp.send(200, req.body)

    async def one(i):
        async with client(server, server_public_key=server.key) as c:
            r = await c.request("POST", "/echo", b"%d" % i)
            assert r.body == b"%d" % i

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
