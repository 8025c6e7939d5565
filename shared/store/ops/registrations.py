"""Pending interactive registrations: a login waiting for an admin or a browser to approve it.

The table is bounded in rows, in bytes, and per source address, and what is dropped to make room
is chosen so a flood from one source cannot push out anyone else's login (see
op_put_pending_registration).
"""

from __future__ import annotations

from datetime import datetime

from trioscale.shared.model import PendingRegistration
from trioscale.shared.store.base import NotFound, StoreFull
from trioscale.shared.store.ops.limits import check_hostinfo
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.rows import normalize_hostinfo, opt_utc, registration_from_row, utc


def _drop_pending(rows, reason: str):
    for v in rows:
        yield Exec("DELETE FROM pending_registrations WHERE id = ?", v["id"])
        yield Emit("registration.deleted", {"id": v["id"], "reason": reason})


def op_put_pending_registration(reg: PendingRegistration, limit: int, byte_limit: int, per_source: int,
                                stale_before: datetime):
    hostinfo = normalize_hostinfo(reg.hostinfo)
    size = check_hostinfo(hostinfo)
    # expired ones first: they hold room that real logins need
    stale = yield All(
        "SELECT id FROM pending_registrations WHERE created_at < ? AND id <> ? ORDER BY created_at, pos",
        utc(stale_before),
        reg.id,
    )
    yield from _drop_pending(stale, "expired")
    # one waiting login per machine: a client that starts over replaces its own
    mine = yield All(
        "SELECT id FROM pending_registrations WHERE machine_key = ? AND id <> ? AND node_id IS NULL"
        " ORDER BY created_at, pos",
        bytes(reg.machine_key),
        reg.id,
    )
    yield from _drop_pending(mine, "replaced")
    # a source over its share gives up its own oldest, never anyone else's
    n_src = int((yield One(
        "SELECT count(*) AS n FROM pending_registrations WHERE source = ? AND id <> ?", reg.source, reg.id
    ))["n"])
    if n_src >= per_source:
        victims = yield All(
            "SELECT id FROM pending_registrations WHERE source = ? AND id <> ? ORDER BY created_at, pos LIMIT ?",
            reg.source,
            reg.id,
            n_src - max(per_source, 1) + 1,
        )
        yield from _drop_pending(victims, "dropped")
    totals = yield One(
        "SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM pending_registrations WHERE id <> ?", reg.id
    )
    if int(totals["n"]) + 1 > limit or int(totals["b"]) + size > byte_limit:
        raise StoreFull("too many logins are waiting for approval; try again later")
    r = yield One(
        "INSERT INTO pending_registrations (id, machine_key, node_key, hostinfo, expiry, created_at,"
        " node_id, user_id, source, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET machine_key = excluded.machine_key,"
        " node_key = excluded.node_key, hostinfo = excluded.hostinfo, expiry = excluded.expiry,"
        " created_at = excluded.created_at, node_id = excluded.node_id, user_id = excluded.user_id,"
        " source = excluded.source, size = excluded.size"
        " RETURNING *",
        reg.id,
        bytes(reg.machine_key),
        bytes(reg.node_key),
        hostinfo,
        opt_utc(reg.expiry),
        utc(reg.created_at),
        reg.node_id,
        reg.user_id,
        reg.source,
        size,
    )
    stored = registration_from_row(r)
    yield Emit("registration.pending", {"id": stored.id})
    return stored


def op_get_pending_registration(reg_id: str):
    r = yield One("SELECT * FROM pending_registrations WHERE id = ?", reg_id)
    return None if r is None else registration_from_row(r)


def op_list_pending_registrations():
    rows = yield All("SELECT * FROM pending_registrations WHERE node_id IS NULL ORDER BY created_at, id")
    return [registration_from_row(r) for r in rows]


def op_complete_pending_registration(reg_id: str, node_id: int, user_id: int):
    r = yield One(
        "UPDATE pending_registrations SET node_id = ?, user_id = ? WHERE id = ? RETURNING *",
        int(node_id),
        int(user_id),
        reg_id,
    )
    if r is None:
        raise NotFound(f'registration "{reg_id}" not found (it may have expired)')
    yield Emit("registration.completed", {"id": reg_id, "node_id": int(node_id), "user_id": int(user_id)})
    return registration_from_row(r)


def op_delete_pending_registration(reg_id: str):
    r = yield One("DELETE FROM pending_registrations WHERE id = ? RETURNING id", reg_id)
    if r is not None:
        yield Emit("registration.deleted", {"id": reg_id})


def op_delete_pending_registrations_before(before: datetime):
    rows = yield All(
        "DELETE FROM pending_registrations WHERE created_at < ? RETURNING id, pos", utc(before)
    )
    for r in sorted(rows, key=lambda r: r["pos"]):
        yield Emit("registration.deleted", {"id": r["id"], "reason": "expired"})
    return len(rows)
