"""Presence: which replica holds a map session for which node, under a lease.

A node is online while it has at least one presence row. Changes are recorded only on the
transitions (first row inserted: presence.online; last row deleted: presence.offline), never for a
lease renewal, so heartbeats cost no change-log rows. A replica that dies stops renewing; its rows
expire and are reaped by any other replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.rows import presence_from_row, time_text, utc


#: node ids per statement (SQLite allows 32,766 parameters, PostgreSQL 32,767)
_CHUNK = 500


def _presence_add(replica_id: str, node_ids: Sequence[int], lease_expires: datetime):
    """Hold a row for each of `node_ids` (a lease renewal for those held already); records
    presence.online for those no replica held. A few statements for the whole batch, not four
    per node: a replica writes these as its map sessions open, and over PostgreSQL each
    statement is a round trip."""
    ids = sorted({int(n) for n in node_ids})
    for at in range(0, len(ids), _CHUNK):
        chunk = ids[at : at + _CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = yield All(f"SELECT node_id, replica_id FROM presence WHERE node_id IN ({marks})", *chunk)
        mine = {int(r["node_id"]) for r in rows if r["replica_id"] == replica_id}
        others = {int(r["node_id"]) for r in rows if r["replica_id"] != replica_id}
        if mine:
            held = sorted(mine)
            yield Exec(
                f"UPDATE presence SET lease_expires = ? WHERE replica_id = ? AND node_id IN ({', '.join('?' for _ in held)})",
                lease_expires, replica_id, *held,
            )
        new = [n for n in chunk if n not in mine]
        if new:
            yield Exec(
                "INSERT INTO presence (node_id, replica_id, lease_expires) VALUES " + ", ".join("(?, ?, ?)" for _ in new),
                *(v for n in new for v in (n, replica_id, lease_expires)),
            )
        for node_id in new:
            if node_id not in others:
                yield Emit("presence.online", {"node_id": node_id, "replica_id": replica_id})


def _presence_remove(replica_id: str, node_id: int, now: datetime, reason: str):
    node_id = int(node_id)
    r = yield One(
        "DELETE FROM presence WHERE node_id = ? AND replica_id = ? RETURNING node_id", node_id, replica_id
    )
    if r is None:
        return False
    left = yield One("SELECT count(*) AS n FROM presence WHERE node_id = ?", node_id)
    if int(left["n"]):
        return False
    yield Exec("UPDATE nodes SET last_seen = ? WHERE id = ?", now, node_id)
    yield Emit(
        "presence.offline",
        {"node_id": node_id, "replica_id": replica_id, "last_seen": time_text(now), "reason": reason},
    )
    return True


def op_update_presence(replica_id: str, add: Sequence[int], remove: Sequence[int], lease_expires: datetime, now: datetime):
    lease_expires, now = utc(lease_expires), utc(now)
    yield from _presence_add(replica_id, add, lease_expires)
    for node_id in remove:
        yield from _presence_remove(replica_id, node_id, now, "closed")


def op_renew_presence(replica_id: str, node_ids: Sequence[int], lease_expires: datetime, now: datetime):
    lease_expires, now = utc(lease_expires), utc(now)
    yield Exec("UPDATE presence SET lease_expires = ? WHERE replica_id = ?", lease_expires, replica_id)
    have = {int(r["node_id"]) for r in (yield All("SELECT node_id FROM presence WHERE replica_id = ?", replica_id))}
    want = {int(n) for n in node_ids}
    yield from _presence_add(replica_id, sorted(want - have), lease_expires)
    for node_id in sorted(have - want):
        yield from _presence_remove(replica_id, node_id, now, "closed")


def op_reap_presence(now: datetime):
    now = utc(now)
    rows = yield All(
        "SELECT node_id, replica_id FROM presence WHERE lease_expires < ? ORDER BY node_id, replica_id", now
    )
    offline: list[int] = []
    for r in rows:
        if (yield from _presence_remove(r["replica_id"], int(r["node_id"]), now, "expired")):
            offline.append(int(r["node_id"]))
    return offline


def op_list_presence():
    rows = yield All("SELECT * FROM presence ORDER BY node_id, replica_id")
    return [presence_from_row(r) for r in rows]
