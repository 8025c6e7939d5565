"""Reading a Headscale database: every row of the tables an import needs, as plain dicts.

Headscale (v0.26 to v0.29; the layout is in its hscontrol/db/schema.sql) keeps one table per
record: `users`, `nodes`, `pre_auth_keys`, `api_keys`, `policies`. Releases differ in a few
columns (v0.28 renamed `forced_tags` to `tags` and began storing pre-auth keys as a prefix and a
bcrypt hash), so the reader checks the columns it needs and refuses a database that lacks them,
naming what is missing, rather than guessing. It only reads: the database is opened read-only.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trioscale.shared.store.postgres import read_tables

__all__ = ["HeadscaleData", "UnknownSchema", "read_sqlite", "read_postgres", "check_schema", "KNOWN_RELEASES"]

KNOWN_RELEASES = "v0.26 to v0.29"

#: the columns an import cannot do without, per table; `tags` may be the older `forced_tags`
REQUIRED: dict[str, frozenset[str]] = {
    "users": frozenset({"id", "name"}),
    "nodes": frozenset(
        {"id", "machine_key", "node_key", "disco_key", "endpoints", "host_info", "ipv4", "ipv6",
         "hostname", "given_name", "user_id", "expiry", "approved_routes"}
    ),
    "pre_auth_keys": frozenset({"id", "user_id", "reusable", "ephemeral", "used", "expiration"}),
    "api_keys": frozenset({"id", "prefix", "hash", "expiration"}),
    "policies": frozenset({"id", "data"}),
}


class UnknownSchema(Exception):
    """The database is not one of the Headscale layouts the import knows; the message says why."""


@dataclass
class HeadscaleData:
    """The source tables as lists of rows (column name -> value as the driver gave it)."""

    version: str = ""  # database_versions (v0.29 and later), else ""
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: the nodes table's tag column: "tags" (v0.28+) or "forced_tags" (before)
    tag_column: str = "tags"

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self.tables.get(table, [])


def check_schema(columns: dict[str, set[str]]) -> str:
    """The nodes table's tag column, or UnknownSchema naming what is missing."""
    if "migrations" not in columns or "nodes" not in columns:
        raise UnknownSchema("not a Headscale database (it has no migrations or nodes table)")
    if "routes" in columns and "approved_routes" not in columns["nodes"]:
        raise UnknownSchema(
            "a Headscale database from before v0.26 (routes in their own table): start Headscale"
            f" v0.29 on it once so it migrates the database, then import (known: {KNOWN_RELEASES})"
        )
    problems = []
    for table, needed in REQUIRED.items():
        if table not in columns:
            problems.append(f"no table {table}")
            continue
        missing = sorted(needed - columns[table])
        if missing:
            problems.append(f"table {table} lacks {', '.join(missing)}")
    nodes = columns["nodes"]
    tag_column = "tags" if "tags" in nodes else "forced_tags" if "forced_tags" in nodes else ""
    if not tag_column:
        problems.append("table nodes lacks tags (or forced_tags)")
    if problems:
        raise UnknownSchema(
            f"not a Headscale database layout this import knows ({KNOWN_RELEASES}): " + "; ".join(problems)
        )
    return tag_column


def read_sqlite(path: str | Path) -> HeadscaleData:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such database file")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise UnknownSchema(f"{p}: cannot open as SQLite: {exc}") from None
    conn.row_factory = sqlite3.Row
    try:
        try:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        except sqlite3.DatabaseError as exc:
            raise UnknownSchema(f"{p}: not an SQLite database ({exc})") from None
        columns = {n: {r[1] for r in conn.execute(f'PRAGMA table_info("{n}")')} for n in names}
        data = HeadscaleData(tag_column=check_schema(columns))
        for table in REQUIRED:
            data.tables[table] = [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
        if "database_versions" in columns:
            r = conn.execute("SELECT version FROM database_versions ORDER BY id DESC LIMIT 1").fetchone()
            data.version = r[0] if r else ""
        return data
    finally:
        conn.close()


def read_postgres(dsn: str) -> HeadscaleData:
    """Read a Headscale database on PostgreSQL (the store's reader: asyncpg stays in the store)."""
    data = HeadscaleData()

    def choose(columns: dict[str, set[str]]) -> list[str]:
        data.tag_column = check_schema(columns)
        return [*REQUIRED, *(["database_versions"] if "database_versions" in columns else [])]

    tables = read_tables(dsn, choose)
    versions = tables.pop("database_versions", [])
    data.tables = tables
    data.version = (versions[-1].get("version") or "") if versions else ""
    return data
