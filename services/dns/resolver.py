"""The DNS server's protocol core, sans-IO: query bytes in, reply bytes out.

``Resolver.handle(query, source=, now=, transport=)`` returns the reply to send, ``None`` to send
nothing (runt or response packets, rate-limited UDP sources), or a :class:`Forward` when the name
is outside our zones and upstreams are configured. For a Forward the adapter sends
``forward.query`` to the upstreams in turn (UDP, with a timeout), accepts the first datagram for
which ``forward.matches(reply)`` is true, and sends ``resolver.forward_reply(forward, reply)`` (or
``forward_reply(forward, None)``, a SERVFAIL, when every upstream failed) back to the client.

With `txt_reads` (a budget per name), a TXT or ANY query for ``_acme-challenge.<label>.<base_domain>``
gets a :class:`TxtLookup` while the name's budget lasts: the adapter reads ``lookup.name`` from the
store into the TXT table (``begin_read``/``end_read``) and sends ``resolver.resume(lookup, now=)``
to the client, or ``resume`` straight away when it will not read (too many reads in flight). The
store, not the table, is asked because the table follows the change log, which lags the write that
``/machine/set-dns`` answers after, and tailscaled looks the name up just before that write (so a
remembered miss, or an older value, would be wrong just when the ACME server asks). Over budget, the
table answers alone.

What it answers (zone data in ``zone.py``): A/AAAA/PTR/TXT/SOA/NS and ANY; names that exist with
other types → NOERROR, no answer, SOA in authority (NODATA); names that do not exist → NXDOMAIN +
SOA; names outside the zones → forwarded when upstreams are configured and the source is in
`forward_from` (the tailnet's prefixes and the networks in ``dns.forward_allowed_from``), REFUSED
otherwise: answering everyone would make us an open resolver, an amplifier for spoofed sources.
RA is set only for sources we would forward for. EDNS0: the client's UDP payload size is
honoured (512 without EDNS, at most `max_udp_size`), a version other than 0 gets BADVERS. UDP
replies that do not fit are cut to the question with TC set; the client retries over TCP.
Unparseable queries get FORMERR when the header can be read, nothing otherwise. Nothing here
raises: an internal error becomes SERVFAIL.

`now` is wall-clock seconds (``time.time()``): it drives the rate limiter and TXT expiry.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dnslib import DNSHeader, DNSRecord

from .ratelimit import RateLimiter
from .sources import SourceNetworks
from .zone import NXDOMAIN, Record, Zone

__all__ = ["Resolver", "Forward", "TxtLookup", "DnsStats", "parse_upstreams", "RCODE_NAMES"]

NOERROR, FORMERR, SERVFAIL, RC_NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}

_TYPE_NAMES = {1: "A", 2: "NS", 6: "SOA", 12: "PTR", 16: "TXT", 28: "AAAA", 255: "ANY"}
_TYPE_CODES = {v: k for k, v in _TYPE_NAMES.items()}
#: query types counted by name in DnsStats.qtypes (the zone's and what clients commonly ask);
#: any other is counted as "other", so the set stays bounded whatever a client sends
_COUNTED_TYPES = {**_TYPE_NAMES, 5: "CNAME", 15: "MX", 33: "SRV", 64: "SVCB", 65: "HTTPS", 257: "CAA"}
QUERY_TYPES = (*sorted(set(_COUNTED_TYPES.values())), "other")
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
    """Counters, shared with the adapter (`DnsService.stats`, what `serve` reports when started)."""

    queries: int = 0  # messages received (UDP datagrams and TCP messages)
    dropped: int = 0  # not answered: runts, responses, unparseable headers
    rate_limited: int = 0
    truncated: int = 0
    forwarded: int = 0
    forward_failures: int = 0
    forward_refused: int = 0  # names outside our zones from a source not allowed to recurse
    txt_reads: int = 0  # TXT names read from the store before answering (a TxtLookup)
    txt_reads_skipped: int = 0  # TxtLookups answered from the table: too many reads in flight
    internal_errors: int = 0
    tcp_connections: int = 0
    tcp_rejected: int = 0
    rcodes: Counter[str] = field(default_factory=Counter)
    qtypes: Counter[str] = field(default_factory=Counter)  # questions parsed, by QUERY_TYPES

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("rcodes", "qtypes")}
        d["rcodes"] = dict(self.rcodes)
        d["qtypes"] = dict(self.qtypes)
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


def _name_key(labels: Iterable[bytes]) -> str:
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


def _opt(ext_rcode: int = 0) -> bytes:
    """Our OPT pseudo-record: root owner, advertised payload size, version 0, no options."""
    return b"\x00" + struct.pack("!HHIH", _QTYPE_OPT, EDNS_ADVERTISED, ext_rcode << 24, 0)


_NAME_CACHE: dict[str, bytes] = {}


def _encode_name(name: str) -> bytes:
    """Wire form of a normalised name (no compression). Cached: zone names repeat."""
    wire = _NAME_CACHE.get(name)
    if wire is None:
        out = bytearray()
        for label in name.split(".") if name else ():
            raw = label.encode("latin-1", "replace")[:63]
            out.append(len(raw))
            out += raw
        out.append(0)
        wire = bytes(out)
        if len(_NAME_CACHE) < 100_000:
            _NAME_CACHE[name] = wire
    return wire


@dataclass(slots=True)
class _Query:
    """What the core needs of a query, however it was parsed."""

    qid: int
    flags: int
    question: bytes  # the question section as sent (case kept), for echoing
    labels: list[bytes]
    qtype: int
    qclass: int
    has_edns: bool
    udp_len: int
    edns_version: int


def _parse_fast(data: bytes, qid: int, flags: int) -> _Query | None:
    """The common shape — one question, no answer/authority, at most an OPT — without dnslib.
    None for anything else (the dnslib path then decides)."""
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    if qd != 1 or an or ns or ar > 1:
        return None
    pos = 12
    end = len(data)
    labels = []
    while True:
        if pos >= end:
            return None
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n > 63 or pos + 1 + n > end:
            return None  # compression pointer or broken: leave it to dnslib
        labels.append(data[pos + 1 : pos + 1 + n])
        pos += 1 + n
    if pos + 4 > end or pos - 12 > 255:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    question = data[12 : pos + 4]
    pos += 4
    has_edns, udp_len, version = False, 0, 0
    if ar:
        # root owner, TYPE OPT, CLASS = payload size, TTL = ext-rcode/version/flags, RDLEN, options
        if pos + 11 > end or data[pos] != 0:
            return None
        rtype, udp_len, ttl, rdlen = struct.unpack_from("!HHIH", data, pos + 1)
        if rtype != _QTYPE_OPT or pos + 11 + rdlen != end:
            return None
        has_edns, version = True, (ttl >> 16) & 0xFF
    elif pos != end:
        return None
    return _Query(qid, flags, bytes(question), labels, qtype, qclass, has_edns, udp_len, version)


def _parse_slow(data: bytes, qid: int, flags: int) -> _Query | int:
    """Anything else, through dnslib: a _Query, or the rcode to refuse it with."""
    try:
        req = DNSRecord.parse(data)
    except Exception:
        return FORMERR
    if len(req.questions) != 1 or req.rr or req.auth:
        return FORMERR
    opts = [rr for rr in req.ar if rr.rtype == _QTYPE_OPT]
    if len(opts) > 1:
        return FORMERR
    q = req.questions[0]
    try:
        question = bytes(DNSRecord(DNSHeader(id=0), questions=[q]).pack())[12:]
    except Exception:  # dnslib read a name it cannot write back (a label of 64+ bytes): malformed
        return FORMERR
    has_edns = bool(opts)
    return _Query(
        qid,
        flags,
        question,
        list(q.qname.label),
        q.qtype,
        q.qclass,
        has_edns,
        opts[0].rclass if has_edns else 0,
        (opts[0].ttl >> 16) & 0xFF if has_edns else 0,
    )


@dataclass
class Forward:
    """A query to pass upstream. `query` carries `upstream_id`, not the client's id."""

    query: bytes
    upstream_id: int
    client_id: int
    client_flags: int
    question: bytes
    transport: str
    max_size: int
    has_edns: bool
    upstreams: tuple[tuple[str, int], ...]

    def matches(self, reply: bytes) -> bool:
        """Is `reply` the answer to this query (id, QR bit and question all match)?"""
        if len(reply) < 12 + len(self.question):
            return False
        rid, flags, qd = struct.unpack_from("!HHH", reply)
        if rid != self.upstream_id or not flags & 0x8000 or qd != 1:
            return False
        # length bytes of labels are < 64, so lower() only folds the letters of the names
        return reply[12 : 12 + len(self.question)].lower() == self.question.lower()


