"""Cross-service fuzzing on loopback: malformed input never crashes, hangs or changes the store.

One set of running services per test (the coordinator's control listener over a real SQLite
store, the DERP relay, STUN and DNS, all sharing that store), fed seed-driven malformed input:
control handshakes, Noise records, HTTP/2 frames inside a valid Noise session, register and map
requests with malformed JSON and wrong field types, DERP frames before and after the handshake,
STUN and DNS datagrams. For every case:

* the exchange is bounded (``trio.fail_after``) and ends in an error answer, a closed connection,
  or silence that we end ourselves;
* no handler logs an error (an unexpected exception) and no service task dies;
* the store's latest change seq and its node list are what they were before;
* each service still answers a well-formed request afterwards.

``FUZZ_SEED`` (environment) picks another seed; ``FUZZ_SCALE`` multiplies the number of cases.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import socket
import struct
from datetime import timedelta
from functools import partial
from types import SimpleNamespace

import pytest
import trio

from trioscale.config import config_from_dict
from trioscale.context import ServiceContext
from trioscale.services.coord import register
from trioscale.services.coord.coordinator import Coordinator
from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.netmap import Settings
from trioscale.services.coord.handlers import ControlHandlers
from trioscale.services.coord.transport import TransportConfig, serve_control
from trioscale.services.derp import service as derp_service
from trioscale.services.dns import service as dns_service
from trioscale.services.stun import service as stun_service
from trioscale.shared.testing import noiseclient as nc
from trioscale.shared.domain import secrets
from trioscale.shared.net import tls as tlsutil
from trioscale.shared.testing.derpclient import connect_derp, open_derp_client
from trioscale.shared.proto import derp as d
from trioscale.shared.proto import keys, noise, stun

SEED = int(os.environ.get("FUZZ_SEED", "20261124"))
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
BASE = "fuzz.test"
WAIT = 0.25  # how long we listen for an answer before ending a case ourselves


def n_cases(n: int) -> int:
    return max(1, int(n * SCALE))


# ---------------------------------------------------------------------------------- the services
@pytest.fixture
async def world(tmp_path, caplog):
    from trioscale.shared.store.sqlite import SqliteStore

    caplog.set_level(logging.WARNING)
    store = await SqliteStore.open(":memory:")
    try:
        async with trio.open_nursery() as nursery:
            async for w in _world(nursery, store, tmp_path):
                yield w
            nursery.cancel_scope.cancel()
        # the store is untouched (also after every service shut down) and nothing logged an error
        assert await store.latest_seq() == w.seq0 + w.shutdown_changes, "the store changed"
        assert [(n.id, n.node_key) for n in await store.list_nodes()] == w.nodes0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors[:5]]
    finally:
        await store.aclose()


async def _world(nursery, store, tmp_path):
    coord = Coordinator(store, Settings(base_domain=BASE), build_derp_map=lambda r: tailcfg.derp_map(r),
                        ephemeral_timeout=timedelta(seconds=600))
    await nursery.start(coord.run)
    policy = register.Policy(server_url="http://127.0.0.1", prefix_v4="100.64.0.0/10",
                             prefix_v6="fd7a:115c:a1e0::/48")
    handlers = ControlHandlers(coord, policy)
    tcfg = TransportConfig(request_timeout=3.0, h2_preface_timeout=2.0, h2_idle_timeout=5.0, send_timeout=3.0)
    control = await nursery.start(partial(serve_control, "127.0.0.1:0", keys.generate_private_key(),
                                          handlers.noise, handlers.http, config=tcfg))
    user = await store.create_user("alice")
    authkey = secrets.generate_preauth_key()
    await store.create_preauth_key(user.id, authkey.prefix, authkey.key_hash, reusable=True)

    cfg = config_from_dict({
        "data_dir": str(tmp_path / "data"),
        "derp": {"server": {"listen_addr": "127.0.0.1:0", "stun_listen_addr": "127.0.0.1:0",
                            "private_key_path": str(tmp_path / "data" / "derp.key")}},
        "dns": {"base_domain": BASE, "listen_addr": "127.0.0.1:0"},
    })
    ctx = ServiceContext(config=cfg, store=store, log=logging.getLogger("trioscale.fuzz"))
    stun_addr = (await nursery.start(stun_service.serve, ctx))
    derp_addr = (await nursery.start(partial(derp_service.serve, ctx, heartbeat_interval=3600.0)))["derp"]
    dns_addr = (await nursery.start(dns_service.serve, ctx))["dns"]

    # one real node (registered over Noise), for DERP admission and DNS answers
    node_priv = keys.generate_private_key()
    host, port = control.rsplit(":", 1)
    async with nc.open_noise_client(host, int(port)) as c:
        r = await c.post_json("/machine/register", {
            "Version": 130, "NodeKey": keys.NODE.format(keys.public_key(node_priv)),
            "Auth": {"AuthKey": authkey.text}, "Hostinfo": {"Hostname": "fuzzer"}})
        assert r.status == 200 and r.json()["MachineAuthorized"] is True
    w = SimpleNamespace(
        store=store, host=host, port=int(port), authkey=authkey.text, node_priv=node_priv,
        derp_port=int(derp_addr.rsplit(":", 1)[1]), stun_port=int(_addr_of(stun_addr).rsplit(":", 1)[1]),
        dns_port=int(dns_addr.rsplit(":", 1)[1]), rng=random.Random(SEED), ctx=ctx,
    )
    w.seq0 = await store.latest_seq()
    w.nodes0 = [(n.id, n.node_key) for n in await store.list_nodes()]
    w.shutdown_changes = 1  # the relay deletes its row when it stops
    yield w
    assert await store.latest_seq() == w.seq0, "the store changed"
    assert [(n.id, n.node_key) for n in await store.list_nodes()] == w.nodes0


def _addr_of(started) -> str:
    if isinstance(started, dict):
        return next(v for k, v in started.items() if "stun" in k)
    return str(started)


# ---------------------------------------------------------------------------------- helpers
async def exchange(host: str, port: int, data: bytes | list[bytes], *, tls: bool = False,
                   wait: float = WAIT) -> bytes:
    """Send `data` (one chunk or several) on a fresh connection, read what comes back until EOF
    or `wait` seconds of silence, close. Bounded as a whole."""
    chunks = [data] if isinstance(data, bytes) else data
    got = bytearray()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        if tls:
            stream = trio.SSLStream(stream, tlsutil.client_context(verify=False), server_hostname="x",
                                    https_compatible=True)
        try:
            for c in chunks:
                await stream.send_all(c)
            while True:
                with trio.move_on_after(wait):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    got += chunk
                    continue
                break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
    return bytes(got)


async def in_batches(coros, size: int = 8) -> None:
    """Run case coroutines (zero-argument async callables) a few at a time."""
    for i in range(0, len(coros), size):
        async with trio.open_nursery() as n:
            for fn in coros[i:i + size]:
                n.start_soon(fn)


def garbage(rng: random.Random, lo: int = 0, hi: int = 300) -> bytes:
    return rng.randbytes(rng.randint(lo, hi))


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(4)
    if op == 0 and b:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b) + 1):]
    elif op == 2:  # insert garbage
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = rng.randbytes(rng.randint(1, 40))
    else:  # append garbage
        b += rng.randbytes(rng.randint(1, 200))
    return bytes(b)


async def noise_session(w, version: int = 130):
    """A valid TS2021 upgrade + Noise handshake on a raw stream: (stream, transport, leftover)."""
    server_key = await nc.fetch_server_key(w.host, w.port)
    init = noise.Initiator(server_key, keys.generate_private_key(), version)
    stream = await trio.open_tcp_stream(w.host, w.port)
    req = (f"POST /ts2021 HTTP/1.1\r\nHost: {w.host}:{w.port}\r\nUpgrade: tailscale-control-protocol\r\n"
           f"Connection: upgrade\r\nX-Tailscale-Handshake: {base64.b64encode(init.initiation).decode()}\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    await stream.send_all(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        assert chunk, "closed during upgrade"
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0] + b" "
    while len(buf) < 3:
        buf += await stream.receive_some(65536)
    n = 3 + noise.Initiator.reply_length(buf[:3])
    while len(buf) < n:
        buf += await stream.receive_some(65536)
    hs = init.receive_response(buf[:n])
    return stream, hs.connection, buf[n:]


async def drain_until_closed_or_quiet(stream, wait: float = WAIT) -> None:
    try:
        while True:
            with trio.move_on_after(wait):
                if not await stream.receive_some(65536):
                    return
                continue
            return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return


def h2_frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype & 0xFF, flags & 0xFF]) + \
        struct.pack(">I", stream_id & 0x7FFFFFFF) + payload


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# ---------------------------------------------------------------------------------- health checks
async def control_healthy(w) -> None:
    with trio.fail_after(10):
        assert await nc.fetch_server_key(w.host, w.port)
        async with nc.open_noise_client(w.host, w.port) as c:
            r = await c.request("POST", "/machine/no-such-path", b"{}")
            assert 400 <= r.status < 600


async def derp_healthy(w) -> None:
    with trio.fail_after(10):
        async with open_derp_client("127.0.0.1", w.derp_port, w.node_priv) as c:
            await c.ping()
            await c.send(keys.public_key(w.node_priv), b"to myself")
            ev = await c.recv_packet()
            assert ev.packet == b"to myself"


async def stun_healthy(w) -> None:
    with trio.fail_after(5):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            txid = stun.new_txid()
            while True:  # UDP: retry a lost datagram
                await sock.sendto(stun.binding_request(txid), ("127.0.0.1", w.stun_port))
                with trio.move_on_after(0.5):
                    data, _ = await sock.recvfrom(2048)
                    resp = stun.parse_binding_response(data)
                    assert resp is not None and resp.port == sock.getsockname()[1]
                    return


def dns_query(name: str, qtype: int = 1, txid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\x00"
    return struct.pack(">HHHHHH", txid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", qtype, 1)


async def dns_healthy(w) -> None:
    with trio.fail_after(5):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            while True:
                await sock.sendto(dns_query(f"fuzzer.{BASE}"), ("127.0.0.1", w.dns_port))
                with trio.move_on_after(0.5):
                    data, _ = await sock.recvfrom(4096)
                    txid, flags, _, ancount = struct.unpack_from(">HHHH", data)
                    assert txid == 0x1234 and flags & 0x8000 and flags & 0xF == 0 and ancount == 1
                    assert data.endswith(bytes([100, 64, 0, 1])) or ancount == 1
                    return


# ---------------------------------------------------------------------------------- control plane
async def test_fuzz_control_handshakes(world):
    w, rng = world, world.rng
    good_init = noise.Initiator(await nc.fetch_server_key(w.host, w.port), keys.generate_private_key(), 130).initiation
    old_init = noise.Initiator(await nc.fetch_server_key(w.host, w.port), keys.generate_private_key(), 39).initiation

    def upgrade(handshake_value: str, extra: str = "", path: str = "/ts2021") -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\n"
                f"Connection: upgrade\r\nX-Tailscale-Handshake: {handshake_value}\r\n{extra}"
                "Content-Length: 0\r\n\r\n").encode()

    cases: list[bytes | list[bytes]] = []
    for _ in range(n_cases(40)):
        kind = rng.randrange(9)
        if kind == 0:
            cases.append(garbage(rng, 1, 2000))  # not HTTP at all
        elif kind == 1:
            cases.append(upgrade(base64.b64encode(garbage(rng, 0, 200)).decode()))
        elif kind == 2:
            cases.append(upgrade(base64.b64encode(mutate(rng, good_init)).decode()))
        elif kind == 3:
            cases.append(upgrade(base64.b64encode(old_init).decode()))  # version below the minimum
        elif kind == 4:
            cases.append(upgrade("%%%not-base64%%%" + rng.choice(["", "=", "=="])))
        elif kind == 5:
            cases.append(upgrade(base64.b64encode(good_init).decode())[: rng.randrange(10, 200)])  # truncated
        elif kind == 6:
            cases.append(f"GET /key?v={rng.choice(['-1', '99999999999999999999', 'x', '', '%00'])} HTTP/1.1\r\n"
                         "Host: x\r\n\r\n".encode())
        elif kind == 7:
            cases.append(upgrade(base64.b64encode(good_init).decode(), "X-Pad: " + "a" * rng.randint(20000, 70000)
                                 + "\r\n"))
        else:
            v = rng.choice([b"GET", b"POST", b"\x00\xff", b"PUT"])
            cases.append(v + b" " + mutate(rng, b"/ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol"
                                               b"\r\nConnection: upgrade\r\n\r\n"))
    await in_batches([partial(exchange, w.host, w.port, c) for c in cases])
    await control_healthy(w)


async def test_fuzz_noise_records(world):
    w, rng = world, world.rng

    async def case(kind: int, seed: int) -> None:
        r = random.Random(seed)
        with trio.fail_after(10):
            stream, transport, _ = await noise_session(w)
            try:
                if kind == 0:  # plain garbage where records belong
                    await stream.send_all(garbage(r, 1, 5000))
                elif kind == 1:  # a valid record, then one with a bad MAC
                    rec = bytearray(transport.encrypt(H2_PREFACE))
                    rec[r.randrange(3, len(rec))] ^= 0x40
                    await stream.send_all(bytes(rec))
                elif kind == 2:  # bad lengths: too big, too short, wrong type
                    t = r.choice([4, 4, 0, 1, 2, 3, 5, 255])
                    ln = r.choice([0, 1, 15, 4094, 4096, 65535, r.randrange(65536)])
                    await stream.send_all(struct.pack(">BH", t, ln) + garbage(r, 0, 100))
                elif kind == 3:  # a truncated record, then silence
                    rec = transport.encrypt(H2_PREFACE)
                    await stream.send_all(rec[: r.randrange(1, len(rec))])
                else:  # records encrypted with the wrong nonce (a replay of the first)
                    rec = transport.encrypt(H2_PREFACE)
                    await stream.send_all(rec + rec)
                await drain_until_closed_or_quiet(stream)
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                await trio.aclose_forcefully(stream)

    await in_batches([partial(case, i % 5, rng.randrange(1 << 30)) for i in range(n_cases(30))])
    await control_healthy(w)


async def test_fuzz_http2_frames(world):
    w, rng = world, world.rng
    import hpack

    good_headers = hpack.Encoder().encode([(":method", "POST"), (":path", "/machine/register"),
                                           (":scheme", "http"), (":authority", "x")])

    def frames(r: random.Random) -> bytes:
        kind = r.randrange(9)
        settings = h2_frame(4, 0, 0, b"")
        if kind == 0:  # no preface, garbage
            return garbage(r, 1, 3000)
        if kind == 1:  # random frames of any type / flags / stream
            return H2_PREFACE + settings + b"".join(
                h2_frame(r.randrange(12), r.randrange(256), r.choice([0, 1, 2, 3, r.randrange(1 << 31)]),
                         garbage(r, 0, 200)) for _ in range(r.randint(1, 8)))
        if kind == 2:  # HEADERS with garbage HPACK
            return H2_PREFACE + settings + h2_frame(1, 0x5, 1, garbage(r, 1, 300))
        if kind == 3:  # huge header block: CONTINUATION flood
            big = hpack.Encoder().encode([(":method", "POST"), (":path", "/x"), (":scheme", "http"),
                                          (":authority", "x"), ("x-big", "v" * 16000)])
            out = H2_PREFACE + settings + h2_frame(1, 0x1, 1, big[:10000])
            for i in range(r.randint(5, 40)):
                out += h2_frame(9, 0, 1, big[10000:] if i == 0 else b"\x00" * 10000)
            return out
        if kind == 4:  # window abuse: overflow and zero increments
            inc = r.choice([0, 0x7FFFFFFF, 0x7FFFFFFF])
            return H2_PREFACE + settings + h2_frame(1, 0x4, 1, good_headers) + \
                h2_frame(8, 0, r.choice([0, 1]), struct.pack(">I", inc)) * r.randint(1, 3)
        if kind == 5:  # bad SETTINGS values / lengths
            return H2_PREFACE + h2_frame(4, 0, 0, struct.pack(">HI", r.choice([2, 3, 4, 5, 6, 99]),
                                                                 r.choice([2, 0xFFFFFFFF, 0, 1 << 31]))) + \
                h2_frame(4, 0, 0, garbage(r, 1, 5))
        if kind == 6:  # DATA beyond the window / on a closed or idle stream
            return H2_PREFACE + settings + h2_frame(1, 0x4, 1, good_headers) + \
                b"".join(h2_frame(0, 0, r.choice([1, 3, 7]), b"\x00" * 16384) for _ in range(r.randint(1, 80)))
        if kind == 7:  # a request with malformed pseudo-headers
            hdrs = hpack.Encoder().encode([(":path", ""), (":method", "GET\r\n"), ("upper-Case", "x"),
                                           (":unknown", "y"), ("connection", "close")][: r.randint(1, 5)])
            return H2_PREFACE + settings + h2_frame(1, 0x5, 1, hdrs)
        return mutate(r, H2_PREFACE + settings + h2_frame(1, 0x5, 1, good_headers))

    async def case(seed: int) -> None:
        r = random.Random(seed)
        with trio.fail_after(15):
            stream, transport, _ = await noise_session(w)
            try:
                await stream.send_all(transport.encrypt(frames(r)))
                await drain_until_closed_or_quiet(stream)
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                await trio.aclose_forcefully(stream)

    await in_batches([partial(case, rng.randrange(1 << 30)) for _ in range(n_cases(40))])
    await control_healthy(w)


def _wrong_types(rng: random.Random) -> list:
    """Values of the wrong JSON type (or malformed keys). Not null: Go decodes null as absent, and
    a register request without an auth key legitimately starts an interactive login."""
    return [rng.randrange(-5, 5), "x" * rng.randrange(1, 5), [], [1, "a"], {"a": 1}, False, True, 1.5,
            "nodekey:" + "zz" * 32, "nodekey:" + "00" * 31, "mkey:" + "11" * 32]


async def test_fuzz_register_and_map_bodies(world):
    w, rng = world, world.rng
    valid_node = keys.NODE.format(keys.public_key(keys.generate_private_key()))

    def reg_body(r: random.Random) -> bytes:
        body = {"Version": 130, "NodeKey": valid_node, "Auth": {"AuthKey": w.authkey},
                "Hostinfo": {"Hostname": "evil"}}
        kind = r.randrange(6)
        if kind == 0:
            return garbage(r, 0, 500)
        if kind == 1:
            return json.dumps(body).encode()[: r.randrange(1, 60)]  # truncated JSON
        if kind == 2:  # a required field with a wrong type
            field = r.choice(["NodeKey", "Auth", "Version"])
            # an object with unknown fields is a valid Auth (no key: interactive login)
            body[field] = r.choice([v for v in _wrong_types(r) if not (field == "Auth" and isinstance(v, dict))])
            return json.dumps(body).encode()
        if kind == 3:
            body["Auth"] = {"AuthKey": r.choice(_wrong_types(r))}
            return json.dumps(body).encode()
        if kind == 4:  # a JSON value that is not an object, or deep nesting
            return r.choice([b"[]", b"null", b"1", b'"x"', b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" +
                             b"}" * 3000])
        return mutate(r, json.dumps(body).encode())

    def map_body(r: random.Random) -> bytes:
        body = {"Version": 130, "NodeKey": valid_node, "Stream": False, "OmitPeers": True,
                "Hostinfo": {"Hostname": "evil"}, "Endpoints": ["1.2.3.4:5"]}
        kind = r.randrange(4)
        if kind == 0:
            return garbage(r, 0, 500)
        if kind == 1:
            field = r.choice(["NodeKey", "Version", "Hostinfo", "Endpoints", "Stream", "DiscoKey"])
            body[field] = r.choice(_wrong_types(r))
            return json.dumps(body).encode()
        if kind == 2:
            return json.dumps(body).encode()[: r.randrange(1, 80)]
        return mutate(r, json.dumps(body).encode())

    async with nc.open_noise_client(w.host, w.port) as c:
        for i in range(n_cases(60)):
            path = "/machine/register" if i % 2 == 0 else "/machine/map"
            body = reg_body(rng) if i % 2 == 0 else map_body(rng)
            with trio.fail_after(10):
                try:
                    resp = await c.request("POST", path, body, [("content-type", "application/json")])
                except nc.ControlClientError:
                    continue
            if path == "/machine/register" and resp.status == 200:
                # never a node: the body cannot be a valid registration of `valid_node`
                assert b'"MachineAuthorized":true' not in resp.body.replace(b" ", b""), body[:200]
            elif path == "/machine/map":
                assert resp.status != 200 or not resp.body.startswith(b"{") or b"Node" not in resp.body, body[:200]
            seq = await w.store.latest_seq()
            assert seq == w.seq0, (f"{path} with body {body[:300]!r} changed the store "
                                   f"(status {resp.status}: {resp.body[:200]!r})")
            if c.closed:
                break
    await control_healthy(w)


# ---------------------------------------------------------------------------------- DERP relay
async def test_fuzz_derp(world):
    w, rng = world, world.rng
    port = w.derp_port
    upgrade = b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"

    cases: list = []
    for _ in range(n_cases(20)):  # before the handshake: garbage HTTP, garbage ClientInfo
        kind = rng.randrange(4)
        if kind == 0:
            cases.append(partial(exchange, "127.0.0.1", port, garbage(rng, 1, 3000), tls=True))
        elif kind == 1:
            cases.append(partial(exchange, "127.0.0.1", port, mutate(rng, upgrade), tls=True))
        elif kind == 2:  # a ClientInfo frame with a bad box, bad length or wrong type
            t = rng.choice([2, 2, 2, 4, 0, 255])
            ln = rng.choice([0, 10, 56, 300, 1 << 20, 0xFFFFFFFF])
            cases.append(partial(exchange, "127.0.0.1", port,
                                 upgrade + struct.pack(">BI", t, ln) + garbage(rng, 0, 400), tls=True))
        else:
            cases.append(partial(exchange, "127.0.0.1", port, garbage(rng, 1, 3000)))  # not even TLS
    await in_batches(cases)

    # after a valid handshake (a known node key): malformed and forbidden frames
    def bad_frame(r: random.Random) -> bytes:
        kind = r.randrange(8)
        if kind == 0:
            return garbage(r, 1, 2000)
        if kind == 1:  # SendPacket shorter than a key, or larger than allowed
            n = r.choice([0, 5, 31, 32 + 65537, 1 << 21])
            return struct.pack(">BI", 4, n) + garbage(r, 0, 100)
        if kind == 2:  # mesh-only frames without the mesh key
            return r.choice([d.encode(d.WatchConns()), d.encode(d.ClosePeer(os.urandom(32))),
                             d.encode(d.ForwardPacket(os.urandom(32), os.urandom(32), b"x"))])
        if kind == 3:  # wrong fixed lengths
            return struct.pack(">BI", r.choice([7, 10, 11, 12]), r.choice([0, 2, 7, 33])) + garbage(r, 0, 40)
        if kind == 4:  # unknown types, oversized
            return struct.pack(">BI", r.randrange(20, 256), r.choice([0, 100, 1 << 22])) + garbage(r, 0, 100)
        if kind == 5:  # a random frame type with random contents
            return struct.pack(">BI", r.randrange(16), r.randrange(200)) + garbage(r, 0, 199)
        if kind == 6:  # a ClientInfo again after the handshake
            return struct.pack(">BI", 2, 100) + garbage(r, 100, 100)
        return mutate(r, d.encode(d.SendPacket(os.urandom(32), b"payload")))

    async def after_handshake(seed: int) -> None:
        r = random.Random(seed)
        with trio.fail_after(10):
            c = await connect_derp("127.0.0.1", port, w.node_priv)
            try:
                await c.send_raw(bad_frame(r))
                await drain_until_closed_or_quiet(c.stream)
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                await c.aclose()

    await in_batches([partial(after_handshake, rng.randrange(1 << 30)) for _ in range(n_cases(30))])
    await derp_healthy(w)
    svc = w.ctx.registry["derp"]
    with trio.fail_after(5):  # every fuzzed connection is gone, none is stuck
        while svc.stats.clients_current:
            await trio.sleep(0.02)
    assert svc.stats.protocol_errors > 0 and svc.stats.tls_errors > 0


# ---------------------------------------------------------------------------------- STUN, DNS
async def test_fuzz_stun_and_dns_datagrams(world):
    w, rng = world, world.rng
    good_stun = stun.binding_request()
    good_dns = dns_query(f"fuzzer.{BASE}")
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        for _ in range(n_cases(150)):
            pkt = rng.choice([garbage(rng, 0, 600), mutate(rng, good_stun), good_stun[:20] + garbage(rng, 0, 80),
                              struct.pack(">HH", 0x0001, rng.randrange(65536)) + b"\x21\x12\xa4\x42" +
                              garbage(rng, 12, 200)])
            await sock.sendto(pkt, ("127.0.0.1", w.stun_port))
            pkt = rng.choice([garbage(rng, 0, 600), mutate(rng, good_dns), good_dns[:12] + garbage(rng, 0, 300),
                              struct.pack(">HHHHHH", 1, 0x0100, 65535, 65535, 65535, 65535)])
            await sock.sendto(pkt, ("127.0.0.1", w.dns_port))
        # whatever came back: well-formed enough to be a reply to us (never an amplification)
        with trio.move_on_after(0.3):
            while True:
                data, addr = await sock.recvfrom(65536)
                assert len(data) <= 4096
    # DNS over TCP: bad length prefixes, truncated messages, garbage
    tcp_cases = []
    for _ in range(n_cases(20)):
        kind = rng.randrange(3)
        if kind == 0:
            tcp_cases.append(struct.pack(">H", rng.randrange(65536)) + garbage(rng, 0, 300))
        elif kind == 1:
            tcp_cases.append(struct.pack(">H", len(good_dns)) + mutate(rng, good_dns))
        else:
            tcp_cases.append(garbage(rng, 1, 1000))
    await in_batches([partial(exchange, "127.0.0.1", w.dns_port, c) for c in tcp_cases])
    await stun_healthy(w)
    await dns_healthy(w)
