"""The HTTP-01 listener (`tls_letsencrypt_listen`, port 80 in production): the key authorization
for ``GET /.well-known/acme-challenge/<token>`` while an ACME order waits for it; any other GET or
HEAD is sent to the same path over HTTPS on the ACME host name (308), anything else is 404.

One request per connection, a bounded head and a deadline: the CA and browsers need no more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import h11
import trio

from trioscale.shared.net.addr import format_sockaddr, split_host_port
from trioscale.shared.net.limits import ConnectionLimiter
from trioscale.shared.net.listen import listener_sockets, serve_stream_sockets

__all__ = ["serve_http01", "http01_address"]

log = logging.getLogger("trioscale.coord.acme")

_PREFIX = "/.well-known/acme-challenge/"
_MAX_HEAD = 8192
_DEADLINE = 10.0


def http01_address(listen: str) -> tuple[str, int]:
    """`tls_letsencrypt_listen` as Headscale writes it (``:http``, ``:80``, ``host:port``)."""
    host, _, port = listen.rpartition(":")
    if port in ("http", ""):
        listen = f"{host}:80"
    host, port_number = split_host_port(listen)
    return host.strip("[]"), port_number


def _answer(tokens: Mapping[str, str], hostname: str, method: bytes, target: bytes) -> tuple[int, list, bytes]:
    path = target.decode("ascii", "replace").split("?", 1)[0]
    if method in (b"GET", b"HEAD") and path.startswith(_PREFIX):
        key_authorization = tokens.get(path[len(_PREFIX):])
        if key_authorization is not None:
            log.info("ACME HTTP-01: answering a validation for %s", hostname)
            return 200, [("Content-Type", "text/plain")], key_authorization.encode("ascii")
        return 404, [("Content-Type", "text/plain")], b"no such challenge\n"
    if method in (b"GET", b"HEAD"):
        return 308, [("Location", f"https://{hostname}{target.decode('ascii', 'replace')}")], b""
    return 404, [("Content-Type", "text/plain")], b"not found\n"


async def _handle(tokens: Mapping[str, str], hostname: str, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    try:
        with trio.fail_after(_DEADLINE):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(_MAX_HEAD))
                    continue
                break
            if not isinstance(event, h11.Request):
                return
            status, headers, body = _answer(tokens, hostname, event.method, event.target)
            headers = headers + [("Content-Length", str(len(body))), ("Connection", "close")]
            out = conn.send(h11.Response(status_code=status, headers=headers))
            if event.method != b"HEAD" and body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
    except (h11.RemoteProtocolError, h11.LocalProtocolError, trio.TooSlowError, trio.BrokenResourceError,
            trio.ClosedResourceError, OSError) as exc:
        log.debug("HTTP-01 listener: connection dropped: %r", exc)


async def serve_http01(listen: str, tokens: Mapping[str, str], hostname: str, *,
                       task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve HTTP-01 answers from `tokens` on `listen` until cancelled; reports the bound address."""
    host, port = http01_address(listen)
    socks = listener_sockets(await trio.open_tcp_listeners(port, host=host or None))
    shown = format_sockaddr(socks[0].getsockname())
    log.info("ACME HTTP-01 listener on %s", shown)
    limiter = ConnectionLimiter("acme_http", 256, 32)

    async def handle(stream: Any) -> None:
        await _handle(tokens, hostname, stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_stream_sockets(handle, socks, limiter=limiter, log=log,
                                                                     task_status=task_status))
        task_status.started(shown)
