"""Issue 10, finding 5: with `dns.nameservers.global` set, the DNS server forwarded for any source (an
open resolver: 93-103x amplification for a spoofed source). Now only the tailnet's prefixes and
`dns.forward_allowed_from` are forwarded for; everyone else gets REFUSED, over UDP and TCP, and the
upstream never sees their query. Names in our zone answer for every source.

A real `trioscale serve` process, a fake upstream on loopback that answers every query with ~3 KB,
and two loopback sources: 127.0.0.1 (listed) and 127.0.0.2 (not listed).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import yaml
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from util import wait_for

ALLOWED, OUTSIDER = "127.0.0.1", "127.0.0.2"
BASE = "tailnet.internal"


class FakeUpstream:
    """A UDP DNS responder on loopback: every query gets 80 TXT strings (~3.4 KB), and is recorded."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - not ours to judge
                continue
            name = query.question[0].name.to_text()
            with self._lock:
                self.seen.append(name)
            reply = dns.message.make_response(query)
            rrset = reply.find_rrset(reply.answer, query.question[0].name, dns.rdataclass.IN,
                                     dns.rdatatype.TXT, create=True)
            for i in range(80):
                rrset.add(dns.rdata.from_text("IN", "TXT", f'"amplify-{i:03d}-{"x" * 16}"'), 300)
            self.sock.sendto(reply.to_wire(max_size=65535), addr)

    def names(self) -> list[str]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    yield up
    up.close()


def _outsider_available() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((OUTSIDER, 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _outsider_available(), reason="127.0.0.2 is not usable as a source here")


def _query(name: str, rdtype: str = "TXT") -> dns.message.Message:
    # EDNS with a 4096-byte buffer: what an amplification attack asks for
    return dns.message.make_query(name, rdtype, use_edns=0, payload=4096)


def test_forwarding_only_for_allowed_sources(trioscale_server, upstream: FakeUpstream) -> None:
    srv = trioscale_server(dns={
        "base_domain": BASE,
        "nameservers": {"global": [f"127.0.0.1:{upstream.port}"]},
        "forward_allowed_from": [f"{ALLOWED}/32"],
        "extra_records": [{"name": f"www.{BASE}", "type": "A", "value": "100.64.0.5"}],
    })
    port = int(srv.config["dns"]["listen_addr"].rsplit(":", 1)[1])
    host = "127.0.0.1"

    # an outsider, over UDP and TCP: REFUSED, no recursion offered, a reply no bigger than the query
    for name, send in (("big.example.com.", dns.query.udp), ("big-tcp.example.com.", dns.query.tcp)):
        q = _query(name)
        reply = send(q, host, port=port, source=OUTSIDER, timeout=5)
        assert reply.rcode() == dns.rcode.REFUSED, (name, reply)
        assert not reply.answer and not reply.flags & dns.flags.RA
        assert len(reply.to_wire()) <= len(q.to_wire()) + 16

    # the tailnet's own names still answer for the outsider (ACME DNS-01 asks from anywhere)
    for send in (dns.query.udp, dns.query.tcp):
        own = send(_query(f"www.{BASE}.", "A"), host, port=port, source=OUTSIDER, timeout=5)
        assert own.rcode() == dns.rcode.NOERROR
        assert [rd.to_text() for rrset in own.answer for rd in rrset] == ["100.64.0.5"]

    # the listed source is forwarded for (the upstream's ~3 KB answer comes back whole)
    fwd = dns.query.udp(_query("probe.example.com."), host, port=port, source=ALLOWED, timeout=5)
    assert fwd.rcode() == dns.rcode.NOERROR and len(fwd.answer[0]) == 80
    fwd_tcp = dns.query.tcp(_query("probe-tcp.example.com."), host, port=port, source=ALLOWED, timeout=5)
    assert fwd_tcp.rcode() == dns.rcode.NOERROR and len(fwd_tcp.answer[0]) == 80

    # the upstream saw the allowed queries, and never the outsider's (those were refused before any
    # forward was started, so the probes' round trips come after anything that could have leaked)
    assert upstream.names() == ["probe.example.com.", "probe-tcp.example.com."]
    assert "Traceback" not in srv.stderr()


def test_default_allows_loopback_and_refuses_nothing_in_the_zone(trioscale_server, upstream: FakeUpstream) -> None:
    """Without `forward_allowed_from` the default is loopback: local tools keep working."""
    srv = trioscale_server(dns={"base_domain": BASE, "nameservers": {"global": [f"127.0.0.1:{upstream.port}"]}})
    port = int(srv.config["dns"]["listen_addr"].rsplit(":", 1)[1])
    for source in (ALLOWED, OUTSIDER):
        reply = dns.query.udp(_query(f"from-{source}.example.com."), "127.0.0.1", port=port, source=source, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR and len(reply.answer[0]) == 80
    soa = dns.query.udp(_query(f"{BASE}.", "SOA"), "127.0.0.1", port=port, source=OUTSIDER, timeout=5)
    assert soa.rcode() == dns.rcode.NOERROR and soa.answer
    assert upstream.names() == ["from-127.0.0.1.example.com.", "from-127.0.0.2.example.com."]


def test_forward_allowed_from_applies_live(trioscale_server, upstream: FakeUpstream) -> None:
    """An edit of the configuration file widens (or narrows) the list without a restart."""
    srv = trioscale_server(dns={"base_domain": BASE, "nameservers": {"global": [f"127.0.0.1:{upstream.port}"]},
                                "forward_allowed_from": []})
    port = int(srv.config["dns"]["listen_addr"].rsplit(":", 1)[1])
    before = dns.query.udp(_query("early.example.com."), "127.0.0.1", port=port, source=OUTSIDER, timeout=5)
    assert before.rcode() == dns.rcode.REFUSED
    assert srv.config_path is not None
    doc = yaml.safe_load(srv.config_path.read_text())
    doc["dns"]["forward_allowed_from"] = [f"{OUTSIDER}/32"]
    tmp = srv.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(srv.config_path)
    wait_for(lambda: "dns: forwarding now for queries from" in srv.stderr(), 10, "the DNS server to apply the edit")
    after = dns.query.udp(_query("late.example.com."), "127.0.0.1", port=port, source=OUTSIDER, timeout=5)
    assert after.rcode() == dns.rcode.NOERROR and len(after.answer[0]) == 80
    assert upstream.names() == ["late.example.com."]
