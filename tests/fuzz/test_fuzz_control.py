"""Fuzzing the control plane on loopback: the upgrade and Noise handshake, Noise records, HTTP/2
frames inside a valid Noise session, and register and map requests with malformed JSON and
wrong field types (the services and the invariants: conftest.py)."""

from __future__ import annotations

import base64
import json
import random
import struct
from functools import partial

import trio

from fuzzkit import drain_until_closed_or_quiet, exchange, garbage, in_batches, mutate, n_cases
from trioscale.shared.proto import keys, noise
from trioscale.shared.testing import noiseclient as nc


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


def h2_frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype & 0xFF, flags & 0xFF]) + \
        struct.pack(">I", stream_id & 0x7FFFFFFF) + payload


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


async def control_healthy(w) -> None:
    with trio.fail_after(10):
        assert await nc.fetch_server_key(w.host, w.port)
        async with nc.open_noise_client(w.host, w.port) as c:
            r = await c.request("POST", "/machine/no-such-path", b"{}")
            assert 400 <= r.status < 600


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
