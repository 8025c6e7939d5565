"""Tailnet settings set through the API (`tailnet_settings`): one JSON text per name, replaced
whole in one statement (an upsert: two writers of different names never undo each other, and two
of one name end with the last). Setting one records `settings.set` so every replica picks it up."""

from __future__ import annotations

import json
from typing import Any

from trioscale.shared.store.ops.query import Emit, Exec, One
from trioscale.shared.store.rows import json_text


def op_get_setting(name: str):
    r = yield One("SELECT value FROM tailnet_settings WHERE name = ?", name)
    return None if r is None else json.loads(r["value"])


def op_set_setting(name: str, value: Any):
    yield Exec("INSERT INTO tailnet_settings (name, value) VALUES (?, ?)"
               " ON CONFLICT (name) DO UPDATE SET value = excluded.value", name, json_text(value))
    yield Emit("settings.set", {"name": name})
