"""The sans-IO core: dnslib-built queries in, replies checked with dnslib."""

from __future__ import annotations

import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSQuestion, DNSRecord

from trioscale.services.dns.ratelimit import RateLimiter, source_key
from trioscale.services.dns.resolver import Forward, Resolver, TxtLookup, parse_upstreams
from trioscale.services.dns.sources import SourceNetworks
from trioscale.services.dns.txt import TxtRecords
from trioscale.services.dns.zone import Zone

SRC = ("192.0.2.7", 5353)


def query(name: str, qtype: str = "A", *, edns: int | None = None, qid: int = 4242, version: int = 0) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns, version=version))
    return q.pack()


@pytest.fixture
def zone() -> Zone:
    z = Zone("tailnet.internal", txt=TxtRecords())
    z.set_node(1, "alpha", "100.64.0.1", "fd7a:115c:a1e0::1")
    z.set_node(2, "v4only", "100.64.0.2", None)
    z.set_extra_records(
        [{"name": "grafana.tailnet.internal", "type": "A", "value": "100.64.0.50"}]
        + [{"name": "many.tailnet.internal", "type": "A", "value": f"100.64.1.{i}"} for i in range(60)]
    )
    return z


@pytest.fixture
def resolver(zone: Zone) -> Resolver:
    return Resolver(zone)


def ask(resolver: Resolver, wire: bytes, transport: str = "udp", now: float = 0.0, source=SRC) -> DNSRecord:
    out = resolver.handle(wire, source=source, now=now, transport=transport)
    assert isinstance(out, bytes)
    return DNSRecord.parse(out)


def rcode(msg: DNSRecord) -> str:
    return RCODE[msg.header.rcode]


def test_a_aaaa_case_insensitive_and_echoed(resolver):
    r = ask(resolver, query("AlPhA.TAILNET.internal", "A"))
    assert rcode(r) == "NOERROR" and r.header.aa == 1 and r.header.qr == 1 and r.header.id == 4242
    assert [str(a.rdata) for a in r.rr] == ["100.64.0.1"]
    assert str(r.rr[0].rname) == "AlPhA.TAILNET.internal."  # the owner as asked
    assert str(r.q.qname) == "AlPhA.TAILNET.internal."
    r = ask(resolver, query("alpha.tailnet.internal.", "AAAA"))
    assert [str(a.rdata) for a in r.rr] == ["fd7a:115c:a1e0::1"]
    assert r.rr[0].ttl == 60


def test_ptr_v4_and_v6(resolver):
    r = ask(resolver, query("1.0.64.100.in-addr.arpa", "PTR"))
    assert [str(a.rdata) for a in r.rr] == ["alpha.tailnet.internal."]
    v6 = "1" + ".0" * 19 + ".0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa"
    r = ask(resolver, query(v6, "PTR"))
    assert [str(a.rdata) for a in r.rr] == ["alpha.tailnet.internal."]
    r = ask(resolver, query("99.0.64.100.in-addr.arpa", "PTR"))
    assert rcode(r) == "NXDOMAIN" and r.auth[0].rtype == QTYPE.SOA
    assert str(r.auth[0].rname) == "64.100.in-addr.arpa."


def test_extra_records_soa_ns_txt(resolver, zone):
    r = ask(resolver, query("grafana.tailnet.internal"))
    assert [str(a.rdata) for a in r.rr] == ["100.64.0.50"]
    r = ask(resolver, query("tailnet.internal", "SOA"))
    assert r.rr[0].rtype == QTYPE.SOA and str(r.rr[0].rdata.mname) == "ns.tailnet.internal."
    assert r.rr[0].rdata.times[0] == zone.serial
    r = ask(resolver, query("tailnet.internal", "NS"))
    assert [str(a.rdata) for a in r.rr] == ["ns.tailnet.internal."]
    r = ask(resolver, query("127.100.in-addr.arpa", "SOA"))
    assert r.rr[0].rtype == QTYPE.SOA
    zone.txt.set("_acme-challenge.alpha.tailnet.internal", ["abc-123"], now=0)
    r = ask(resolver, query("_acme-challenge.alpha.tailnet.internal", "TXT"))
    assert [a.rdata.data for a in r.rr] == [[b"abc-123"]]
    r = ask(resolver, query("_acme-challenge.alpha.tailnet.internal", "TXT"), now=601)
    assert rcode(r) == "NXDOMAIN"


