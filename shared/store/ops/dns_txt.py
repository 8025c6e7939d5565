"""TXT records a node asks for through /machine/set-dns (ACME DNS-01), served by the DNS service.

Names are kept lower case without the trailing dot, so one name has one row however it is spelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.rows import read_time, read_tuple, str_tuple, utc


def _txt_name(name: str) -> str:
    key = str(name).strip().rstrip(".").lower()
    if not key:
        raise ValueError("TXT record name is empty")
    return key


def op_set_dns_txt(name: str, values: Sequence[str], expires_at: datetime):
    key, vals = _txt_name(name), str_tuple(values)
    if vals:
        yield Exec("DELETE FROM dns_txt WHERE name = ?", key)
        yield Exec("INSERT INTO dns_txt (name, vals, expires_at) VALUES (?, ?, ?)", key, vals, utc(expires_at))
    else:
        yield Exec("DELETE FROM dns_txt WHERE name = ?", key)
    yield Emit("dnstxt.set", {"name": key})


def op_get_dns_txt(name: str, now: datetime):
    r = yield One("SELECT * FROM dns_txt WHERE name = ? AND expires_at > ?", _txt_name(name), utc(now))
    return None if r is None else (read_tuple(r["vals"]), read_time(r["expires_at"]))


def op_list_dns_txt(now: datetime):
    rows = yield All("SELECT * FROM dns_txt WHERE expires_at > ? ORDER BY name", utc(now))
    return [(r["name"], read_tuple(r["vals"]), read_time(r["expires_at"])) for r in rows]


def op_purge_dns_txt(now: datetime):
    rows = yield All("DELETE FROM dns_txt WHERE expires_at <= ? RETURNING name", utc(now))
    return len(rows)
