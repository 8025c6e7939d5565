"""The change log: reading it, and the subscriber positions that decide how far it may be trimmed.

A position is bookkeeping, not tailnet state, so recording one records no change.
"""

from __future__ import annotations

from datetime import datetime

from trioscale.shared.store.ops.query import All, Exec, One
from trioscale.shared.store.rows import change_from_row, read_time, utc


def op_latest_seq():
    r = yield One("SELECT coalesce(max(seq), 0) AS s FROM changes")
    return int(r["s"])


def op_changes_since(seq: int, limit: int):
    rows = yield All("SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", int(seq), int(limit))
    return [change_from_row(r) for r in rows]


def op_record_position(subscriber_id: str, seq: int, lease_expires: datetime):
    yield Exec("DELETE FROM change_subscribers WHERE id = ?", subscriber_id)
    yield Exec(
        "INSERT INTO change_subscribers (id, seq, lease_expires) VALUES (?, ?, ?)",
        subscriber_id,
        int(seq),
        utc(lease_expires),
    )


def op_drop_position(subscriber_id: str):
    yield Exec("DELETE FROM change_subscribers WHERE id = ?", subscriber_id)


def op_list_positions(now: datetime):
    rows = yield All("SELECT * FROM change_subscribers WHERE lease_expires >= ? ORDER BY id", utc(now))
    return [(r["id"], int(r["seq"]), read_time(r["lease_expires"])) for r in rows]


def op_trim_changes(now: datetime, max_rows: int):
    yield Exec("DELETE FROM change_subscribers WHERE lease_expires < ?", utc(now))
    r = yield One(
        "SELECT (SELECT min(seq) FROM change_subscribers) AS keep, (SELECT max(seq) FROM changes) AS newest,"
        " (SELECT min(seq) FROM changes) AS oldest"
    )
    if r["newest"] is None:
        return 0
    # everything a live subscriber has read (seq <= its position) may go, but never the newest
    # row: seqs are max(seq) + 1, and a gap is how a subscriber learns it was trimmed past
    upto = int(r["newest"]) - 1
    if r["keep"] is not None:
        upto = min(upto, int(r["keep"]))
    upto = min(upto, int(r["oldest"]) + int(max_rows) - 1)
    if upto < int(r["oldest"]):
        return 0
    rows = yield One("SELECT count(*) AS n FROM changes WHERE seq <= ?", upto)
    yield Exec("DELETE FROM changes WHERE seq <= ?", upto)
    return int(rows["n"])
