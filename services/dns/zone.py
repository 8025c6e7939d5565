"""The tailnet's DNS data, pure: names → addresses, built from nodes, extra records and TXT values.

No sockets, no clock (``now`` is an argument), no dnslib: the resolver turns `Record`s into wire
format. Names are keyed lower case without the trailing dot.

The zone is authoritative for ``base_domain`` and for the reverse zones covering the tailnet
prefixes (100.64.0.0/10 → 64.100.in-addr.arpa … 127.100.in-addr.arpa; fd7a:115c:a1e0::/48 →
0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa). It holds, by source:

- nodes: ``<given_name>.<base_domain>`` A/AAAA, and PTR for each node address;
- extra records from the configuration and from the watched JSON file (A/AAAA), kept apart so
  either can be replaced on its own; names outside the zones are answered for the exact name only;
- TXT values from the shared :class:`~.txt.TxtRecords` (ACME DNS-01);
- SOA and NS at every apex (NS ``ns.<base_domain>``).

Every (name, type, value) carries a reference count, so two sources giving the same record and
one withdrawing it keep it. Names with no records of their own but with names below them (empty
non-terminals, e.g. ``0.64.100.in-addr.arpa``) exist: NODATA, not NXDOMAIN.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trioscale.shared.domain.extrarecords import check_extra_records, normalize_name, parse_extra_records, valid_name
from trioscale.shared.domain.reversedns import reverse_zones

from .txt import TxtRecords

__all__ = [
    "Record",
    "Lookup",
    "Zone",
    "reverse_zones",
    "parse_extra_records",
    "check_extra_records",
    "NXDOMAIN",
    "NOERROR",
]

NOERROR = "NOERROR"
NXDOMAIN = "NXDOMAIN"

DEFAULT_TTL = 60
NEGATIVE_TTL = 30


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record. `value`: an IP text (A/AAAA), a name (PTR/NS), a tuple of strings
    (TXT), or (mname, rname, serial, refresh, retry, expire, minimum) (SOA)."""

    name: str
    rtype: str
    ttl: int
    value: Any


@dataclass(frozen=True, slots=True)
class Lookup:
    """The zone's answer to (name, type). `rcode` is NOERROR or NXDOMAIN; NODATA is NOERROR with no
    answers. `authority` carries the SOA of negative answers."""

    rcode: str
    answers: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    apex: str | None = None


_Key = tuple[str, str, str]  # (name, rtype, value)

_ACME_PREFIX = "_acme-challenge."
#: a node's label and the dot before the base domain (node names are letters, digits, hyphens)
_ACME_LABEL = re.compile(r"[a-z0-9_-]{1,63}\.")


