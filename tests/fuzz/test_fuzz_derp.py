"""Fuzzing the DERP relay on loopback: garbage before and during the TLS and HTTP upgrade, bad
ClientInfo frames, and malformed or forbidden frames after a valid handshake (the services and
the invariants: conftest.py)."""

from __future__ import annotations

import os
import random
import struct
from functools import partial

import trio

from fuzzkit import drain_until_closed_or_quiet, exchange, garbage, in_batches, mutate, n_cases
from trioscale.shared.proto import derp as d
from trioscale.shared.proto import keys
from trioscale.shared.testing.derpclient import connect_derp, open_derp_client


async def derp_healthy(w) -> None:
    with trio.fail_after(10):
        async with open_derp_client("127.0.0.1", w.derp_port, w.node_priv) as c:
            await c.ping()
            await c.send(keys.public_key(w.node_priv), b"to myself")
            ev = await c.recv_packet()
            assert ev.packet == b"to myself"


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
    svc = w.derp
    with trio.fail_after(5):  # every fuzzed connection is gone, none is stuck
        while svc.stats.clients_current:
            await trio.sleep(0.02)
    assert svc.stats.protocol_errors > 0 and svc.stats.tls_errors > 0