@dataclass
class TxtLookup:
    """Read TXT `name` from the store, then answer with ``Resolver.resume(lookup, now=)``."""

    name: str
    query: bytes
    source: Any
    transport: str


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
        forward_from: SourceNetworks | None = None,
        txt_reads: RateLimiter | None = None,
    ) -> None:
        """`forward_from`: the sources whose queries may be forwarded; None or empty: nobody.
        `txt_reads`: store reads allowed per ACME TXT name (keyed by the name); None: no reads,
        the TXT table answers alone."""
        self.txt_reads = txt_reads
        self.zone = zone
        self.upstreams = tuple(upstreams)
        self.forward_from = forward_from if forward_from is not None else SourceNetworks()
        self.limiter = rate_limiter
        self.stats = stats if stats is not None else DnsStats()
        self.max_udp_size = max(MIN_UDP_SIZE, max_udp_size)
        self._random_id = random_id or (lambda: secrets.randbits(16))

    # -- entry points -------------------------------------------------------------------------
    def handle(
        self, data: bytes, *, source: Any, now: float, transport: str = "udp"
    ) -> bytes | Forward | TxtLookup | None:
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
            return self._handle(data, qid, flags, now, transport, source, self.txt_reads)
        except Exception:
            stats.internal_errors += 1
            return self._count(_header_only(qid, flags, SERVFAIL), SERVFAIL)

    def resume(self, lookup: TxtLookup, *, now: float) -> bytes:
        """The reply to a query that gave `lookup`, from the TXT table as it is now (not counted
        or rate-limited a second time)."""
        qid, flags = struct.unpack_from("!HH", lookup.query)
        try:
            out = self._handle(lookup.query, qid, flags, now, lookup.transport, lookup.source, None)
            if isinstance(out, bytes):
                return out
        except Exception:
            pass
        # a name in our zone is never forwarded: anything else here is a fault
        self.stats.internal_errors += 1
        return self._count(_header_only(qid, flags, SERVFAIL), SERVFAIL)

    def forward_reply(self, fwd: Forward, reply: bytes | None) -> bytes:
        """The client's reply for a Forward: the upstream answer under the client's id (cut with TC
        if it does not fit the client's UDP size), or SERVFAIL when `reply` is None."""
        if reply is None or len(reply) < 12:
            self.stats.forward_failures += 1
            out = self._build(fwd.client_id, fwd.client_flags, SERVFAIL, fwd.question, aa=False, ra=True,
                              has_edns=fwd.has_edns)
            return self._count(out, SERVFAIL)
        out = struct.pack("!H", fwd.client_id) + reply[2:]
        rcode = reply[3] & 0xF
        if fwd.transport == "udp" and len(out) > fwd.max_size:
            self.stats.truncated += 1
            out = self._truncated(out, fwd.question, fwd.has_edns)
        return self._count(out, rcode)

    # -- internals ----------------------------------------------------------------------------
    def _count(self, reply: bytes, rcode: int) -> bytes:
        self.stats.rcodes[RCODE_NAMES.get(rcode, str(rcode))] += 1
        return reply

    def _handle(
        self, data: bytes, qid: int, flags: int, now: float, transport: str, source: Any,
        txt_reads: RateLimiter | None,
    ) -> bytes | Forward | TxtLookup:
        opcode = (flags >> 11) & 0xF
        if opcode != 0:
            return self._count(_header_only(qid, flags, NOTIMP), NOTIMP)
        q = _parse_fast(data, qid, flags)
        if q is None:
            parsed = _parse_slow(data, qid, flags)
            if isinstance(parsed, int):
                return self._count(_header_only(qid, flags, parsed), parsed)
            q = parsed
        self.stats.qtypes[_COUNTED_TYPES.get(q.qtype, "other")] += 1
        if transport != "udp":
            max_size = 65535
        elif q.has_edns:
            max_size = min(max(q.udp_len, MIN_UDP_SIZE), self.max_udp_size)
        else:
            max_size = MIN_UDP_SIZE
        if q.has_edns and q.edns_version != 0:
            out = self._build(qid, flags, 0, q.question, aa=False, ra=False, has_edns=True, ext_rcode=BADVERS >> 4)
            return self._count(out, BADVERS)
        if q.qtype == _QTYPE_OPT:
            return self._count(_header_only(qid, flags, FORMERR), FORMERR)
        ra = bool(self.upstreams) and source in self.forward_from
        if q.qclass not in (_CLASS_IN, _CLASS_ANY) or q.qtype in _ZONE_TRANSFERS:
            return self._finish(q, REFUSED, (), (), False, ra, transport, max_size)

        name = _name_key(q.labels)
        rtype = _TYPE_NAMES.get(q.qtype) or f"TYPE{q.qtype}"
        if (
            txt_reads is not None
            and (rtype == "TXT" or rtype == "ANY")
            and self.zone.is_acme_challenge(name)
            and txt_reads.allow(name, now)
        ):
            return TxtLookup(name, bytes(data), source, transport)
        result = self.zone.lookup(name, rtype, now)
        if result is None:
            if ra:
                self.stats.forwarded += 1
                upstream_id = self._random_id() & 0xFFFF
                return Forward(
                    query=struct.pack("!H", upstream_id) + bytes(data[2:]),
                    upstream_id=upstream_id,
                    client_id=qid,
                    client_flags=flags,
                    question=q.question,
                    transport=transport,
                    max_size=max_size,
                    has_edns=q.has_edns,
                    upstreams=self.upstreams,
                )
            if self.upstreams:
                self.stats.forward_refused += 1
            return self._finish(q, REFUSED, (), (), False, ra, transport, max_size)
        rcode = RC_NXDOMAIN if result.rcode == NXDOMAIN else NOERROR
        answers = [self._rr(rec, rec.name == name) for rec in result.answers]
        authority = [self._rr(rec, False) for rec in result.authority]
        return self._finish(q, rcode, answers, authority, True, ra, transport, max_size)

    def _finish(
        self,
        q: _Query,
        rcode: int,
        answers: Iterable[bytes],
        authority: Iterable[bytes],
        aa: bool,
        ra: bool,
        transport: str,
        max_size: int,
    ) -> bytes:
        wire = self._build(q.qid, q.flags, rcode, q.question, answers, authority, aa=aa, ra=ra, has_edns=q.has_edns)
        if transport == "udp" and len(wire) > max_size:
            self.stats.truncated += 1
            wire = self._truncated(wire, q.question, q.has_edns)
        return self._count(wire, rcode)

    @staticmethod
    def _build(
        qid: int,
        flags: int,
        rcode: int,
        question: bytes,
        answers: Iterable[bytes] = (),
        authority: Iterable[bytes] = (),
        *,
        aa: bool,
        ra: bool,
        has_edns: bool,
        ext_rcode: int = 0,
    ) -> bytes:
        answers = list(answers)
        authority = list(authority)
        # QR, opcode/RD/CD copied, AA and RA ours, AD never
        out_flags = 0x8000 | (flags & 0x7900) | (flags & 0x0010) | (rcode & 0xF)
        if aa:
            out_flags |= 0x0400
        if ra:
            out_flags |= 0x0080
        header = struct.pack("!HHHHHH", qid, out_flags, 1, len(answers), len(authority), 1 if has_edns else 0)
        parts = [header, question, *answers, *authority]
        if has_edns:
            parts.append(_opt(ext_rcode))
        return b"".join(parts)

    @staticmethod
    def _truncated(reply: bytes, question: bytes, has_edns: bool) -> bytes:
        """`reply`'s header with TC set and only the question (+ OPT): fits any UDP reply."""
        qid, flags = struct.unpack_from("!HH", reply)
        header = struct.pack("!HHHHHH", qid, flags | 0x0200, 1, 0, 0, 1 if has_edns else 0)
        return header + question + (_opt() if has_edns else b"")

    @staticmethod
    def _rr(rec: Record, owner_is_qname: bool) -> bytes:
        # the owner: a pointer to the question's name (offset 12), so the answer keeps its case
        owner = b"\xc0\x0c" if owner_is_qname else _encode_name(rec.name)
        t = rec.rtype
        if t == "A":
            rdata = socket.inet_pton(socket.AF_INET, rec.value)
        elif t == "AAAA":
            rdata = socket.inet_pton(socket.AF_INET6, rec.value)
        elif t in ("PTR", "NS"):
            rdata = _encode_name(rec.value)
        elif t == "TXT":
            rdata = b"".join(bytes([len(raw)]) + raw for raw in (v.encode("utf-8")[:255] for v in rec.value))
        elif t == "SOA":
            mname, rname, serial, refresh, retry, expire, minimum = rec.value
            rdata = _encode_name(mname) + _encode_name(rname) + struct.pack("!IIIII", serial, refresh, retry, expire, minimum)
        else:  # pragma: no cover - the zone makes no other types
            raise ValueError(t)
        return owner + struct.pack("!HHIH", _TYPE_CODES[t], _CLASS_IN, rec.ttl, len(rdata)) + rdata
