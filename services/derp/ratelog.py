"""Log lines that unauthenticated peers can trigger, at a bounded rate.

A refused handshake is worth one line to an operator, but anyone can open connections as fast
as the relay accepts them: so at most `burst` lines per `period` seconds, and the next line that
gets through says how many were left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio


class RateLimitedLog:
    def __init__(self, log: logging.Logger, *, burst: int = 10, period: float = 10.0,
                 clock: Callable[[], float] = trio.current_time):
        self._log = log
        self._burst = burst
        self._rate = burst / period
        self._tokens = float(burst)
        self._at: float | None = None
        self._clock = clock
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: Any) -> None:
        if not self._log.isEnabledFor(level):
            return
        now = self._clock()
        if self._at is not None:
            self._tokens = min(float(self._burst), self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return
        self._tokens -= 1.0
        if self.suppressed:
            msg += " (%d similar lines left out)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self._log.log(level, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)