def test_nodata_vs_nxdomain(resolver):
    r = ask(resolver, query("v4only.tailnet.internal", "AAAA"))
    assert rcode(r) == "NOERROR" and r.rr == [] and r.header.aa == 1
    assert len(r.auth) == 1 and r.auth[0].rtype == QTYPE.SOA and r.auth[0].ttl == 30
    r = ask(resolver, query("alpha.tailnet.internal", "MX"))
    assert rcode(r) == "NOERROR" and r.rr == [] and r.auth[0].rtype == QTYPE.SOA
    r = ask(resolver, query("ghost.tailnet.internal", "A"))
    assert rcode(r) == "NXDOMAIN" and r.rr == [] and r.auth[0].rtype == QTYPE.SOA
    r = ask(resolver, query("sub.ghost.tailnet.internal", "AAAA"))
    assert rcode(r) == "NXDOMAIN"


def test_refused_outside_zones_and_for_other_classes(resolver):
    r = ask(resolver, query("example.com"))
    assert rcode(r) == "REFUSED" and r.header.aa == 0 and r.header.ra == 0 and r.rr == []
    q = DNSRecord(DNSHeader(id=1), questions=[DNSQuestion("version.bind", QTYPE.TXT, 3)])  # CHAOS
    assert rcode(ask(resolver, q.pack())) == "REFUSED"
    assert rcode(ask(resolver, query("tailnet.internal", "AXFR"), transport="tcp")) == "REFUSED"
    assert resolver.stats.rcodes["REFUSED"] == 3


def test_any_lists_everything(resolver):
    r = ask(resolver, query("alpha.tailnet.internal", "ANY"))
    assert sorted(QTYPE[a.rtype] for a in r.rr) == ["A", "AAAA"]


def test_edns_sizes_and_truncation(resolver):
    # 60 A records ≈ 1 KB: over 512 without EDNS → TC, question kept, no answers
    r = ask(resolver, query("many.tailnet.internal"))
    assert r.header.tc == 1 and r.rr == [] and str(r.q.qname) == "many.tailnet.internal."
    assert resolver.stats.truncated == 1
    # EDNS 4096: fits; our reply carries an OPT
    r = ask(resolver, query("many.tailnet.internal", edns=4096))
    assert r.header.tc == 0 and len(r.rr) == 60
    opt = [a for a in r.ar if a.rtype == QTYPE.OPT]
    assert len(opt) == 1 and opt[0].rclass == 1232
    # EDNS asking for less than 512 is treated as 512
    r = ask(resolver, query("many.tailnet.internal", edns=100))
    assert r.header.tc == 1 and [a.rtype for a in r.ar] == [QTYPE.OPT]
    # a client that advertises 900: 60 records do not fit
    assert ask(resolver, query("many.tailnet.internal", edns=900)).header.tc == 1
    # TCP: no limit
    r = ask(resolver, query("many.tailnet.internal"), transport="tcp")
    assert r.header.tc == 0 and len(r.rr) == 60
    # no EDNS in the query → none in the reply
    assert ask(resolver, query("alpha.tailnet.internal")).ar == []


def test_udp_cap_is_max_udp_size(zone):
    for i in range(200):
        zone.set_source(f"s{i}", [("huge.tailnet.internal", "A", f"100.64.2.{i}")])
    res = Resolver(zone, max_udp_size=1500)
    assert ask(res, query("huge.tailnet.internal", edns=65000)).header.tc == 1
    assert len(ask(res, query("huge.tailnet.internal"), transport="tcp").rr) == 200


