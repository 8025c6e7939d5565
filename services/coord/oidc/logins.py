"""Logins under way, between the redirect to the provider and its callback: keyed by the OAuth
state, each taken at most once, dropped after `lifetime`, at most `limit` held (the oldest go first:
anyone can start a login, so nothing here may grow without bound)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


@dataclass(frozen=True)
class _Held(Generic[T]):
    value: T
    deadline: float


class PendingLogins(Generic[T]):
    def __init__(self, *, limit: int = 1024, lifetime: float = 600.0,
                 clock: Callable[[], float] = trio.current_time) -> None:
        if limit < 1 or lifetime <= 0:
            raise ValueError("PendingLogins needs a positive limit and lifetime")
        self.limit = limit
        self.lifetime = lifetime
        self._clock = clock
        self._held: OrderedDict[str, _Held[T]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._held)

    def put(self, state: str, value: T) -> None:
        self._expire()
        self._held.pop(state, None)
        while len(self._held) >= self.limit:
            self._held.popitem(last=False)
        self._held[state] = _Held(value, self._clock() + self.lifetime)

    def take(self, state: str) -> T | None:
        """The login started with `state`, removed (a state works once), or None when unknown or
        expired."""
        self._expire()
        held = self._held.pop(state, None)
        return None if held is None else held.value

    def peek(self, state: str) -> T | None:
        self._expire()
        held = self._held.get(state)
        return None if held is None else held.value

    def drop_where(self, predicate: Callable[[Any], bool]) -> int:
        self._expire()
        gone = [k for k, h in self._held.items() if predicate(h.value)]
        for k in gone:
            del self._held[k]
        return len(gone)

    def _expire(self) -> None:
        now = self._clock()
        # insertion order is deadline order (one lifetime for all): stop at the first live one
        while self._held:
            state, held = next(iter(self._held.items()))
            if held.deadline > now:
                break
            del self._held[state]
