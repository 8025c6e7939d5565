"""Evaluation of a policy's `tests` and `sshTests` (filled in below)."""

from __future__ import annotations

from typing import Any


def run_policy_tests(compiled: Any) -> None:
    return None
