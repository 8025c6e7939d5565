#!/usr/bin/env python3
"""DNS queries per second: A lookups over UDP against one DNS server process.

Run by hand (not a test). It starts the DNS service (services/dns/service.py) in a child process
with an in-memory SQLite store holding --nodes nodes, then a load generator in this process keeps
--window queries in flight on each of --sockets UDP sockets for --seconds, asking for random node
names (plus a share of NXDOMAIN names with --nx). The per-source rate limit is raised out of the
way (one benchmark source would otherwise be held at 100 q/s); --limited measures with the default
limit in place instead. It also times the sans-IO core alone (Resolver.handle in a loop, no
sockets), which bounds what any adapter can do.

    .venv/bin/python benchmarks/dns_qps.py --nodes 1000 --seconds 5

Both processes share the machine: on 2 cores the client takes a good part of one, so the numbers
are a floor for the server.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import select
import socket
import struct
import sys
import time

from dnslib import DNSRecord


def _server(conn, nodes: int, limited: bool) -> None:
    import logging

    import trio

    from trioscale.config import config_from_dict
    from trioscale.options import dns_options
    from trioscale.services.dns.service import DnsTuning, serve
    from trioscale.shared.model import Node
    from trioscale.shared.store.sqlite import SqliteStore

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        store = await SqliteStore.open(":memory:")
        user = await store.create_user("bench")
        for i in range(1, nodes + 1):
            await store.create_node(
                Node(
                    id=0,
                    machine_key=b"m" + i.to_bytes(31, "big"),
                    node_key=b"n" + i.to_bytes(31, "big"),
                    user_id=user.id,
                    hostname=f"node-{i}",
                    given_name=f"node-{i}",
                    ipv4=f"100.64.{i // 256}.{i % 256}",
                    ipv6=f"fd7a:115c:a1e0::{i:x}",
                )
            )
        cfg = config_from_dict({"dns": {"base_domain": "tailnet.internal", "listen_addr": "127.0.0.1:0"}})
        tuning = DnsTuning() if limited else DnsTuning(rate=1e9, burst=1e9)
        async with trio.open_nursery() as nursery:
            svc = await nursery.start(lambda task_status: serve(dns_options(cfg), store, task_status=task_status, tuning=tuning))
            conn.send(svc.address)
            await trio.to_thread.run_sync(conn.recv)  # wait for "stop"
            conn.send(svc.stats.as_dict())
            nursery.cancel_scope.cancel()
        await store.aclose()

    trio.run(main)


def _queries(nodes: int, nx: float, count: int = 4096) -> list[bytes]:
    out = []
    for _ in range(count):
        if random.random() < nx:
            name = f"missing-{random.randrange(10**6)}.tailnet.internal"
        else:
            name = f"node-{random.randint(1, nodes)}.tailnet.internal"
        out.append(bytes(DNSRecord.question(name, "A").pack()))
    return out


def _load(host: str, port: int, queries: list[bytes], seconds: float, window: int, sockets: int) -> tuple[int, int, list[float]]:
    """Closed loop: `window` queries in flight per socket. Returns (sent, answered, latencies)."""
    socks = []
    for _ in range(sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    inflight: dict[tuple[int, int], float] = {}
    sent = answered = 0
    latencies: list[float] = []
    qid = 0
    qi = 0

    def send(si: int) -> None:
        nonlocal sent, qid, qi
        qid = (qid + 1) & 0xFFFF
        q = queries[qi % len(queries)]
        qi += 1
        try:
            socks[si].send(struct.pack("!H", qid) + q[2:])
        except BlockingIOError:
            return
        inflight[(si, qid)] = time.perf_counter()
        sent += 1

    for si in range(sockets):
        for _ in range(window):
            send(si)
    end = time.perf_counter() + seconds
    fds = {s.fileno(): i for i, s in enumerate(socks)}
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        ready, _, _ = select.select(socks, [], [], 0.2)
        if not ready:
            # lost queries (rate limit, drops): replace them so the window stays full
            stale = [k for k, t in inflight.items() if now - t > 0.5]
            for k in stale:
                del inflight[k]
                send(k[0])
            continue
        for s in ready:
            si = fds[s.fileno()]
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                rid = struct.unpack_from("!H", data)[0]
                t = inflight.pop((si, rid), None)
                if t is not None:
                    answered += 1
                    latencies.append(time.perf_counter() - t)
                    send(si)
    for s in socks:
        s.close()
    return sent, answered, latencies


def _core_only(nodes: int, queries: list[bytes], seconds: float) -> float:
    from trioscale.services.dns.ratelimit import RateLimiter
    from trioscale.services.dns.resolver import Resolver
    from trioscale.services.dns.zone import Zone

    zone = Zone("tailnet.internal")
    for i in range(1, nodes + 1):
        zone.set_node(i, f"node-{i}", f"100.64.{i // 256}.{i % 256}", f"fd7a:115c:a1e0::{i:x}")
    res = Resolver(zone, rate_limiter=RateLimiter(1e9, 1e9))
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for q in queries[:256]:
            res.handle(q, source=("127.0.0.1", 1), now=0.0)
        n += 256
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--window", type=int, default=32, help="queries in flight per socket")
    ap.add_argument("--sockets", type=int, default=4)
    ap.add_argument("--nx", type=float, default=0.0, help="share of queries for names that do not exist")
    ap.add_argument("--limited", action="store_true", help="keep the default per-source rate limit")
    args = ap.parse_args()

    queries = _queries(args.nodes, args.nx)
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.nodes} nodes, {args.nx:.0%} NXDOMAIN, {args.sockets}x{args.window} in flight")

    core = _core_only(args.nodes, queries, min(args.seconds, 3.0))
    print(f"sans-IO core alone:   {core:10.0f} queries/s (one thread, no sockets)")

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server, args=(child, args.nodes, args.limited), daemon=True)
    proc.start()
    try:
        address = parent.recv()
        host, port = address.rsplit(":", 1)
        _load(host, int(port), queries, 0.5, args.window, args.sockets)  # warm up
        t0 = time.perf_counter()
        sent, answered, lat = _load(host, int(port), queries, args.seconds, args.window, args.sockets)
        elapsed = time.perf_counter() - t0
        parent.send("stop")
        stats = parent.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    print(f"UDP service:          {answered / elapsed:10.0f} answers/s over {elapsed:.1f} s "
          f"({sent} sent, {answered} answered)")
    print(f"latency ms:           p50 {pct(0.5):.2f}  p99 {pct(0.99):.2f}  max {pct(1.0) if lat else float('nan'):.2f}")
    print(f"server counters:      {stats}")


if __name__ == "__main__":
    sys.exit(main())