def test_edns_bad_version(resolver):
    r = ask(resolver, query("alpha.tailnet.internal", edns=1232, version=1))
    opt = [a for a in r.ar if a.rtype == QTYPE.OPT][0]
    assert (opt.ttl >> 24) == 1 and r.header.rcode == 0  # BADVERS = 16 = ext 1, low 0
    assert r.rr == [] and resolver.stats.rcodes["BADVERS"] == 1


def test_malformed_formerr_or_drop(resolver):
    assert resolver.handle(b"", source=SRC, now=0) is None
    assert resolver.handle(b"\x01" * 11, source=SRC, now=0) is None
    # a header, then garbage: FORMERR with the id echoed
    bad = struct.pack("!HHHHHH", 777, 0x0100, 1, 0, 0, 0) + b"\x05abc"
    r = DNSRecord.parse(resolver.handle(bad, source=SRC, now=0))
    assert r.header.id == 777 and rcode(r) == "FORMERR" and r.header.qr == 1 and r.header.rd == 1
    # no question / two questions
    none = struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0)
    assert rcode(DNSRecord.parse(resolver.handle(none, source=SRC, now=0))) == "FORMERR"
    two = DNSRecord(DNSHeader(id=2), questions=[DNSQuestion("a.tailnet.internal"), DNSQuestion("b.tailnet.internal")])
    assert rcode(DNSRecord.parse(resolver.handle(two.pack(), source=SRC, now=0))) == "FORMERR"
    # two OPT records
    q = DNSRecord.question("alpha.tailnet.internal")
    q.add_ar(EDNS0(udp_len=1232))
    q.add_ar(EDNS0(udp_len=1232))
    assert rcode(DNSRecord.parse(resolver.handle(q.pack(), source=SRC, now=0))) == "FORMERR"
    # responses are never answered
    resp = DNSRecord.parse(query("alpha.tailnet.internal"))
    resp.header.qr = 1
    assert resolver.handle(resp.pack(), source=SRC, now=0) is None
    assert resolver.stats.dropped == 3


def test_other_opcodes_notimp(resolver):
    q = DNSRecord.parse(query("alpha.tailnet.internal"))
    q.header.opcode = 5  # UPDATE
    r = DNSRecord.parse(resolver.handle(q.pack(), source=SRC, now=0))
    assert rcode(r) == "NOTIMP" and r.header.opcode == 5


def test_rate_limit_with_injected_now(zone):
    res = Resolver(zone, rate_limiter=RateLimiter(rate=10, burst=20))
    wire = query("alpha.tailnet.internal")
    answered = [res.handle(wire, source=SRC, now=100.0) for _ in range(25)]
    assert sum(a is not None for a in answered) == 20
    assert res.stats.rate_limited == 5
    # another source is unaffected
    assert res.handle(wire, source=("192.0.2.8", 1), now=100.0) is not None
    # over TCP a limited client hears REFUSED
    r = DNSRecord.parse(res.handle(wire, source=SRC, now=100.0, transport="tcp"))
    assert rcode(r) == "REFUSED"
    # 0.5 s later: 5 tokens back
    later = [res.handle(wire, source=SRC, now=100.5) for _ in range(10)]
    assert sum(a is not None for a in later) == 5


def test_rate_limiter_table_is_bounded():
    rl = RateLimiter(rate=1, burst=2, max_sources=100)
    for i in range(1000):
        assert rl.allow(f"10.0.{i // 256}.{i % 256}", now=0)
        assert len(rl) <= 100
    # a clock stepping back refills nothing and never crashes
    assert rl.allow("10.9.9.9", now=5) and rl.allow("10.9.9.9", now=1)
    assert not rl.allow("10.9.9.9", now=0.5)


