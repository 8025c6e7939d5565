"""SSH check mode: a session waiting for its user to approve it, and the decision.

Only the decision records a change (the replica holding the SSH session may be another one);
a waiting check is bounded in number, since each one is a held SSH login.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from trioscale.shared.model import SSHCheck
from trioscale.shared.store import base
from trioscale.shared.store.base import Conflict, NotFound, StoreFull
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.rows import ssh_check_from_row, utc

SSH_DECISIONS = ("approved", "rejected")


def op_create_ssh_check(check: SSHCheck):
    r = yield One("SELECT count(*) AS n FROM ssh_checks WHERE decision = '' AND expires_at > ?",
                  utc(check.created_at))
    if int(r["n"]) >= base.MAX_PENDING_SSH_CHECKS:
        raise StoreFull("too many SSH sessions are waiting for approval; try again later")
    yield Exec("INSERT INTO ssh_checks (id, src_node_id, dst_node_id, local_user, decision, created_at, expires_at)"
               " VALUES (?, ?, ?, ?, '', ?, ?)", check.id, int(check.src_node_id), int(check.dst_node_id),
               check.local_user, utc(check.created_at), utc(check.expires_at))
    return check


def op_get_ssh_check(check_id: str, now: datetime):
    r = yield One("SELECT * FROM ssh_checks WHERE id = ? AND expires_at > ?", str(check_id), utc(now))
    return None if r is None else ssh_check_from_row(r)


def op_decide_ssh_check(check_id: str, decision: str, now: datetime):
    if decision not in SSH_DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(SSH_DECISIONS)}")
    r = yield One("SELECT * FROM ssh_checks WHERE id = ? AND expires_at > ?", str(check_id), utc(now))
    if r is None:
        raise NotFound(f"no SSH session is waiting with auth id {check_id}")
    if r["decision"] and r["decision"] != decision:
        raise Conflict(f"SSH session {check_id} was already {r['decision']}")
    yield Exec("UPDATE ssh_checks SET decision = ? WHERE id = ?", decision, str(check_id))
    yield Emit("sshcheck.decided", {"id": str(check_id), "decision": decision})
    return dataclasses.replace(ssh_check_from_row(r), decision=decision)


def op_purge_ssh_checks(now: datetime):
    rows = yield All("DELETE FROM ssh_checks WHERE expires_at <= ? RETURNING id", utc(now))
    return len(rows)
