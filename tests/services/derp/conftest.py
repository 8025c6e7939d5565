"""Fixtures for the DERP relay tests (helpers live in derphelpers.py)."""

from __future__ import annotations

from typing import Any

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from derphelpers import RunningRelay, start_relay  # noqa: E402


@pytest.fixture
def relay_factory(nursery, tmp_path):
    """`await relay_factory(verify=..., **serve_kwargs) -> RunningRelay` (stopped with the test)."""

    async def factory(**kwargs: Any) -> RunningRelay:
        return await start_relay(nursery, tmp_path, **kwargs)

    return factory
