"""The running DNS service on loopback, asked by a real client library (dnspython, from threads)."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
import trio
from dnslib import RR, DNSRecord

from trioscale.config import config_from_dict
from trioscale.options import dns_options
from trioscale.services.dns.service import DnsService, DnsTuning, serve
from trioscale.shared.model import Node
from trioscale.shared.store.sqlite import SqliteStore

BASE = "tailnet.internal"
_count = 0


def make_node(given_name: str, ipv4: str | None, ipv6: str | None = None, *, user_id: int) -> Node:
    global _count
    _count += 1
    i = _count
    return Node(
        id=0,
        machine_key=b"m" + i.to_bytes(31, "big"),
        node_key=b"n" + i.to_bytes(31, "big"),
        user_id=user_id,
        hostname=given_name,
        given_name=given_name,
        ipv4=ipv4,
        ipv6=ipv6,
        register_method="cli",
    )


FAST = DnsTuning(watch_interval=0.05)


@dataclass
class Running:
    """A DNS service under test and what it was started with."""

    svc: DnsService
    store: SqliteStore
    user_id: int


@asynccontextmanager
async def running(
    dns_cfg: dict[str, Any] | None = None, tuning: DnsTuning = FAST, nodes=(), serve_from: Any = None
) -> AsyncIterator[tuple[Running, str, int]]:
    """`serve_from(store)`: what the service is given as its store (default: the store itself)."""
    cfg = config_from_dict({"dns": {"base_domain": BASE, "listen_addr": "127.0.0.1:0", **(dns_cfg or {})}})
    store = await SqliteStore.open(":memory:")
    try:
        user = await store.create_user("alice")
        for n in nodes:
            await store.create_node(n.replace(user_id=user.id))
        served = store if serve_from is None else serve_from(store)
        async with trio.open_nursery() as nursery:
            svc = await nursery.start(lambda task_status: serve(dns_options(cfg), served, task_status=task_status, tuning=tuning))
            host, port = svc.addresses["dns"].rsplit(":", 1)
            yield Running(svc, store, user.id), host, int(port)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


async def udp(host: str, port: int, name: str, rdtype: str = "A", *, timeout: float = 2.0, **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    return await trio.to_thread.run_sync(lambda: dns.query.udp(q, host, port=port, timeout=timeout))


async def tcp(host: str, port: int, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    return await trio.to_thread.run_sync(lambda: dns.query.tcp(q, host, port=port, timeout=2.0))


def addrs(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


NODES = [
    make_node("alpha", "100.64.0.1", "fd7a:115c:a1e0::1", user_id=0),
    make_node("v4only", "100.64.0.2", None, user_id=0),
]
EXTRA = [{"name": f"many.{BASE}", "type": "A", "value": f"100.64.1.{i}"} for i in range(60)] + [
    {"name": f"grafana.{BASE}", "type": "AAAA", "value": "fd7a:115c:a1e0::50"}
]


async def test_every_record_kind_over_udp_and_tcp():
    async with running({"extra_records": EXTRA}, nodes=NODES) as (ctx, host, port):
        r = await udp(host, port, f"Alpha.{BASE}", "A")
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
        assert addrs(r) == ["100.64.0.1"]
        assert addrs(await udp(host, port, f"alpha.{BASE}", "AAAA")) == ["fd7a:115c:a1e0::1"]
        assert addrs(await tcp(host, port, f"alpha.{BASE}", "AAAA")) == ["fd7a:115c:a1e0::1"]
        assert addrs(await udp(host, port, f"grafana.{BASE}", "AAAA")) == ["fd7a:115c:a1e0::50"]
        soa = await udp(host, port, BASE, "SOA")
        assert soa.answer[0].rdtype == dns.rdatatype.SOA and soa.answer[0][0].mname.to_text() == f"ns.{BASE}."
        ns = await udp(host, port, BASE, "NS")
        assert addrs(ns) == [f"ns.{BASE}."]
        assert addrs(await udp(host, port, f"ns.{BASE}", "A")) == ["127.0.0.1"]
        # TXT values come through the store's change log, like every other record
        expires = datetime.now(timezone.utc) + timedelta(minutes=10)
        await ctx.store.set_dns_txt(f"_acme-challenge.alpha.{BASE}", ["tok-1"], expires)
        await ctx.svc.wait_seq(await ctx.store.latest_seq())
        txt = await udp(host, port, f"_acme-challenge.alpha.{BASE}", "TXT")
        assert addrs(txt) == ['"tok-1"']
        await ctx.store.set_dns_txt(f"_acme-challenge.alpha.{BASE}", [], expires)
        await ctx.svc.wait_seq(await ctx.store.latest_seq())
        gone = await udp(host, port, f"_acme-challenge.alpha.{BASE}", "TXT")
        assert gone.rcode() == dns.rcode.NXDOMAIN
        stats = ctx.svc.stats
        assert stats.queries >= 9 and stats.rcodes["NOERROR"] >= 8


async def test_reverse_lookups():
    async with running(nodes=NODES) as (ctx, host, port):
        r = await udp(host, port, dns.reversename.from_address("100.64.0.1").to_text(), "PTR")
        assert addrs(r) == [f"alpha.{BASE}."]
        r = await udp(host, port, dns.reversename.from_address("fd7a:115c:a1e0::1").to_text(), "PTR")
        assert addrs(r) == [f"alpha.{BASE}."]
        r = await udp(host, port, dns.reversename.from_address("100.64.7.7").to_text(), "PTR")
        assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == dns.rdatatype.SOA
        assert r.authority[0].name.to_text() == "64.100.in-addr.arpa."


async def test_nxdomain_nodata_refused():
    async with running(nodes=NODES) as (ctx, host, port):
        nodata = await udp(host, port, f"v4only.{BASE}", "AAAA")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA
        nx = await udp(host, port, f"nobody.{BASE}", "A")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
        refused = await udp(host, port, "example.com", "A")
        assert refused.rcode() == dns.rcode.REFUSED
        assert ctx.svc.stats.rcodes["REFUSED"] == 1


async def test_truncation_then_tcp_gets_everything():
    async with running({"extra_records": EXTRA}) as (ctx, host, port):
        q = dns.message.make_query(f"many.{BASE}", "A")  # no EDNS: 512 bytes
        r = await trio.to_thread.run_sync(lambda: dns.query.udp(q, host, port=port, timeout=2, ignore_trailing=True))
        assert r.flags & dns.flags.TC and not r.answer
        r, used_tcp = await trio.to_thread.run_sync(
            lambda: dns.query.udp_with_fallback(q, host, port=port, timeout=2)
        )
        assert used_tcp and len(addrs(r)) == 60
        # with a big enough EDNS buffer it fits in one datagram
        r = await udp(host, port, f"many.{BASE}", "A", use_edns=0, payload=4096)
        assert not r.flags & dns.flags.TC and len(addrs(r)) == 60
        assert ctx.svc.stats.truncated >= 2


async def test_node_added_through_the_store_resolves_within_a_second():
    async with running() as (ctx, host, port):
        assert (await udp(host, port, f"newbie.{BASE}")).rcode() == dns.rcode.NXDOMAIN
        uid = ctx.user_id
        t0 = time.monotonic()
        node = await ctx.store.create_node(make_node("newbie", "100.64.0.77", "fd7a:115c:a1e0::77", user_id=uid))
        while True:
            r = await udp(host, port, f"newbie.{BASE}")
            if r.answer:
                break
            assert time.monotonic() - t0 < 1.0, "node did not resolve within 1 s"
            await trio.sleep(0.02)
        assert addrs(r) == ["100.64.0.77"]
        assert time.monotonic() - t0 < 1.0
        # rename, then delete: both seen without a restart
        await ctx.store.update_node(node.id, given_name="renamed")
        await wait_until(lambda: "renamed.tailnet.internal" in ctx.svc.zone)
        assert addrs(await udp(host, port, f"renamed.{BASE}")) == ["100.64.0.77"]
        assert (await udp(host, port, f"newbie.{BASE}")).rcode() == dns.rcode.NXDOMAIN
        await ctx.store.delete_node(node.id)
        await wait_until(lambda: "renamed.tailnet.internal" not in ctx.svc.zone)
        assert (await udp(host, port, f"renamed.{BASE}")).rcode() == dns.rcode.NXDOMAIN
        assert ctx.svc.seq == await ctx.store.latest_seq()


async def wait_until(cond, timeout: float = 1.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


async def test_extra_records_file_is_watched(tmp_path, caplog):
    path = tmp_path / "extra.json"
    path.write_text(json.dumps([{"name": f"db.{BASE}", "type": "A", "value": "100.64.5.5"}]))
    async with running({"extra_records_path": str(path)}) as (ctx, host, port):
        assert addrs(await udp(host, port, f"db.{BASE}")) == ["100.64.5.5"]
        path.write_text(json.dumps([{"name": f"db.{BASE}", "type": "A", "value": "100.64.5.6"},
                                    {"name": f"cache.{BASE}", "type": "A", "value": "100.64.5.7"}]))
        os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        await wait_until(lambda: "cache.tailnet.internal" in ctx.svc.zone, 2.0)
        assert addrs(await udp(host, port, f"db.{BASE}")) == ["100.64.5.6"]
        # a broken file keeps the records loaded before
        path.write_text("[{")
        os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
        await wait_until(lambda: "(keeping the records loaded before)" in caplog.text, 2.0)
        assert addrs(await udp(host, port, f"cache.{BASE}")) == ["100.64.5.7"]


async def fake_upstream(task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A tiny upstream answering every A query with 192.0.2.99 (and 40 records for big.example)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        while True:
            data, addr = await sock.recvfrom(4096)
            q = DNSRecord.parse(data)
            a = q.reply()
            name = str(q.q.qname)
            count = 40 if name.startswith("big.") else 1
            for i in range(count):
                a.add_answer(*RR.fromZone(f"{name} 300 IN A 192.0.2.{99 + i}"))
            await sock.sendto(a.pack(), addr)


async def test_forwarding_to_upstreams_and_servfail(nursery):
    up_port = await nursery.start(fake_upstream)
    async with running({"nameservers": {"global": [f"127.0.0.1:{up_port}"]}}, nodes=NODES) as (ctx, host, port):
        r = await udp(host, port, "example.com", "A")
        assert r.rcode() == dns.rcode.NOERROR and addrs(r) == ["192.0.2.99"] and r.flags & dns.flags.RA
        assert addrs(await udp(host, port, f"alpha.{BASE}")) == ["100.64.0.1"]  # ours: not forwarded
        q = dns.message.make_query("big.example.com", "A")
        r, used_tcp = await trio.to_thread.run_sync(lambda: dns.query.udp_with_fallback(q, host, port=port, timeout=3))
        assert used_tcp and len(r.answer[0]) == 40
        assert ctx.svc.stats.forwarded >= 3
    # an upstream that does not answer → SERVFAIL
    dead = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await dead.bind(("127.0.0.1", 0))
    with dead:
        dead_port = dead.getsockname()[1]
        opts = DnsTuning(forward_timeout=0.2)
        async with running({"nameservers": {"global": [f"127.0.0.1:{dead_port}"]}}, tuning=opts) as (ctx, host, port):
            r = await udp(host, port, "example.com", "A")
            assert r.rcode() == dns.rcode.SERVFAIL
            assert ctx.svc.stats.forward_failures == 1


async def test_rate_limit_and_malformed_on_the_wire():
    async with running(tuning=DnsTuning(rate=1, burst=5), nodes=NODES) as (ctx, host, port):
        answered = 0
        for _ in range(8):
            try:
                await udp(host, port, f"alpha.{BASE}", timeout=0.2)
                answered += 1
            except dns.exception.Timeout:
                pass
        assert answered <= 6 and ctx.svc.stats.rate_limited >= 2
    async with running() as (ctx, host, port):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.connect((host, port))
            await sock.send(b"\x00\x07")  # runt: dropped
            await sock.send(struct.pack("!HHHHHH", 4321, 0x0100, 1, 0, 0, 0) + b"\x3fxx")
            with trio.fail_after(2):
                reply = await sock.recv(512)
            assert reply[:2] == struct.pack("!H", 4321) and reply[3] & 0xF == dns.rcode.FORMERR
        stats = ctx.svc.stats
        await wait_until(lambda: stats.dropped == 1)
        # still serving
        assert (await udp(host, port, f"x.{BASE}")).rcode() == dns.rcode.NXDOMAIN


async def test_tcp_connection_bound_and_idle_timeout():
    opts = DnsTuning(max_tcp_connections=2, tcp_idle_timeout=0.3)
    async with running(tuning=opts, nodes=NODES) as (ctx, host, port):
        s1 = await trio.open_tcp_stream(host, port)
        s2 = await trio.open_tcp_stream(host, port)
        await wait_until(lambda: ctx.svc.tcp_active == 2)
        s3 = await trio.open_tcp_stream(host, port)
        with trio.fail_after(1):
            assert await s3.receive_some(10) == b""  # refused: closed at once
        assert ctx.svc.stats.tcp_rejected == 1
        # a pipelined query on a held connection is answered
        q = dns.message.make_query(f"alpha.{BASE}", "A").to_wire()
        await s1.send_all(struct.pack("!H", len(q)) + q + struct.pack("!H", len(q)) + q)
        got = b""
        with trio.fail_after(1):
            while len(got) < 4:
                got += await s1.receive_some(4096)
        # idle connections are closed after the timeout
        with trio.fail_after(2):
            while await s2.receive_some(4096):
                pass
            while await s1.receive_some(4096):
                pass
        await wait_until(lambda: ctx.svc.tcp_active == 0)
        for s in (s1, s2, s3):
            await s.aclose()


async def test_port_zero_is_usable_for_udp_and_tcp_and_shutdown_is_clean():
    async with running(nodes=NODES) as (ctx, host, port):
        assert port != 0 and ctx.svc.port == port
        assert addrs(await udp(host, port, f"alpha.{BASE}")) == ["100.64.0.1"]
        assert addrs(await tcp(host, port, f"alpha.{BASE}")) == ["100.64.0.1"]
    # after cancel both ports are free again
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.close()
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", port))
    t.close()


@pytest.mark.parametrize("listen", ["127.0.0.1:0"])
async def test_started_object(listen):
    async with running({"listen_addr": listen}) as (ctx, host, port):
        svc = ctx.svc
        assert svc.address == f"127.0.0.1:{port}" and svc.addresses == {"dns": svc.address}
        assert svc.txt is svc.zone.txt
        assert set(svc.stats.as_dict()) >= {"queries", "rcodes", "rate_limited"}


async def test_empty_listen_addr_disables_the_server():
    cfg = config_from_dict({"dns": {"listen_addr": ""}})
    store = await SqliteStore.open(":memory:")
    try:
        async with trio.open_nursery() as nursery:
            assert await nursery.start(serve, dns_options(cfg), store) is None
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


# -- ACME TXT values ahead of the change log -------------------------------------------------


class HeldStore:
    """The store as the DNS service sees it, with its change feed held back until `feed_open` is
    set (the lag of the change log, made as long as the test needs) and its TXT reads counted,
    held while `reads_open` is not set, and failing while `failing`."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.feed_open = trio.Event()
        self.reads_open = trio.Event()
        self.reads_open.set()
        self.failing = False
        self.txt_reads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_dns_txt(self, name: str, now: datetime) -> Any:
        self.txt_reads.append(name)
        await self.reads_open.wait()
        if self.failing:
            raise RuntimeError("database is gone")
        return await self._store.get_dns_txt(name, now)

    @asynccontextmanager
    async def subscribe(self, since: int | None = None) -> AsyncIterator[Any]:
        async with self._store.subscribe(since=since) as changes:
            yield self._held(changes)

    async def _held(self, changes: Any) -> AsyncIterator[Any]:
        async for change in changes:
            await self.feed_open.wait()
            yield change


