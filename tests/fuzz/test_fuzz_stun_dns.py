"""Fuzzing STUN and DNS on loopback: malformed datagrams to both (interleaved, from one seed),
and DNS over TCP with bad length prefixes (the services and the invariants: conftest.py)."""

from __future__ import annotations

import socket
import struct
from functools import partial

import trio

from fuzzkit import BASE, exchange, garbage, in_batches, mutate, n_cases
from trioscale.shared.proto import stun


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
