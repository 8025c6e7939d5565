"""Nodes: register, look up, update and delete, with the rules a node's row must keep.

A node's unique columns (machine key, node key, name, addresses) are checked before writing, so a
conflict comes back with a message naming the value that is taken (a constraint error names only
the column). An update that changes nothing records no change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from trioscale.shared.model import Node
from trioscale.shared.store.base import Conflict, NotFound
from trioscale.shared.store.ops.limits import check_node_sizes
from trioscale.shared.store.ops.preauth_keys import emit_key_used, use_auth_key
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.ops.users import need_user
from trioscale.shared.store.rows import NODE_FIELDS, node_as_row, node_from_row, normalize_hostinfo, normalize_node_value

#: what update_node may set: a node's machine key is its identity
NODE_UPDATABLE: frozenset[str] = frozenset(NODE_FIELDS) - {"machine_key"}
#: unique node columns, in the order conflicts are reported
NODE_UNIQUE = ("machine_key", "node_key", "given_name", "ipv4", "ipv6")
#: spare address pairs a creation considers (the rest are ignored): each is two query parameters
MAX_SPARE_ADDRESSES = 16


def op_get_node(node_id: int):
    r = yield One("SELECT * FROM nodes WHERE id = ?", int(node_id))
    return None if r is None else node_from_row(r)


def op_get_node_by(column: str, key: bytes):
    assert column in ("machine_key", "node_key")
    r = yield One(f"SELECT * FROM nodes WHERE {column} = ?", bytes(key))
    return None if r is None else node_from_row(r)


def op_list_nodes(user_id: int | None):
    if user_id is None:
        rows = yield All("SELECT * FROM nodes ORDER BY id")
    else:
        rows = yield All("SELECT * FROM nodes WHERE user_id = ? ORDER BY id", int(user_id))
    return [node_from_row(r) for r in rows]


def op_node_holdings():
    """The addresses and names nodes hold: three columns, not whole nodes (an address lost to
    another replica is retried with these, and decoding every node's row was O(N) per retry)."""
    rows = yield All("SELECT ipv4, ipv6, given_name FROM nodes")
    addrs = {a for r in rows for a in (r["ipv4"], r["ipv6"]) if a}
    return addrs, {r["given_name"] for r in rows}


def op_nodes_holding(ipv4: str | None, ipv6: str | None, given_name: str):
    """The nodes holding any of these addresses or this name (each column is unique)."""
    rows = yield All("SELECT * FROM nodes WHERE ipv4 = ? OR ipv6 = ? OR given_name = ? ORDER BY id",
                     ipv4, ipv6, given_name)
    return [node_from_row(r) for r in rows]


def need_node(node_id: int):
    """The node `node_id`, or NotFound (for operations on records that name a node)."""
    r = yield One("SELECT * FROM nodes WHERE id = ?", int(node_id))
    if r is None:
        raise NotFound(f"node {node_id} not found")
    return node_from_row(r)


def _node_value(name: str, v: Any) -> Any:
    if name == "hostinfo":
        return normalize_hostinfo(v)
    return normalize_node_value(name, v)


def node_conflict_message(column: str, node: Node | Mapping[str, Any]) -> str:
    get = (lambda k: node.get(k)) if isinstance(node, Mapping) else (lambda k: getattr(node, k))
    if column == "machine_key":
        return "a node with this machine key is already registered"
    if column == "node_key":
        return "a node with this node key is already registered"
    if column == "given_name":
        return f'node name "{get("given_name")}" is already taken'
    if column in ("ipv4", "ipv6"):
        return f"address {get(column)} is already assigned to another node"
    return "node conflicts with an existing node"


def _check_node_unique(values: dict[str, Any], columns: Iterable[str], node_id: int | None,
                       spare_addresses: Sequence[tuple[str | None, str | None]] = ()):
    # one query for every column, not one each: over PostgreSQL each is a round trip, and a
    # registration checks five. The message names the first column in NODE_UNIQUE's order.
    cols = [c for c in NODE_UNIQUE if c in columns and values.get(c) is not None]
    if not cols:
        return
    where = [f"{c} = ?" for c in cols]
    args = [values[c] for c in cols]
    pairs = [(values.get("ipv4"), values.get("ipv6"))]
    for v4, v6 in spare_addresses[:MAX_SPARE_ADDRESSES]:
        pairs.append((_node_value("ipv4", v4), _node_value("ipv6", v6)))
    if len(pairs) > 1:  # the spares' holders too, in the same query
        for col, i in (("ipv4", 0), ("ipv6", 1)):
            spares = [p[i] for p in pairs[1:] if p[i] is not None]
            if spares:
                where.append(f"{col} IN ({', '.join('?' for _ in spares)})")
                args += spares
    rows = yield All(f"SELECT id, {', '.join(cols)} FROM nodes WHERE " + " OR ".join(where), *args)
    if len(pairs) > 1:
        held = {r[c] for r in rows for c in ("ipv4", "ipv6") if c in cols and int(r["id"]) != node_id} - {None}
        free = next((p for p in pairs if p[0] not in held and p[1] not in held), None)
        if free is not None:
            values["ipv4"], values["ipv6"] = free
    for col in cols:
        if any(r[col] == values[col] and int(r["id"]) != node_id for r in rows):
            raise Conflict(node_conflict_message(col, values))


def op_create_node(node: Node, now: datetime, spare_addresses: Sequence[tuple[str | None, str | None]] = ()):
    """`spare_addresses`: (ipv4, ipv6) pairs to give the node instead of its own, the first of
    which no node holds, when another holds one of its own. Replicas allocating at once pick the
    same lowest free address; taking the next one here, in the same transaction, spares the loser
    a failed write and a retry."""
    values = {name: _node_value(name, getattr(node, name)) for name in NODE_FIELDS}
    if values["created_at"] is None:
        values["created_at"] = now
    check_node_sizes(values)
    yield from need_user(values["user_id"])
    key = None
    if values["auth_key_id"] is not None:
        key = yield from use_auth_key(values["auth_key_id"])
    yield from _check_node_unique(values, NODE_UNIQUE, None, spare_addresses)
    cols = ", ".join(NODE_FIELDS)
    marks = ", ".join("?" for _ in NODE_FIELDS)
    r = yield One(f"INSERT INTO nodes ({cols}) VALUES ({marks}) RETURNING *", *values.values())
    created = node_from_row(r)
    yield Emit(
        "node.created",
        {"id": created.id, "user_id": created.user_id, "node_key": _hex(created.node_key), "node": node_as_row(created)},
    )
    yield from emit_key_used(key)
    return created


def op_update_node(node_id: int, fields: Mapping[str, Any]):
    bad = sorted(set(fields) - NODE_UPDATABLE)
    if bad:
        raise ValueError(f"update_node cannot set {', '.join(bad)}")
    current = yield from need_node(node_id)
    new = {name: _node_value(name, v) for name, v in fields.items()}
    check_node_sizes(new)
    key = None
    if new.get("auth_key_id") is not None:
        key = yield from use_auth_key(new["auth_key_id"])
    changed = sorted(name for name, v in new.items() if getattr(current, name) != v)
    if not changed:
        yield from emit_key_used(key)
        return current
    if "user_id" in changed:
        yield from need_user(new["user_id"])
    yield from _check_node_unique(new, changed, current.id)
    sets = ", ".join(f"{name} = ?" for name in changed)
    r = yield One(f"UPDATE nodes SET {sets} WHERE id = ? RETURNING *", *(new[n] for n in changed), current.id)
    updated = node_from_row(r)
    yield Emit("node.updated", {"id": updated.id, "user_id": updated.user_id, "fields": changed,
                                "node": node_as_row(updated)})
    yield from emit_key_used(key)
    return updated


def op_delete_node(node_id: int):
    node = yield from need_node(node_id)
    for s in (yield All("SELECT user_id FROM shares WHERE node_id = ? ORDER BY user_id", node.id)):
        yield Exec("DELETE FROM shares WHERE node_id = ? AND user_id = ?", node.id, s["user_id"])
        yield Emit("share.deleted", {"node_id": node.id, "user_id": int(s["user_id"])})
    yield Exec("DELETE FROM presence WHERE node_id = ?", node.id)  # node.deleted implies offline
    yield Exec("DELETE FROM nodes WHERE id = ?", node.id)
    yield Emit(
        "node.deleted",
        {
            "id": node.id,
            "user_id": node.user_id,
            "node_key": _hex(node.node_key),
            "machine_key": _hex(node.machine_key),
            "given_name": node.given_name,
            "ipv4": node.ipv4,
            "ipv6": node.ipv6,
            "tags": list(node.tags),
        },
    )


def _hex(b: bytes | None) -> str | None:
    return None if b is None else bytes(b).hex()
