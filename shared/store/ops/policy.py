"""The tailnet policy: every set adds a new version (a row), and the newest one is in force."""

from __future__ import annotations

from datetime import datetime

from trioscale.shared.store.ops.query import Emit, One
from trioscale.shared.store.rows import policy_from_row


def op_get_policy():
    r = yield One("SELECT * FROM policies ORDER BY version DESC LIMIT 1")
    return None if r is None else policy_from_row(r)


def op_set_policy(text: str, now: datetime):
    r = yield One("SELECT coalesce(max(version), 0) AS v FROM policies")
    version = int(r["v"]) + 1
    r = yield One(
        "INSERT INTO policies (version, text, created_at) VALUES (?, ?, ?) RETURNING *", version, text, now
    )
    yield Emit("policy.set", {"version": version})
    return policy_from_row(r)
