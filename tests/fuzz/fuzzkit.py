"""What the loopback fuzz tests share: the seed and the number of cases, malformed bytes, and
sending them on a fresh connection (the services they run against: conftest.py).

``FUZZ_SEED`` (environment) picks another seed; ``FUZZ_SCALE`` multiplies the number of cases.
"""

from __future__ import annotations

import os
import random

import trio

from trioscale.shared.net import tls as tlsutil

SEED = int(os.environ.get("FUZZ_SEED", "20261124"))
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
BASE = "fuzz.test"
WAIT = 0.25  # how long we listen for an answer before ending a case ourselves


def n_cases(n: int) -> int:
    return max(1, int(n * SCALE))


async def exchange(host: str, port: int, data: bytes | list[bytes], *, tls: bool = False,
                   wait: float = WAIT) -> bytes:
    """Send `data` (one chunk or several) on a fresh connection, read what comes back until EOF
    or `wait` seconds of silence, close. Bounded as a whole."""
    chunks = [data] if isinstance(data, bytes) else data
    got = bytearray()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        if tls:
            stream = trio.SSLStream(stream, tlsutil.client_context(verify=False), server_hostname="x",
                                    https_compatible=True)
        try:
            for c in chunks:
                await stream.send_all(c)
            while True:
                with trio.move_on_after(wait):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    got += chunk
                    continue
                break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
    return bytes(got)


async def in_batches(coros, size: int = 8) -> None:
    """Run case coroutines (zero-argument async callables) a few at a time."""
    for i in range(0, len(coros), size):
        async with trio.open_nursery() as n:
            for fn in coros[i:i + size]:
                n.start_soon(fn)


def garbage(rng: random.Random, lo: int = 0, hi: int = 300) -> bytes:
    return rng.randbytes(rng.randint(lo, hi))


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(4)
    if op == 0 and b:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b) + 1):]
    elif op == 2:  # insert garbage
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = rng.randbytes(rng.randint(1, 40))
    else:  # append garbage
        b += rng.randbytes(rng.randint(1, 200))
    return bytes(b)


async def drain_until_closed_or_quiet(stream, wait: float = WAIT) -> None:
    try:
        while True:
            with trio.move_on_after(wait):
                if not await stream.receive_some(65536):
                    return
                continue
            return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return
