"""The operations listener every process serves on `metrics_listen_addr`: `/metrics`, `/health`, `/ready`.

`/health` answers 200 as long as the process's event loop runs (the answer is written by that very
loop, so a wedged loop shows as a probe timeout). `/ready` runs every readiness check and answers
200 only when all pass; otherwise 503 with a JSON body naming each check that did not pass and why,
so an operator reading a failed probe knows where to look. `/metrics` is the Prometheus text
exposition of the process's registry, after the refresh hooks have updated values only an
asynchronous call can read (the change log's position, for one).

The server is deliberately tiny HTTP/1.1 (one request per connection): probes and scrapers send
nothing else, and it keeps this listener free of the frameworks whose failure it should report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .limits import ConnectionLimiter, standalone_limiter
from .listen import listener_sockets, serve_stream_sockets

__all__ = ["Readiness", "Check", "OpsEndpoints", "serve_ops"]

log = logging.getLogger("trioscale.ops")

#: an async check: None when ready, else a one-line reason
Check = Callable[[], Awaitable[str | None]]

#: how long one readiness check may take before it counts as not ready (a database that hangs)
CHECK_TIMEOUT = 2.0
#: a probe's request head larger than this is refused (probes send a line and a few headers)
MAX_REQUEST_HEAD = 8192
#: a client that has not sent its request head by then is dropped
REQUEST_TIMEOUT = 5.0


class Readiness:
    """Named readiness checks; a process is ready when every one of them passes."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def add_flag(self, name: str, reason: str) -> Callable[[], None]:
        """A check that fails with `reason` until the returned function is called (listeners bound)."""
        done = False

        async def check() -> str | None:
            return None if done else reason

        def mark() -> None:
            nonlocal done
            done = True

        self.add(name, check)
        return mark

    async def failures(self, timeout: float = CHECK_TIMEOUT) -> dict[str, str]:
        """Run every check at once, each bounded by `timeout`; the ones that did not pass, by name."""
        out: dict[str, str] = {}

        async def run(name: str, check: Check) -> None:
            reason: str | None = f"no answer within {timeout:g}s"
            with trio.move_on_after(timeout):
                try:
                    reason = await check()
                except Exception as exc:  # a check that fails is an answer: not ready, and why
                    reason = f"{type(exc).__name__}: {exc}".strip()
            if reason is not None:
                out[name] = " ".join(str(reason).split())[:300]

        async with trio.open_nursery() as nursery:
            for name, check in self._checks.items():
                nursery.start_soon(run, name, check)
        return dict(sorted(out.items()))


class OpsEndpoints:
    """What the listener answers: the registry to expose, the readiness checks, refresh hooks."""

    def __init__(self, registry: CollectorRegistry, readiness: Readiness) -> None:
        self.registry = registry
        self.readiness = readiness
        self._refresh: list[Callable[[], Awaitable[None]]] = []

    def on_scrape(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._refresh.append(hook)

    async def answer(self, method: bytes, path: bytes) -> tuple[bytes, bytes, bytes]:
        """(status line, content type, body) for one request."""
        route = path.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return b"405 Method Not Allowed", b"application/json", b'{"error":"method not allowed"}\n'
        if route in (b"/health", b"/healthz"):
            return b"200 OK", b"application/json", b'{"status":"pass"}\n'
        if route in (b"/ready", b"/readyz"):
            failed = await self.readiness.failures()
            if failed:
                body = json.dumps({"status": "fail", "not_ready": failed}).encode() + b"\n"
                return b"503 Service Unavailable", b"application/json", body
            return b"200 OK", b"application/json", b'{"status":"pass"}\n'
        if route == b"/metrics":
            for hook in self._refresh:
                with trio.move_on_after(CHECK_TIMEOUT):
                    try:
                        await hook()
                    except Exception as exc:  # stale values beat no scrape at all
                        log.debug("metrics refresh failed: %s", exc)
            return b"200 OK", CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry)
        return b"404 Not Found", b"application/json", b'{"error":"not found"}\n'


async def _handle(endpoints: OpsEndpoints, stream: trio.SocketStream) -> None:
    try:
        head = b""
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_REQUEST_HEAD:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                head += chunk
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            status, ctype, body = b"400 Bad Request", b"application/json", b'{"error":"bad request"}\n'
            method = b"GET"
        else:
            method = parts[0]
            status, ctype, body = await endpoints.answer(method, parts[1])
        out = (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        await stream.send_all(out if method == b"HEAD" else out + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


async def serve_ops(
    host: str,
    port: int,
    endpoints: OpsEndpoints,
    *,
    limiter: ConnectionLimiter | None = None,
    key: str = "metrics_listen_addr",
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `endpoints` on host:port until cancelled; reports {"metrics": "host:port"} when bound.
    A port that cannot be bound fails with one line naming `key` (the setting to change)."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        raise RuntimeError(f"{key} {host}:{port}: {exc.strerror or exc}") from None
    sockname = listeners[0].socket.getsockname()
    shown = f"[{sockname[0]}]:{sockname[1]}" if ":" in sockname[0] else f"{sockname[0]}:{sockname[1]}"
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(
            serve_stream_sockets, partial(_handle, endpoints), listener_sockets(listeners),
            limiter=limiter if limiter is not None else standalone_limiter("health"), log=log,
        ))
        log.info("metrics, health and readiness on http://%s/metrics, /health, /ready", shown)
        task_status.started({"metrics": shown})
