"""The DNS server's TXT records for ACME DNS-01 (values a node set through ``/machine/set-dns``), pure data.

The coordinator writes every value to the store's ``dns_txt`` table (``Store.set_dns_txt``, change
kind ``dnstxt.set``); the DNS service loads that table at start and follows its changes into the
table here, which the zone reads on every TXT query. So a DNS server in the coordinator's process,
in another process or on another host (PostgreSQL) serves the same values, and the store is the
only way they travel. Values expire (default: 10 minutes after they were set), so a forgotten
challenge never lingers.

The change log arrives milliseconds after the write (more across processes), but an ACME server asks
as soon as the node's ``/machine/set-dns`` returns: so a query for an ACME name first reads that
one name from the store (the adapter does the read, see ``service.py``; the resolver bounds how
often). The table remembers what it is reading (:meth:`begin_read`, :meth:`end_read`), so a change
the log brings during the read is not overwritten by the older answer.

Times are wall-clock seconds since the epoch (``time.time()``) or aware datetimes; ``now`` is an
argument wherever the answer depends on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime

from trioscale.shared.domain.extrarecords import normalize_name

__all__ = ["TxtRecords", "DEFAULT_TXT_TTL"]

#: how long a TXT value lives when the caller gives no expiry (seconds)
DEFAULT_TXT_TTL = 600.0
#: bounds, so a misbehaving caller cannot grow the table without limit
MAX_NAMES = 10_000
MAX_VALUES = 16
MAX_VALUE_BYTES = 255  # one DNS character-string; ACME tokens are 43 characters


def _as_epoch(value: float | datetime) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        return value.timestamp()
    return float(value)


class TxtRecords:
    """name → (values, expires_at), as the store's change log last said (see the module doc)."""

    def __init__(self, *, default_ttl: float = DEFAULT_TXT_TTL, max_names: int = MAX_NAMES) -> None:
        self.default_ttl = default_ttl
        self.max_names = max_names
        self._entries: dict[str, tuple[tuple[str, ...], float]] = {}
        # names being read from the store -> whether set/clear changed them meanwhile
        self._reading: dict[str, bool] = {}
        #: grows on every change; the zone adds it into the SOA serial
        self.version = 0

    def set(
        self,
        name: str,
        values: Iterable[str],
        expires_at: float | datetime | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """Replace the TXT values of `name` (an FQDN such as ``_acme-challenge.host.<base_domain>``).

        `expires_at` (epoch seconds or an aware datetime) defaults to `now` + ``default_ttl``. An
        empty `values` is the same as :meth:`clear`. ValueError for values that cannot be served
        (more than 16, longer than 255 bytes, not text) or when the table is full.
        """
        key = normalize_name(name)
        if not key:
            raise ValueError("TXT record name is empty")
        vals = tuple(values)
        if not vals:
            self.clear(name)
            return
        if len(vals) > MAX_VALUES:
            raise ValueError(f"at most {MAX_VALUES} TXT values per name, got {len(vals)}")
        for v in vals:
            if not isinstance(v, str):
                raise ValueError(f"TXT values must be strings, got {v!r}")
            if len(v.encode("utf-8")) > MAX_VALUE_BYTES:
                raise ValueError(f"TXT value longer than {MAX_VALUE_BYTES} bytes")
        now = time.time() if now is None else now
        expiry = now + self.default_ttl if expires_at is None else _as_epoch(expires_at)
        if key not in self._entries and len(self._entries) >= self.max_names:
            self.purge(now)
            if len(self._entries) >= self.max_names:
                raise ValueError(f"too many TXT records (limit {self.max_names})")
        self._entries[key] = (vals, expiry)
        self.version += 1
        self._changed(key)

    def clear(self, name: str) -> None:
        """Remove every TXT value of `name`; absent names are fine."""
        key = normalize_name(name)
        if self._entries.pop(key, None) is not None:
            self.version += 1
        self._changed(key)

    def _changed(self, key: str) -> None:
        # the change log is newer than any read in flight
        if key in self._reading:
            self._reading[key] = True

    # -- read-through ---------------------------------------------------------------------------
    def begin_read(self, name: str) -> None:
        """Note that `name` (normalised) is being read from the store."""
        self._reading[name] = False

    def end_read(self, name: str, found: tuple[Iterable[str], float | datetime] | None, *, now: float) -> None:
        """Apply what the store said of `name`: (values, expires_at), or None when it has none.
        Nothing is applied when the change log set or cleared `name` since :meth:`begin_read`."""
        if self._reading.pop(name, True):
            return
        if found is not None:
            try:
                self.set(name, found[0], found[1], now=now)
                return
            except ValueError:  # values we cannot serve, or a full table: as if there were none
                pass
        self.clear(name)

    def abandon_read(self, name: str) -> None:
        """The read of `name` failed or took too long: the table stays as it was."""
        self._reading.pop(name, None)

    def get(self, name: str, now: float) -> tuple[str, ...]:
        """The live values of `name` (already normalised), () if none or expired."""
        entry = self._entries.get(name)
        if entry is None:
            return ()
        if entry[1] <= now:
            del self._entries[name]
            self.version += 1
            return ()
        return entry[0]

    def purge(self, now: float) -> int:
        """Drop expired entries; returns how many."""
        dead = [k for k, (_, exp) in self._entries.items() if exp <= now]
        for k in dead:
            del self._entries[k]
        if dead:
            self.version += 1
        return len(dead)

    def names(self) -> list[str]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