def txt_values(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.TXT for rd in rrset)


def held(box: dict[str, HeldStore]) -> Any:
    def wrap(store: SqliteStore) -> HeldStore:
        box["store"] = box.get("store") or HeldStore(store)
        return box["store"]

    return wrap


async def test_txt_value_is_answered_by_the_first_query_after_the_write():
    box: dict[str, HeldStore] = {}
    async with running(nodes=NODES, serve_from=held(box)) as (ctx, host, port):
        watched = box["store"]
        expires = datetime.now(timezone.utc) + timedelta(minutes=10)
        name = f"_acme-challenge.alpha.{BASE}"
        # tailscaled looks the name up, calls set-dns, and the ACME server asks the moment it returns
        assert (await udp(host, port, name, "TXT")).rcode() == dns.rcode.NXDOMAIN
        await ctx.store.set_dns_txt(name, ["tok-1"], expires)
        r = await udp(host, port, f"_acme-challenge.Alpha.{BASE}", "TXT")
        assert r.rcode() == dns.rcode.NOERROR and txt_values(r) == ['"tok-1"']
        await ctx.store.set_dns_txt(f"_acme-challenge.v4only.{BASE}", ["tok-3"], expires)
        r = await tcp(host, port, f"_acme-challenge.v4only.{BASE}", "ANY")
        assert txt_values(r) == ['"tok-3"']
        assert ctx.svc.seq < await ctx.store.latest_seq(), "the change log was not held back"
        assert watched.txt_reads == [name, name, f"_acme-challenge.v4only.{BASE}"]
        assert ctx.svc.stats.txt_reads == 3
        # a retry adds a new token to a live one: the store's list is served, not the table's
        watched.feed_open.set()
        await ctx.svc.wait_seq(await ctx.store.latest_seq())
        watched.feed_open = trio.Event()
        await ctx.store.set_dns_txt(name, ["tok-1", "tok-2"], expires)
        assert txt_values(await udp(host, port, name, "TXT")) == ['"tok-1"', '"tok-2"']
        # the change log catches up and keeps the table current
        watched.feed_open.set()
        await ctx.store.set_dns_txt(name, [], expires)
        await ctx.svc.wait_seq(await ctx.store.latest_seq())
        assert (await udp(host, port, name, "TXT")).rcode() == dns.rcode.NXDOMAIN