def test_source_key_groups_ipv6_by_64():
    assert source_key("2001:db8:1:2:3:4:5:6") == source_key("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_key("192.0.2.1") == "192.0.2.1"


def test_forwarding_decision_and_reply(zone):
    res = Resolver(zone, upstreams=[("192.0.2.53", 53)], random_id=lambda: 0xBEEF,
                   forward_from=SourceNetworks(["192.0.2.0/24"]))
    fwd = res.handle(query("example.com", qid=11, edns=1232), source=SRC, now=0)
    assert isinstance(fwd, Forward)
    assert fwd.query[:2] == b"\xbe\xef" and fwd.client_id == 11 and fwd.upstreams == (("192.0.2.53", 53),)
    # our own names are never forwarded; RA is set since we recurse
    r = ask(res, query("alpha.tailnet.internal"))
    assert r.header.ra == 1 and r.header.aa == 1
    # an upstream answer: must match id and question
    up = DNSRecord.parse(fwd.query).reply()
    up.add_answer(*RR.fromZone("example.com. 300 IN A 192.0.2.80"))
    assert fwd.matches(up.pack())
    wrong = DNSRecord.parse(up.pack())
    wrong.header.id = 1
    assert not fwd.matches(wrong.pack())
    other = DNSRecord.question("example.org").reply()
    other.header.id = 0xBEEF
    assert not fwd.matches(other.pack()) and not fwd.matches(b"short")
    out = DNSRecord.parse(res.forward_reply(fwd, up.pack()))
    assert out.header.id == 11 and str(out.rr[0].rdata) == "192.0.2.80"
    # all upstreams failed → SERVFAIL
    fail = DNSRecord.parse(res.forward_reply(fwd, None))
    assert rcode(fail) == "SERVFAIL" and fail.header.id == 11
    assert res.stats.forwarded == 1 and res.stats.forward_failures == 1


def test_forward_reply_truncates_for_small_clients(zone):
    res = Resolver(zone, upstreams=[("192.0.2.53", 53)], forward_from=SourceNetworks([SRC[0]]))
    fwd = res.handle(query("big.example.com", qid=5), source=SRC, now=0)
    up = DNSRecord.parse(fwd.query).reply()
    for i in range(60):
        up.add_answer(*RR.fromZone(f"big.example.com. 300 IN A 192.0.2.{i}"))
    out = DNSRecord.parse(res.forward_reply(fwd, up.pack()))
    assert out.header.tc == 1 and out.rr == [] and out.header.id == 5


def test_forwarding_only_for_allowed_sources(zone):
    """An open resolver amplifies for spoofed sources: outside `forward_from`, REFUSED (no RA) and no
    Forward; our own names still answer for everyone."""
    allowed = SourceNetworks(["100.64.0.0/10", "fd7a:115c:a1e0::/48", "127.0.0.1"])
    res = Resolver(zone, upstreams=[("192.0.2.53", 53)], forward_from=allowed)
    for source in [("100.64.0.7", 5000), ("fd7a:115c:a1e0::7", 5000, 0, 0), ("127.0.0.1", 1),
                   ("::ffff:100.64.1.1", 5000), "100.127.255.255"]:
        assert isinstance(res.handle(query("example.com"), source=source, now=0), Forward), source
    for source in [("192.0.2.7", 53), ("127.0.0.2", 1), ("fd7a:115c:a1e1::1", 5000, 0, 0), ("::1", 1),
                   ("::ffff:192.0.2.7", 53), "not-an-ip", ("100.128.0.1", 1)]:
        for transport in ("udp", "tcp"):
            r = ask(res, query("example.com", edns=4096), transport=transport, source=source)
            assert rcode(r) == "REFUSED" and r.header.ra == 0 and r.rr == [], source
        r = ask(res, query("alpha.tailnet.internal"), source=source)
        assert rcode(r) == "NOERROR" and str(r.rr[0].rdata) == "100.64.0.1" and r.header.aa == 1
    assert res.stats.forwarded == 5 and res.stats.forward_refused == 14
    # no forward_from at all: nobody (fail closed)
    closed = Resolver(zone, upstreams=[("192.0.2.53", 53)])
    assert rcode(ask(closed, query("example.com"), source=("127.0.0.1", 1))) == "REFUSED"


def test_what_an_outside_source_can_make_us_send(zone):
    """A spoofed source outside `forward_from` gets our zone's own answers or REFUSED. With a zone
    of node names (no operator records with dozens of addresses under one name) no reply is more
    than 4x its query, however the query asks (EDNS 4096, ANY, names outside the zone); the
    per-source limiter then caps the rate (burst 200, then `rate` a second)."""
    small = Zone("tailnet.internal", txt=TxtRecords())
    small.set_node(1, "alpha", "100.64.0.1", "fd7a:115c:a1e0::1")
    small.txt.set("_acme-challenge.alpha.tailnet.internal", ["x" * 43], now=0)
    res = Resolver(small, upstreams=[("192.0.2.53", 53)], forward_from=SourceNetworks(["100.64.0.0/10"]),
                   rate_limiter=RateLimiter(rate=100, burst=200))
    worst = 0.0
    for name in ("tailnet.internal", "alpha.tailnet.internal", "nope.tailnet.internal", "example.com",
                 "_acme-challenge.alpha.tailnet.internal", "1.0.64.100.in-addr.arpa", "64.100.in-addr.arpa"):
        for qtype in ("ANY", "A", "AAAA", "TXT", "SOA", "NS", "PTR", "MX"):
            wire = query(name, qtype, edns=4096)
            out = res.handle(wire, source=("192.0.2.7", 53), now=0)
            assert isinstance(out, bytes)
            worst = max(worst, len(out) / len(wire))
    assert worst <= 4, worst
    sent = sum(res.handle(query("example.com", edns=4096), source=("198.51.100.1", 53), now=1.0) is not None
               for _ in range(1000))
    assert sent == 200  # the burst, then nothing until tokens refill


def test_source_networks():
    nets = SourceNetworks(["10.1.2.3/8", "2001:db8::/32", "192.0.2.1"])
    assert "10.200.0.1" in nets and ("2001:db8:ffff::1%eth0", 53, 0, 2) in nets and "192.0.2.1" in nets
    assert "11.0.0.1" not in nets and "192.0.2.2" not in nets and "2001:db9::1" not in nets
    assert () not in nets and None not in nets and "::ffff:10.0.0.1" in nets
    assert "1.2.3.4" in SourceNetworks(["0.0.0.0/0"]) and "1.2.3.4" not in SourceNetworks()
    with pytest.raises(ValueError):
        SourceNetworks(["example.com"])


def test_parse_upstreams():
    good, bad = parse_upstreams(["1.1.1.1", "127.0.0.1:5300", "[::1]:5301", "2001:db8::53", "https://dns.example/q", "x:y"])
    assert good == [("1.1.1.1", 53), ("127.0.0.1", 5300), ("::1", 5301), ("2001:db8::53", 53)]
    assert len(bad) == 2


def test_internal_error_becomes_servfail(zone):
    res = Resolver(zone)

    def boom(*a, **k):
        raise RuntimeError("bug")

    zone.lookup = boom  # type: ignore[method-assign]
    r = DNSRecord.parse(res.handle(query("alpha.tailnet.internal"), source=SRC, now=0))
    assert rcode(r) == "SERVFAIL" and res.stats.internal_errors == 1


ACME = "_acme-challenge.alpha.tailnet.internal"


def test_txt_read_through_asks_the_adapter_to_read_the_store(zone):
    res = Resolver(zone, txt_reads=RateLimiter(rate=1, burst=4), rate_limiter=RateLimiter(rate=0.001, burst=2))
    wire = query("_ACME-challenge.Alpha.tailnet.internal", "TXT", edns=1232, qid=77)
    out = res.handle(wire, source=SRC, now=10.0)
    assert isinstance(out, TxtLookup) and out.name == ACME and out.transport == "udp"
    # the adapter reads the store into the table, then resumes: one query, one token
    zone.txt.begin_read(out.name)
    zone.txt.end_read(out.name, (("tok-1",), 100.0), now=10.0)
    r = DNSRecord.parse(res.resume(out, now=10.0))
    assert rcode(r) == "NOERROR" and r.header.id == 77 and [a.rdata.data for a in r.rr] == [[b"tok-1"]]
    assert str(r.q.qname) == "_ACME-challenge.Alpha.tailnet.internal." and r.header.aa == 1
    assert res.stats.queries == 1 and res.stats.rcodes["NOERROR"] == 1
    assert isinstance(res.handle(query(ACME, "TXT"), source=SRC, now=10.0), TxtLookup)
    assert res.handle(query(ACME, "TXT"), source=SRC, now=10.0) is None  # rate-limited: 2 tokens


def test_txt_read_through_only_for_acme_txt_names(zone):
    res = Resolver(zone, txt_reads=RateLimiter(rate=1, burst=100))
    assert isinstance(res.handle(query(ACME, "ANY"), source=SRC, now=0, transport="tcp"), TxtLookup)
    for name, qtype in (
        (ACME, "A"),
        (ACME, "AAAA"),
        ("_acme-challenge.a.b.tailnet.internal", "TXT"),
        ("_acme-challenge.tailnet.internal", "TXT"),
        ("alpha.tailnet.internal", "TXT"),
        ("_acme-challenge.alpha.example.com", "TXT"),
    ):
        assert isinstance(res.handle(query(name, qtype), source=SRC, now=0), bytes), (name, qtype)
    # without a read budget (a resolver with no store behind it) the table answers alone
    assert rcode(ask(Resolver(zone), query(ACME, "TXT"))) == "NXDOMAIN"
    # a value in the table is read again too: the store may have a newer list (a retry's new token)
    zone.txt.set(ACME, ["v"], now=0)
    assert isinstance(res.handle(query(ACME, "TXT"), source=SRC, now=1), TxtLookup)


def test_txt_reads_per_name_are_budgeted(zone):
    res = Resolver(zone, txt_reads=RateLimiter(rate=1, burst=2))
    other = "_acme-challenge.v4only.tailnet.internal"
    kinds = [type(res.handle(query(ACME, "TXT"), source=SRC, now=5.0)) for _ in range(5)]
    assert kinds == [TxtLookup, TxtLookup, bytes, bytes, bytes]
    # over budget the table answers: what the last read left there, or the change log since
    assert rcode(ask(res, query(ACME, "TXT"), now=5.5)) == "NXDOMAIN"
    zone.txt.set(ACME, ["late"], now=5.5)
    assert [a.rdata.data for a in ask(res, query(ACME, "TXT"), now=5.6).rr] == [[b"late"]]
    assert isinstance(res.handle(query(other, "TXT"), source=SRC, now=5.6), TxtLookup)  # its own budget
    assert isinstance(res.handle(query(ACME, "TXT"), source=SRC, now=6.1), TxtLookup)  # one a second


def test_txt_read_through_resume_faults_become_servfail(zone):
    res = Resolver(zone, txt_reads=RateLimiter())
    lookup = res.handle(query(ACME, "TXT"), source=SRC, now=0)
    assert isinstance(lookup, TxtLookup)

    def boom(*a, **k):
        raise RuntimeError("bug")

    zone.lookup = boom  # type: ignore[method-assign]
    r = DNSRecord.parse(res.resume(lookup, now=0))
    assert rcode(r) == "SERVFAIL" and res.stats.internal_errors == 1
