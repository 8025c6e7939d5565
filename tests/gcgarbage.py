"""What a piece of async work leaves to the cyclic garbage collector (tests that a server frees
its closed connections by reference counting, not in a full collection that pauses the loop)."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable

import trio.testing


async def cyclic_garbage_of(work: Callable[[int], Awaitable[None]], times: int = 5) -> list[object]:
    """Run `work(0)` once to warm caches and lazy imports, then `work(1..times)` with the collector
    off; return the objects only the collector would have freed. Every task is left blocked
    (the server has finished with what the work did) before each look."""
    await work(0)
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    gc.disable()
    try:
        for i in range(1, times + 1):
            await work(i)
        await trio.testing.wait_all_tasks_blocked()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
