"""Node shares: a node made visible to a user who does not own it."""

from __future__ import annotations

from datetime import datetime

from trioscale.shared.store.base import Conflict, NotFound
from trioscale.shared.store.ops.nodes import need_node
from trioscale.shared.store.ops.query import All, Emit, One
from trioscale.shared.store.ops.users import need_user
from trioscale.shared.store.rows import share_from_row


def op_add_share(node_id: int, user_id: int, now: datetime):
    node = yield from need_node(node_id)
    user = yield from need_user(user_id)
    if node.user_id == user.id and not node.is_tagged:
        raise Conflict(f'node "{node.given_name}" already belongs to user "{user.name}"')
    if (yield One("SELECT 1 AS x FROM shares WHERE node_id = ? AND user_id = ?", node.id, user.id)) is not None:
        raise Conflict(f'node "{node.given_name}" is already shared with user "{user.name}"')
    r = yield One(
        "INSERT INTO shares (node_id, user_id, created_at) VALUES (?, ?, ?) RETURNING *", node.id, user.id, now
    )
    yield Emit("share.created", {"node_id": node.id, "user_id": user.id})
    return share_from_row(r)


def op_remove_share(node_id: int, user_id: int):
    r = yield One(
        "DELETE FROM shares WHERE node_id = ? AND user_id = ? RETURNING node_id", int(node_id), int(user_id)
    )
    if r is None:
        raise NotFound(f"node {node_id} is not shared with user {user_id}")
    yield Emit("share.deleted", {"node_id": int(node_id), "user_id": int(user_id)})


def op_list_shares(node_id: int | None):
    if node_id is None:
        rows = yield All("SELECT * FROM shares ORDER BY node_id, user_id")
    else:
        rows = yield All("SELECT * FROM shares WHERE node_id = ? ORDER BY user_id", int(node_id))
    return [share_from_row(r) for r in rows]