class Zone:
    """Mutable, incrementally updated zone data. All methods are synchronous and pure."""

    def __init__(
        self,
        base_domain: str,
        prefixes: Iterable[str] = ("100.64.0.0/10", "fd7a:115c:a1e0::/48"),
        *,
        txt: TxtRecords | None = None,
        ttl: int = DEFAULT_TTL,
        negative_ttl: int = NEGATIVE_TTL,
        ns_name: str | None = None,
        ns_addresses: Iterable[str] = (),
        serial: int = 1,
    ) -> None:
        self.base_domain = normalize_name(base_domain)
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.txt = txt if txt is not None else TxtRecords()
        self.ns_name = normalize_name(ns_name) if ns_name else f"ns.{self.base_domain}"
        self.hostmaster = f"hostmaster.{self.base_domain}"
        self.apexes: set[str] = {self.base_domain}
        for p in prefixes:
            self.apexes.update(reverse_zones(p))
        self._serial = serial
        # name -> rtype -> Counter(value -> refs)
        self._names: dict[str, dict[str, Counter[str]]] = {}
        # empty non-terminals (within a zone): name -> number of names below it
        self._below: Counter[str] = Counter()
        # what each source contributed, to withdraw it later
        self._node_keys: dict[int, list[_Key]] = {}
        self._source_keys: dict[str, list[_Key]] = {}
        if ns_addresses:
            self.set_source("ns", [(self.ns_name, "AAAA" if ":" in a else "A", a) for a in ns_addresses])

    # -- serial -------------------------------------------------------------------------------
    @property
    def serial(self) -> int:
        """SOA serial: grows with every change (store seq, local edits, TXT changes)."""
        return (self._serial + self.txt.version) & 0xFFFFFFFF

    def bump(self, seq: int | None = None) -> None:
        """Note a change; `seq` (the store's change seq) moves the serial at least that far."""
        self._serial = max(self._serial + 1, seq or 0)

    # -- names --------------------------------------------------------------------------------
    def apex_of(self, name: str) -> str | None:
        """The most specific zone apex at or above `name` (normalised), or None."""
        apexes = self.apexes
        if name in apexes:
            return name
        i = name.find(".")
        while i >= 0:
            suffix = name[i + 1 :]
            if suffix in apexes:
                return suffix
            i = name.find(".", i + 1)
        return None

    def is_acme_challenge(self, name: str) -> bool:
        """Is `name` (normalised) of the form ``_acme-challenge.<one label>.<base_domain>``: the only
        TXT names a node can set (``/machine/set-dns``), so the only ones worth a store read."""
        suffix = self.base_domain
        if not name.startswith(_ACME_PREFIX) or not name.endswith(suffix):
            return False
        label = name[len(_ACME_PREFIX) : len(name) - len(suffix)]
        return _ACME_LABEL.fullmatch(label) is not None

    def node_name(self, given_name: str) -> str:
        return f"{normalize_name(given_name)}.{self.base_domain}"

    def _add(self, key: _Key) -> None:
        name, rtype, value = key
        types = self._names.get(name)
        if types is None:
            types = self._names[name] = {}
            self._ancestors(name, +1)
        types.setdefault(rtype, Counter())[value] += 1

    def _remove(self, key: _Key) -> None:
        name, rtype, value = key
        types = self._names.get(name)
        if types is None or rtype not in types:
            return
        values = types[rtype]
        values[value] -= 1
        if values[value] <= 0:
            del values[value]
        if not values:
            del types[rtype]
        if not types:
            del self._names[name]
            self._ancestors(name, -1)

    def _ancestors(self, name: str, delta: int) -> None:
        apex = self.apex_of(name)
        if apex is None or apex == name:
            return
        i = name.find(".")
        while i >= 0:
            parent = name[i + 1 :]
            if parent == apex:
                break
            self._below[parent] += delta
            if self._below[parent] <= 0:
                del self._below[parent]
            i = name.find(".", i + 1)

    # -- sources ------------------------------------------------------------------------------
    def set_node(self, node_id: int, given_name: str, ipv4: str | None, ipv6: str | None) -> None:
        """Insert or replace a node's records (idempotent)."""
        keys: list[_Key] = []
        name = self.node_name(given_name)
        if given_name and valid_name(name) and "." not in normalize_name(given_name):
            for ip_text, rtype in ((ipv4, "A"), (ipv6, "AAAA")):
                if not ip_text:
                    continue
                try:
                    ip = ipaddress.ip_address(ip_text)
                except ValueError:
                    continue
                keys.append((name, rtype, str(ip)))
                keys.append((ip.reverse_pointer, "PTR", name))
        old = self._node_keys.get(node_id)
        if old == keys:
            return
        for k in keys:
            self._add(k)
        for k in old or ():
            self._remove(k)
        if keys:
            self._node_keys[node_id] = keys
        else:
            self._node_keys.pop(node_id, None)

    def upsert_node(self, node: Any) -> None:
        """`set_node` from a shared.model.Node."""
        self.set_node(node.id, node.given_name, node.ipv4, node.ipv6)

    def remove_node(self, node_id: int) -> None:
        for k in self._node_keys.pop(node_id, ()):
            self._remove(k)

    def node_ids(self) -> list[int]:
        return list(self._node_keys)

    def set_source(self, source: str, records: Iterable[tuple[str, str, str]]) -> None:
        """Replace all records of a named source ("config", "file", ...) with (name, type, value)
        triples (already checked, see `check_extra_records`)."""
        keys = [(normalize_name(n), t.upper(), v) for n, t, v in records]
        old = self._source_keys.get(source, [])
        for k in keys:
            self._add(k)
        for k in old:
            self._remove(k)
        self._source_keys[source] = keys

    def set_extra_records(self, records: Iterable[Any], source: str = "config") -> list[str]:
        """Validate {name, type, value} mappings and make them the records of `source`; returns
        the problems found (bad items are skipped)."""
        good, problems = check_extra_records(records)
        self.set_source(source, good)
        return problems

    # -- queries ------------------------------------------------------------------------------
    def soa(self, apex: str) -> Record:
        return Record(
            apex,
            "SOA",
            self.negative_ttl,
            (self.ns_name, self.hostmaster, self.serial, 3600, 600, 86400, self.negative_ttl),
        )

    def _records(self, name: str, rtype: str, now: float) -> list[Record]:
        out: list[Record] = []
        types = self._names.get(name)
        if types is not None:
            values = types.get(rtype)
            if values:
                out.extend(Record(name, rtype, self.ttl, v) for v in values)
        if rtype == "TXT":
            vals = self.txt.get(name, now)
            if vals:
                out.extend(Record(name, "TXT", 0, (v,)) for v in vals)
        return out

    def exists(self, name: str, now: float) -> bool:
        return (
            name in self._names
            or name in self._below
            or name in self.apexes
            or bool(self.txt.get(name, now))
        )

    def lookup(self, name: str, rtype: str, now: float) -> Lookup | None:
        """Answer (name, rtype) — rtype an upper-case type name, "ANY" for all. None when the name is
        outside every zone and not an exact extra record: not ours (refuse or forward)."""
        apex = self.apex_of(name)
        if apex is None:
            if name not in self._names:
                return None
            return Lookup(NOERROR, tuple(self._all(name, now) if rtype == "ANY" else self._records(name, rtype, now)))
        if rtype == "ANY":
            answers = self._all(name, now)
        elif name == apex and rtype in ("SOA", "NS"):
            answers = [self._apex_record(apex, rtype)]
        else:
            answers = self._records(name, rtype, now)
        if answers:
            return Lookup(NOERROR, tuple(answers), apex=apex)
        rcode = NOERROR if self.exists(name, now) else NXDOMAIN
        return Lookup(rcode, (), (self.soa(apex),), apex=apex)

    def _apex_record(self, apex: str, rtype: str) -> Record:
        if rtype == "SOA":
            soa = self.soa(apex)
            return Record(apex, "SOA", self.ttl, soa.value)
        return Record(apex, "NS", self.ttl, self.ns_name)

    def _all(self, name: str, now: float) -> list[Record]:
        out: list[Record] = []
        if name in self.apexes:
            out.append(self._apex_record(name, "SOA"))
            out.append(self._apex_record(name, "NS"))
        for rtype in self._names.get(name, {}):
            if rtype != "TXT":
                out.extend(self._records(name, rtype, now))
        out.extend(self._records(name, "TXT", now))
        return out

    # -- introspection ------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._names)

    def __contains__(self, name: str) -> bool:
        return normalize_name(name) in self._names
