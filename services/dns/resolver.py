"""The DNS server's protocol core, sans-IO: query bytes in, reply bytes out.

``Resolver.handle(query, source=, now=, transport=)`` returns the reply to send, ``None`` to send
nothing (runt or response packets, rate-limited UDP sources), or a :class:`Forward` when the name
is outside our zones and upstreams are configured. For a Forward the adapter sends
``forward.query`` to the upstreams in turn (UDP, with a timeout), accepts the first datagram for
which ``forward.matches(reply)`` is true, and sends ``resolver.forward_reply(forward, reply)`` (or
``forward_reply(forward, None)``, a SERVFAIL, when every upstream failed) back to the client.

What it answers (zone data in ``zone.py``): A/AAAA/PTR/TXT/SOA/NS and ANY; names that exist with
other types → NOERROR, no answer, SOA in authority (NODATA); names that do not exist → NXDOMAIN +
SOA; names outside the zones → REFUSED (or forwarded). EDNS0: the client's UDP payload size is
honoured (512 without EDNS, at most `max_udp_size`), a version other than 0 gets BADVERS. UDP
replies that do not fit are cut to the question with TC set; the client retries over TCP.
Unparseable queries get FORMERR when the header can be read, nothing otherwise. Nothing here
raises: an internal error becomes SERVFAIL.

`now` is wall-clock seconds (``time.time()``): it drives the rate limiter and TXT expiry.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, NS, PTR, QTYPE, RR, SOA, TXT, A, DNSHeader, DNSLabel, DNSRecord, EDNS0

from .ratelimit import RateLimiter
from .zone import NXDOMAIN, Record, Zone

__all__ = ["Resolver", "Forward", "DnsStats", "parse_upstreams", "RCODE_NAMES"]

NOERROR, FORMERR, SERVFAIL, RC_NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}

_TYPE_NAMES = {1: "A", 2: "NS", 6: "SOA", 12: "PTR", 16: "TXT", 28: "AAAA", 255: "ANY"}
_QTYPE_OPT = 41
_ZONE_TRANSFERS = {251, 252}  # IXFR, AXFR
_CLASS_IN, _CLASS_ANY = 1, 255

#: payload size without EDNS (RFC 1035) and the most we ever send over UDP (quad-100 uses 4095)
MIN_UDP_SIZE = 512
MAX_UDP_SIZE = 4096
#: the UDP payload size we advertise in our OPT record (DNS flag day 2020)
EDNS_ADVERTISED = 1232


@dataclass
class DnsStats:
    """Counters, shared with the adapter (``ctx.registry["dns"].stats``)."""

    queries: int = 0  # messages received (UDP datagrams and TCP messages)
    dropped: int = 0  # not answered: runts, responses, unparseable headers
    rate_limited: int = 0
    truncated: int = 0
    forwarded: int = 0
    forward_failures: int = 0
    internal_errors: int = 0
    tcp_connections: int = 0
    tcp_rejected: int = 0
    rcodes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "rcodes"}
        d["rcodes"] = dict(self.rcodes)
        return d


def parse_upstreams(entries: Iterable[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """Upstream nameservers as (ip, port): plain IPs (port 53), ``ip:port`` or ``[v6]:port``.
    Others (DoH URLs, names) are returned as problems: this forwarder speaks plain DNS only."""
    out: list[tuple[str, int]] = []
    problems: list[str] = []
    for entry in entries:
        text = entry.strip()
        host, port = text, 53
        try:
            if text.startswith("["):
                end = text.index("]")
                host, rest = text[1:end], text[end + 1 :]
                if rest:
                    if not rest.startswith(":"):
                        raise ValueError
                    port = int(rest[1:])
            elif text.count(":") == 1:
                host, port_text = text.split(":")
                port = int(port_text)
            ip = ipaddress.ip_address(host)
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            problems.append(f"nameserver {entry!r} is not an IP or ip:port (only plain DNS is forwarded)")
            continue
        out.append((str(ip), port))
    return out, problems


def _name_key(labels: tuple[bytes, ...]) -> str:
    parts = []
    for label in labels:
        text = label.lower().decode("latin-1")
        if "." in text:
            text = text.replace(".", "\\.")  # never equal to a multi-label name
        parts.append(text)
    return ".".join(parts)


def _header_only(qid: int, flags: int, rcode: int) -> bytes:
    """A reply with no sections: id echoed, QR set, opcode and RD copied."""
    out_flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | (rcode & 0xF)
    return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)


@dataclass
class Forward:
    """A query to pass upstream. `query` carries `upstream_id`, not the client's id."""

    query: bytes
    upstream_id: int
    client_id: int
    qname: str
    qtype: int
    qclass: int
    request: DNSRecord
    transport: str
    max_size: int
    has_edns: bool
    upstreams: tuple[tuple[str, int], ...]

    def matches(self, reply: bytes) -> bool:
        """Is `reply` the answer to this query (id, QR bit and question all match)?"""
        if len(reply) < 12:
            return False
        rid, flags = struct.unpack_from("!HH", reply)
        if rid != self.upstream_id or not flags & 0x8000:
            return False
        try:
            msg = DNSRecord.parse(reply)
        except Exception:
            return False
        if len(msg.questions) != 1:
            return False
        q = msg.questions[0]
        return q.qtype == self.qtype and q.qclass == self.qclass and _name_key(q.qname.label) == self.qname


