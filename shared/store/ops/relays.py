"""DERP relays as they announce themselves: upsert on every heartbeat, list, delete.

A heartbeat that changes nothing but the heartbeat time records no change, so a fleet of relays
announcing themselves costs no change-log rows.
"""

from __future__ import annotations

from trioscale.shared.model import DerpRelay
from trioscale.shared.store.base import NotFound
from trioscale.shared.store.ops.query import All, Emit, Exec, One
from trioscale.shared.store.rows import RELAY_COLUMNS, relay_from_row, relay_values


def op_upsert_relay(relay: DerpRelay):
    values = relay_values(relay)
    r = yield One("SELECT * FROM derp_relays WHERE region_id = ? AND name = ?", values["region_id"], values["name"])
    if r is not None:
        old = relay_values(relay_from_row(r))
        changed = sorted(c for c in RELAY_COLUMNS if c != "heartbeat_at" and old[c] != values[c])
        if not changed:
            if old["heartbeat_at"] != values["heartbeat_at"]:
                yield Exec(
                    "UPDATE derp_relays SET heartbeat_at = ? WHERE region_id = ? AND name = ?",
                    values["heartbeat_at"],
                    values["region_id"],
                    values["name"],
                )
            return relay_from_row({**values})
        sets = ", ".join(f"{c} = ?" for c in RELAY_COLUMNS[2:])
        yield Exec(
            f"UPDATE derp_relays SET {sets} WHERE region_id = ? AND name = ?",
            *(values[c] for c in RELAY_COLUMNS[2:]),
            values["region_id"],
            values["name"],
        )
    else:
        changed = ["new"]
        cols = ", ".join(RELAY_COLUMNS)
        marks = ", ".join("?" for _ in RELAY_COLUMNS)
        yield Exec(f"INSERT INTO derp_relays ({cols}) VALUES ({marks})", *values.values())
    yield Emit("relay.updated", {"region_id": values["region_id"], "name": values["name"], "fields": changed})
    return relay_from_row({**values})


def op_list_relays():
    return [relay_from_row(r) for r in (yield All("SELECT * FROM derp_relays ORDER BY region_id, name"))]


def op_delete_relay(region_id: int, name: str):
    r = yield One(
        "DELETE FROM derp_relays WHERE region_id = ? AND name = ? RETURNING region_id", int(region_id), name
    )
    if r is None:
        raise NotFound(f'relay "{name}" in region {region_id} not found')
    yield Emit("relay.deleted", {"region_id": int(region_id), "name": name})
