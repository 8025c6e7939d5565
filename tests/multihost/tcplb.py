"""A tiny round-robin TCP load balancer (a stand-in for a Kubernetes Service), for tests.

    python tcplb.py LISTEN_HOST:PORT BACKEND_HOST:PORT [BACKEND_HOST:PORT ...]

Each accepted connection goes to the next backend in turn; when a backend refuses or does not
answer within a second, the next one is tried, so a dead replica costs a client one reconnect and
no more. Bytes are copied both ways until either side closes. Prints `ready HOST:PORT` once it
listens; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import itertools
import signal
import sys

import trio

CONNECT_TIMEOUT = 1.0


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while True:
            data = await src.receive_some(65536)
            if not data:
                break
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        # half-close is not needed by HTTP/1.1 upgrade or h2 here: end the whole connection
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(dst)
            await trio.aclose_forcefully(src)


async def main(listen: str, backends: list[tuple[str, int]]) -> None:
    turn = itertools.cycle(range(len(backends)))
    stats = {"accepted": 0, "per_backend": [0] * len(backends), "failed": 0}

    async def handle(client: trio.SocketStream) -> None:
        stats["accepted"] += 1
        first = next(turn)
        for i in range(len(backends)):
            idx = (first + i) % len(backends)
            host, port = backends[idx]
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    upstream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError):
                continue
            stats["per_backend"][idx] += 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipe, client, upstream)
                nursery.start_soon(pipe, upstream, client)
            return
        stats["failed"] += 1
        await trio.aclose_forcefully(client)

    host, port = split(listen)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    print(f"ready {bound[0]}:{bound[1]}", flush=True)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, listeners)

            async def stop() -> None:
                async for _ in signals:
                    print(f"stats {stats}", flush=True)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], [split(a) for a in sys.argv[2:]])