class Resolver:
    def __init__(
        self,
        zone: Zone,
        *,
        upstreams: Iterable[tuple[str, int]] = (),
        rate_limiter: RateLimiter | None = None,
        stats: DnsStats | None = None,
        max_udp_size: int = MAX_UDP_SIZE,
        random_id: Callable[[], int] | None = None,
    ) -> None:
        self.zone = zone
        self.upstreams = tuple(upstreams)
        self.limiter = rate_limiter
        self.stats = stats if stats is not None else DnsStats()
        self.max_udp_size = max(MIN_UDP_SIZE, max_udp_size)
        self._random_id = random_id or (lambda: secrets.randbits(16))

    # -- entry points -------------------------------------------------------------------------
    def handle(
        self, data: bytes, *, source: Any, now: float, transport: str = "udp"
    ) -> bytes | Forward | None:
        """Answer one DNS message. `source` is the client's (ip, port) or ip; `transport` is
        "udp" or "tcp" (no size limit, rate-limited clients get REFUSED instead of silence)."""
        stats = self.stats
        stats.queries += 1
        if len(data) < 12:
            stats.dropped += 1
            return None
        qid, flags = struct.unpack_from("!HH", data)
        if flags & 0x8000:  # a response: answering it could start a loop
            stats.dropped += 1
            return None
        if self.limiter is not None:
            ip = source[0] if isinstance(source, tuple) else str(source)
            if not self.limiter.allow(ip, now):
                stats.rate_limited += 1
                if transport == "udp":
                    return None
                return self._count(_header_only(qid, flags, REFUSED), REFUSED)
        try:
            return self._handle(data, qid, flags, now, transport)
        except Exception:
            stats.internal_errors += 1
            return self._count(_header_only(qid, flags, SERVFAIL), SERVFAIL)

    def forward_reply(self, fwd: Forward, reply: bytes | None) -> bytes:
        """The client's reply for a Forward: the upstream answer under the client's id (cut with TC
        if it does not fit the client's UDP size), or SERVFAIL when `reply` is None."""
        if reply is None or len(reply) < 12:
            self.stats.forward_failures += 1
            return self._finish(self._reply(fwd.request, SERVFAIL, ra=True), fwd.request, fwd.transport, fwd.max_size, fwd.has_edns, SERVFAIL)
        out = struct.pack("!H", fwd.client_id) + reply[2:]
        rcode = reply[3] & 0xF
        if fwd.transport == "udp" and len(out) > fwd.max_size:
            self.stats.truncated += 1
            out = self._truncated(fwd.request, struct.unpack_from("!H", reply, 2)[0] | 0x0200, fwd.has_edns)
        return self._count(out, rcode)

    # -- internals ----------------------------------------------------------------------------
    def _count(self, reply: bytes, rcode: int) -> bytes:
        self.stats.rcodes[RCODE_NAMES.get(rcode, str(rcode))] += 1
        return reply

    def _handle(self, data: bytes, qid: int, flags: int, now: float, transport: str) -> bytes | Forward:
        try:
            req = DNSRecord.parse(data)
        except Exception:
            return self._count(_header_only(qid, flags, FORMERR), FORMERR)
        opcode = (flags >> 11) & 0xF
        if opcode != 0:
            return self._count(_header_only(qid, flags, NOTIMP), NOTIMP)
        if len(req.questions) != 1 or req.rr or req.auth:
            return self._count(_header_only(qid, flags, FORMERR), FORMERR)

        opts = [rr for rr in req.ar if rr.rtype == _QTYPE_OPT]
        if len(opts) > 1:
            return self._count(_header_only(qid, flags, FORMERR), FORMERR)
        has_edns = bool(opts)
        if transport != "udp":
            max_size = 65535
        elif has_edns:
            max_size = min(max(opts[0].rclass, MIN_UDP_SIZE), self.max_udp_size)
        else:
            max_size = MIN_UDP_SIZE
        if has_edns and (opts[0].ttl >> 16) & 0xFF != 0:
            reply = self._reply(req, 0)
            reply.add_ar(EDNS0(udp_len=EDNS_ADVERTISED, ext_rcode=BADVERS >> 4))
            return self._count(bytes(reply.pack()), BADVERS)

        q = req.questions[0]
        if q.qtype == _QTYPE_OPT:
            return self._count(_header_only(qid, flags, FORMERR), FORMERR)
        ra = bool(self.upstreams)
        if q.qclass not in (_CLASS_IN, _CLASS_ANY) or q.qtype in _ZONE_TRANSFERS:
            return self._finish(self._reply(req, REFUSED, ra=ra), req, transport, max_size, has_edns, REFUSED)

        name = _name_key(q.qname.label)
        rtype = _TYPE_NAMES.get(q.qtype) or f"TYPE{q.qtype}"
        result = self.zone.lookup(name, rtype, now)
        if result is None:
            if self.upstreams:
                self.stats.forwarded += 1
                upstream_id = self._random_id() & 0xFFFF
                return Forward(
                    query=struct.pack("!H", upstream_id) + data[2:],
                    upstream_id=upstream_id,
                    client_id=qid,
                    qname=name,
                    qtype=q.qtype,
                    qclass=q.qclass,
                    request=req,
                    transport=transport,
                    max_size=max_size,
                    has_edns=has_edns,
                    upstreams=self.upstreams,
                )
            return self._finish(self._reply(req, REFUSED, ra=ra), req, transport, max_size, has_edns, REFUSED)

        rcode = RC_NXDOMAIN if result.rcode == NXDOMAIN else NOERROR
        reply = self._reply(req, rcode, aa=True, ra=ra)
        asked = q.qname
        for rec in result.answers:
            reply.add_answer(self._rr(rec, asked if rec.name == name else None))
        for rec in result.authority:
            reply.add_auth(self._rr(rec, None))
        return self._finish(reply, req, transport, max_size, has_edns, rcode)

    @staticmethod
    def _reply(req: DNSRecord, rcode: int, *, aa: bool = False, ra: bool = False) -> DNSRecord:
        h = req.header
        header = DNSHeader(id=h.id, qr=1, aa=int(aa), rd=h.rd, ra=int(ra), cd=h.cd, rcode=rcode)
        return DNSRecord(header, questions=list(req.questions))

    def _finish(
        self, reply: DNSRecord, req: DNSRecord, transport: str, max_size: int, has_edns: bool, rcode: int
    ) -> bytes:
        if has_edns:
            reply.add_ar(EDNS0(udp_len=EDNS_ADVERTISED))
        wire = bytes(reply.pack())
        if transport == "udp" and len(wire) > max_size:
            self.stats.truncated += 1
            wire = self._truncated(req, struct.unpack_from("!H", wire, 2)[0] | 0x0200, has_edns)
        return self._count(wire, rcode)

    @staticmethod
    def _truncated(req: DNSRecord, flags: int, has_edns: bool) -> bytes:
        """Header (with TC) + question (+ OPT): what fits in any UDP reply."""
        out = DNSRecord(DNSHeader(id=req.header.id, bitmap=flags & 0xFFFF), questions=list(req.questions))
        if has_edns:
            out.add_ar(EDNS0(udp_len=EDNS_ADVERTISED))
        return bytes(out.pack())

    @staticmethod
    def _rr(rec: Record, owner: DNSLabel | None) -> RR:
        rname = owner if owner is not None else DNSLabel(rec.name)
        t = rec.rtype
        if t == "A":
            rdata: Any = A(rec.value)
        elif t == "AAAA":
            rdata = AAAA(rec.value)
        elif t == "PTR":
            rdata = PTR(rec.value + ".")
        elif t == "NS":
            rdata = NS(rec.value + ".")
        elif t == "TXT":
            rdata = TXT([v.encode("utf-8") for v in rec.value])
        elif t == "SOA":
            mname, rname_, serial, refresh, retry, expire, minimum = rec.value
            rdata = SOA(mname + ".", rname_ + ".", (serial, refresh, retry, expire, minimum))
        else:  # pragma: no cover - the zone makes no other types
            raise ValueError(t)
        return RR(rname, getattr(QTYPE, t), ttl=rec.ttl, rdata=rdata)

