"""What an operation yields to its store: an SQL request (One, All, Exec) or a change (Emit).

A store's driver loop (SqliteStore._drive, postgres._aio_drive) dispatches on these types; they
carry no behaviour of their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class _Query:
    """An SQL request yielded by an operation: `One("SELECT ...", a, b)`."""

    __slots__ = ("sql", "args")

    def __init__(self, sql: str, *args: Any) -> None:
        self.sql = sql
        self.args = args

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sql!r}, *{self.args!r})"


class One(_Query):
    """Fetch one row (or None)."""

    __slots__ = ()


class All(_Query):
    """Fetch all rows."""

    __slots__ = ()


class Exec(_Query):
    """Run a statement, no rows."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Emit:
    """Record a change: the store appends a change-log row in the same transaction (-> its seq)."""

    kind: str
    data: dict