async def send_all_then_receive(host: str, port: int, names: list[str], *, replies: int) -> dict[int, int]:
    """Send a TXT query for each name (id = its index) from one socket; id -> rcode of `replies` replies."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: dict[int, int] = {}
    with sock:
        await sock.connect((host, port))
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "TXT")
            q.id = i
            await sock.send(q.to_wire())
        with trio.fail_after(2):
            while len(got) < replies:
                reply = dns.message.from_wire(await sock.recv(4096))
                got[reply.id] = reply.rcode()
    return got


async def test_a_flood_of_txt_queries_costs_a_bounded_number_of_store_reads():
    box: dict[str, HeldStore] = {}
    # two reads per name, then (practically) none: the count does not depend on the test's speed
    tuning = replace(FAST, txt_read_burst=2, txt_read_rate=0.001)
    async with running(nodes=NODES, tuning=tuning, serve_from=held(box)) as (ctx, host, port):
        watched, svc = box["store"], ctx.svc
        missing = f"_acme-challenge.alpha.{BASE}"
        # two queries within the budget share one read; the other 18 are answered at once
        watched.reads_open = trio.Event()
        async with trio.open_nursery() as nursery:
            results: dict[int, int] = {}

            async def flood() -> None:
                results.update(await send_all_then_receive(host, port, [missing] * 20, replies=20))

            nursery.start_soon(flood)
            await wait_until(lambda: svc.txt_reads_active == 2 and svc.stats.rcodes["NXDOMAIN"] == 18)
            assert watched.txt_reads == [missing]
            watched.reads_open.set()
        assert sorted(results) == list(range(20)) and set(results.values()) == {dns.rcode.NXDOMAIN}
        # the name's budget is spent; other names have their own, no larger
        others = [f"_acme-challenge.host{i}.{BASE}" for i in range(3)]
        got = await send_all_then_receive(host, port, [missing] * 10 + others * 10, replies=40)
        assert set(got.values()) == {dns.rcode.NXDOMAIN}
        assert watched.txt_reads.count(missing) == 1
        assert all(1 <= watched.txt_reads.count(n) <= 2 for n in others), watched.txt_reads
        reads = len(watched.txt_reads)
        # names no node could set are never read
        for name, rdtype in ((f"_acme-challenge.a.b.{BASE}", "TXT"), (f"alpha.{BASE}", "TXT"), (missing, "A")):
            await udp(host, port, name, rdtype)
        assert len(watched.txt_reads) == reads and svc.stats.txt_reads == reads
        # over budget the table answers, as the change log keeps it
        await ctx.store.set_dns_txt(missing, ["tok"], datetime.now(timezone.utc) + timedelta(minutes=1))
        assert (await udp(host, port, missing, "TXT")).rcode() == dns.rcode.NXDOMAIN
        watched.feed_open.set()
        await svc.wait_seq(await ctx.store.latest_seq())
        assert addrs(await udp(host, port, missing, "TXT")) == ['"tok"']
        assert svc.txt_reads_active == 0 and not svc._txt_reading


async def test_txt_reads_are_bounded_and_a_failing_store_answers_as_before(caplog):
    box: dict[str, HeldStore] = {}
    tuning = replace(FAST, max_txt_reads=2)
    async with running(nodes=NODES, tuning=tuning, serve_from=held(box)) as (ctx, host, port):
        watched, svc = box["store"], ctx.svc
        names = [f"_acme-challenge.n{i}.{BASE}" for i in range(4)]
        watched.reads_open = trio.Event()
        async with trio.open_nursery() as nursery:
            results: dict[int, int] = {}

            async def ask_all() -> None:
                results.update(await send_all_then_receive(host, port, names, replies=4))

            nursery.start_soon(ask_all)
            # two reads in flight; the other two are answered from the table without waiting
            await wait_until(lambda: svc.stats.txt_reads_skipped == 2 and len(watched.txt_reads) == 2)
            assert sorted(watched.txt_reads) == names[:2]  # the first two to arrive
            watched.reads_open.set()
        assert set(results.values()) == {dns.rcode.NXDOMAIN}
        # the store fails: the table answers, as the change log filled it
        name = f"_acme-challenge.alpha.{BASE}"
        watched.feed_open.set()
        await ctx.store.set_dns_txt(name, ["tok"], datetime.now(timezone.utc) + timedelta(minutes=1))
        await svc.wait_seq(await ctx.store.latest_seq())
        watched.failing = True
        before = svc.stats.txt_reads
        assert txt_values(await tcp(host, port, name, "TXT")) == ['"tok"']
        assert txt_values(await udp(host, port, name, "TXT")) == ['"tok"']
        assert svc.stats.txt_reads == before + 2
        assert f"reading TXT {name} from the store failed" in caplog.text
        assert svc.stats.internal_errors == 0 and svc.txt_reads_active == 0
