"""The pure zone data: reverse zones, node/extra/TXT records, existence, TXT table."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from trioscale.services.dns.txt import TxtRecords
from trioscale.services.dns.zone import NOERROR, NXDOMAIN, Zone, parse_extra_records, reverse_zones


def test_reverse_zones_for_the_tailnet_prefixes():
    v4 = reverse_zones("100.64.0.0/10")
    assert len(v4) == 64
    assert v4[0] == "64.100.in-addr.arpa" and v4[-1] == "127.100.in-addr.arpa"
    assert reverse_zones("fd7a:115c:a1e0::/48") == ["0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa"]
    assert reverse_zones("100.64.0.0/16") == ["64.100.in-addr.arpa"]
    assert reverse_zones("100.64.0.0/24") == ["0.64.100.in-addr.arpa"]
    assert len(reverse_zones("fd7a:115c:a1e0::/50")) == 4
    assert len(reverse_zones("100.0.0.0/9")) == 128


def test_node_records_and_ptr():
    z = Zone("Tailnet.Internal.")
    z.set_node(1, "alpha", "100.64.0.1", "fd7a:115c:a1e0::1")
    r = z.lookup("alpha.tailnet.internal", "A", 0)
    assert r.rcode == NOERROR and [a.value for a in r.answers] == ["100.64.0.1"]
    assert z.lookup("alpha.tailnet.internal", "AAAA", 0).answers[0].value == "fd7a:115c:a1e0::1"
    ptr = z.lookup("1.0.64.100.in-addr.arpa", "PTR", 0)
    assert ptr.answers[0].value == "alpha.tailnet.internal"
    v6ptr = "1" + ".0" * 19 + ".0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa"
    assert z.lookup(v6ptr, "PTR", 0).answers[0].value == "alpha.tailnet.internal"
    # renamed and re-addressed: old records go
    z.set_node(1, "beta", "100.64.0.2", None)
    assert z.lookup("alpha.tailnet.internal", "A", 0).rcode == NXDOMAIN
    assert z.lookup("1.0.64.100.in-addr.arpa", "PTR", 0).rcode == NXDOMAIN
    assert z.lookup("beta.tailnet.internal", "AAAA", 0).rcode == NOERROR  # NODATA
    z.remove_node(1)
    assert z.lookup("beta.tailnet.internal", "A", 0).rcode == NXDOMAIN
    assert z.node_ids() == []


def test_nodata_nxdomain_and_empty_non_terminals():
    z = Zone("tailnet.internal")
    z.set_node(1, "alpha", "100.64.3.7", None)
    z.set_extra_records([{"name": "a.b.tailnet.internal", "type": "A", "value": "100.64.9.9"}])
    nodata = z.lookup("alpha.tailnet.internal", "TXT", 0)
    assert nodata.rcode == NOERROR and not nodata.answers and nodata.authority[0].rtype == "SOA"
    assert nodata.authority[0].name == "tailnet.internal"
    nx = z.lookup("nope.tailnet.internal", "A", 0)
    assert nx.rcode == NXDOMAIN and nx.authority[0].rtype == "SOA"
    assert z.lookup("b.tailnet.internal", "A", 0).rcode == NOERROR  # empty non-terminal
    assert z.lookup("3.64.100.in-addr.arpa", "PTR", 0).rcode == NOERROR
    assert z.lookup("4.64.100.in-addr.arpa", "PTR", 0).rcode == NXDOMAIN
    soa = z.lookup("3.64.100.in-addr.arpa", "PTR", 0).authority[0]
    assert soa.name == "64.100.in-addr.arpa"
    assert z.lookup("example.com", "A", 0) is None


def test_apex_soa_ns_and_serial():
    z = Zone("tailnet.internal", serial=5)
    soa = z.lookup("tailnet.internal", "SOA", 0).answers[0]
    assert soa.value[0] == "ns.tailnet.internal" and soa.value[2] == 5
    assert z.lookup("tailnet.internal", "NS", 0).answers[0].value == "ns.tailnet.internal"
    assert z.lookup("64.100.in-addr.arpa", "NS", 0).answers[0].value == "ns.tailnet.internal"
    z.bump(100)
    assert z.serial == 100
    z.bump()
    assert z.serial == 101
    z.txt.set("_acme-challenge.x.tailnet.internal", ["v"], now=0)
    assert z.serial == 102
    kinds = {r.rtype for r in z.lookup("tailnet.internal", "ANY", 0).answers}
    assert kinds == {"SOA", "NS"}


def test_extra_records_sources_are_refcounted():
    z = Zone("tailnet.internal")
    z.set_node(1, "grafana", "100.64.0.5", None)
    problems = z.set_extra_records(
        [
            {"name": "grafana.tailnet.internal.", "type": "A", "value": "100.64.0.5"},
            {"name": "Grafana.tailnet.internal", "type": "A", "value": "100.64.0.6"},
            {"name": "bad", "type": "MX", "value": "x"},
            {"name": "v6.tailnet.internal", "type": "A", "value": "fd7a::1"},
            {"name": "outside.example.com", "type": "AAAA", "value": "2001:db8::1"},
        ]
    )
    assert len(problems) == 2
    vals = sorted(r.value for r in z.lookup("grafana.tailnet.internal", "A", 0).answers)
    assert vals == ["100.64.0.5", "100.64.0.6"]
    out = z.lookup("outside.example.com", "AAAA", 0)
    assert out.rcode == NOERROR and out.answers[0].value == "2001:db8::1"
    assert z.lookup("outside.example.com", "A", 0).answers == ()
    assert z.lookup("example.com", "A", 0) is None  # no empty non-terminals outside our zones
    z.set_extra_records([], "config")
    assert [r.value for r in z.lookup("grafana.tailnet.internal", "A", 0).answers] == ["100.64.0.5"]
    assert z.lookup("outside.example.com", "AAAA", 0) is None


def test_parse_extra_records_file():
    good, problems = parse_extra_records(b'[{"name": "x.tailnet.internal", "type": "A", "value": "100.64.0.1"}, 5]')
    assert good == [("x.tailnet.internal", "A", "100.64.0.1")] and len(problems) == 1
    for bad in (b"{", b'{"name": 1}', b"\xff\xfe"):
        with pytest.raises(ValueError):
            parse_extra_records(bad)


def test_txt_records_set_clear_expire():
    txt = TxtRecords()
    z = Zone("tailnet.internal", txt=txt)
    z.set_node(1, "web", "100.64.0.1", None)
    name = "_acme-challenge.web.tailnet.internal"
    assert z.lookup(name, "TXT", 0).rcode == NXDOMAIN
    txt.set(name + ".", ["token-1", "token-2"], now=1000)  # default expiry: 10 minutes
    r = z.lookup(name, "TXT", 1000)
    assert sorted(a.value for a in r.answers) == [("token-1",), ("token-2",)]
    assert z.lookup(name, "A", 1000).rcode == NOERROR  # exists, no A: NODATA
    assert z.lookup(name, "TXT", 1000 + 599).answers
    assert z.lookup(name, "TXT", 1000 + 600).rcode == NXDOMAIN
    txt.set(name, ["t"], expires_at=datetime.fromtimestamp(2000, timezone.utc), now=1000)
    assert z.lookup(name, "TXT", 1999).answers
    txt.clear(name)
    assert z.lookup(name, "TXT", 1000).rcode == NXDOMAIN
    txt.set(name, ["t"], now=0)
    txt.set(name, [], now=0)  # empty = clear
    assert len(txt) == 0
    with pytest.raises(ValueError):
        txt.set(name, ["x" * 256], now=0)
    with pytest.raises(ValueError):
        txt.set(name, [str(i) for i in range(17)], now=0)
    with pytest.raises(ValueError):
        txt.set(name, ["x"], expires_at=datetime(2030, 1, 1), now=0)


def test_txt_table_is_bounded_and_purged():
    txt = TxtRecords(max_names=3)
    for i in range(3):
        txt.set(f"n{i}", ["v"], expires_at=10 + i, now=0)
    with pytest.raises(ValueError):
        txt.set("n9", ["v"], now=5)
    txt.set("n9", ["v"], now=10.5)  # n0 expired: room is made
    assert sorted(txt.names()) == ["n1", "n2", "n9"]
    assert txt.purge(100) == 2 and txt.names() == ["n9"]


def test_zone_serves_the_txt_table_it_is_given():
    # the DNS service fills one table from the change log and its zone answers from that table
    txt = TxtRecords()
    zone = Zone("ts.test", txt=txt)
    assert zone.txt is txt and Zone("ts.test").txt is not txt
    txt.set("_acme-challenge.a.ts.test", ["tok"], now=0, expires_at=100)
    assert [r.value for r in zone.lookup("_acme-challenge.a.ts.test", "TXT", 50).answers] == [("tok",)]


def test_invalid_node_names_are_skipped():
    z = Zone("tailnet.internal")
    z.set_node(1, "", "100.64.0.1", None)
    z.set_node(2, "x" * 64, "100.64.0.2", None)
    z.set_node(3, "ok", "not-an-ip", None)
    assert z.names() == []


def test_acme_challenge_names_are_one_label_under_the_base_domain():
    z = Zone("tailnet.internal")
    assert z.is_acme_challenge("_acme-challenge.alpha.tailnet.internal")
    assert z.is_acme_challenge("_acme-challenge.host-2.tailnet.internal")
    for name in (
        "_acme-challenge.tailnet.internal",  # no label
        "_acme-challenge.a.b.tailnet.internal",  # two labels
        "_acme-challenge.xtailnet.internal",  # not under the base domain
        "_acme-challenge.alpha.example.com",
        "alpha.tailnet.internal",
        "_acme-challenge.a\\.b.tailnet.internal",  # a label holding a dot (the resolver's escape)
        "_acme-challenge." + "x" * 64 + ".tailnet.internal",
        "_acme-challenge.al pha.tailnet.internal",
    ):
        assert not z.is_acme_challenge(name), name


def test_txt_read_through_bookkeeping():
    name = "_acme-challenge.a.ts.test"
    txt = TxtRecords()
    txt.begin_read(name)
    txt.end_read(name, (("tok",), 100.0), now=0)
    assert txt.get(name, 0) == ("tok",)
    # the store is newer than the table: its answer replaces the values, or their absence clears them
    txt.begin_read(name)
    txt.end_read(name, (("tok", "tok-2"), 100.0), now=1)
    assert txt.get(name, 1) == ("tok", "tok-2")
    txt.begin_read(name)
    txt.end_read(name, None, now=2)
    assert txt.get(name, 2) == () and len(txt) == 0
    # a failed read leaves the table as it was
    txt.set(name, ["kept"], now=3)
    txt.begin_read(name)
    txt.abandon_read(name)
    txt.end_read(name, None, now=3)  # too late: not reading any more
    assert txt.get(name, 3) == ("kept",)
    # the change log is newer than a read in flight: its value stays
    txt.begin_read(name)
    txt.set(name, ["from-the-log"], now=300)
    txt.end_read(name, (("older",), 900.0), now=300)
    assert txt.get(name, 300) == ("from-the-log",)
    txt.begin_read(name)
    txt.clear(name)
    txt.end_read(name, (("older",), 900.0), now=300)
    assert txt.get(name, 300) == ()
    # values the table cannot serve are as good as none
    txt.set(name, ["old"], now=300)
    txt.begin_read(name)
    txt.end_read(name, (["x" * 256], 900.0), now=300)
    assert txt.get(name, 300) == ()
