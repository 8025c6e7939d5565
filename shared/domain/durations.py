"""Durations as people write them (``30s``, ``5m``, ``1h30m``, ``90d``, ``2y``, or a number of seconds):
the configuration file and the admin API (key and node expirations) read them the same way."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

__all__ = ["MAX_DURATION", "parse_duration"]

#: Headscale's (Prometheus') units too: a year is 365 days
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")

#: the longest duration accepted anywhere: beyond it a number is a typo or an attack, and
#: `now + duration` must still be a datetime
MAX_DURATION = timedelta(days=36500)


def _bounded(seconds: float, value: Any) -> timedelta:
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number, got {_cut(value)}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"a duration is at most 100 years (36500d), got {_cut(value)}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {_cut(value)}")
    return timedelta(seconds=seconds)


def _cut(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python will print
        return "a number too large to show"
    return text if len(text) <= 80 else text[:60] + "…"


def parse_duration(value: Any) -> timedelta:
    """'30s', '5m', '1h', '90d', '2y', '1h30m', '0', or a number of seconds, at most `MAX_DURATION`.
    ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 90d, got {value!r}")
    if isinstance(value, timedelta):
        return _bounded(value.total_seconds(), value)
    if isinstance(value, (int, float)):
        try:
            return _bounded(float(value), value)
        except OverflowError:  # an int too large for a float
            raise ValueError(f"a duration is at most 100 years (36500d), got {_cut(value)}") from None
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 90d, got {_cut(value)}")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _bounded(float(text), value)
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 90d, got {_cut(value)}")
    return _bounded(total, value)
