"""Listening TCP (and unix) sockets with connection caps and an accept loop that outlives
descriptor exhaustion.

`accept_loop` works on a non-blocking stdlib socket and calls ``handler(conn, peer)`` for each
connection the `ConnectionLimiter` admits; a connection over a cap is reset at once (RST, so the
server keeps no TIME_WAIT for it), counted, and reported in one log line per 10 s at most. When
accept(2) fails for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) the loop waits, longer each
time up to a cap, instead of spinning on a listener that stays readable, and says so in one
warning per minute at most (no traceback): connections that end free descriptors, and the loop
picks up where it left off.

`serve_stream_sockets` runs the same loop for handlers that take a `trio.SocketStream` (the
shape `trio.serve_listeners` calls).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio

from .limits import ConnectionLimiter, source_key
from .rawstream import close_at_once

__all__ = [
    "RESOURCE_ERRNOS",
    "AcceptBackoff",
    "accept_loop",
    "listener_sockets",
    "serve_stream_sockets",
    "stream_handler",
]

#: accept(2) failing for want of descriptors or kernel memory: wait, then try again
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: the connection went away between SYN and accept, or a firewall said no: take the next one
_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET, errno.EINTR})

_LINGER_RESET = struct.pack("ii", 1, 0)

_log = logging.getLogger("trioscale.net")


class AcceptBackoff:
    """The wait after each failed accept in a row: doubles from `first` up to `cap`."""

    __slots__ = ("first", "cap", "delay", "failures", "since")

    def __init__(self, first: float = 0.05, cap: float = 1.0):
        self.first = first
        self.cap = cap
        self.delay = 0.0
        self.failures = 0
        self.since = 0.0

    def fail(self, now: float) -> float:
        if self.failures == 0:
            self.since = now
        self.failures += 1
        self.delay = self.first if self.delay == 0.0 else min(self.cap, self.delay * 2)
        return self.delay

    def succeed(self) -> int:
        """Reset; returns how many accepts had failed in a row."""
        failures, self.failures, self.delay = self.failures, 0, 0.0
        return failures


#: A peer that vanished without a FIN or RST (its link cut, its host gone) must not hold its
#: connection, and with it a node's "online" state, for the kernel's default of about 15 minutes:
#: probe an idle connection after 30 s (3 probes 10 s apart) and give up on data left
#: unacknowledged for 45 s. A map stream carries something at least every minute (a keepalive
#: after 50-59 s without other news), so a dead client is seen within about two.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3
USER_TIMEOUT_MS = 45_000


def dead_peer_detection(conn: socket.socket) -> None:
    """TCP keepalive probes and a user timeout on `conn` (Linux; skipped where unsupported)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
        option = getattr(socket, name, None)
        if option is not None:
            conn.setsockopt(socket.IPPROTO_TCP, option, value)


def _reset_close(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    conn.close()


async def accept_loop(
    sock: socket.socket,
    handler: Callable[[socket.socket, Any], Awaitable[None]],
    nursery: trio.Nursery,
    *,
    limiter: ConnectionLimiter,
    log: logging.Logger | None = None,
    backoff_cap: float = 1.0,
) -> None:
    """Accept on `sock` (non-blocking, listening) until cancelled, then close it.

    Each admitted connection (non-blocking, TCP_NODELAY on TCP) runs ``handler(conn, peer)`` in
    `nursery`; its slot is released when the handler returns, and `conn` is closed if the handler
    left it open.
    """
    log = log or _log
    name = limiter.name
    wait_readable = trio.lowlevel.wait_readable
    checkpoint = trio.lowlevel.checkpoint
    tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
    rejects, shortages, recoveries = limiter.log_rejects, limiter.log_shortage, limiter.log_recovery
    backoff = AcceptBackoff(cap=backoff_cap)
    try:
        while True:
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                await wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    now = trio.current_time()
                    delay = backoff.fail(now)
                    held = shortages.ready(now)
                    if held is not None:
                        log.warning(
                            "%s: cannot accept connections: %s (%s); waiting up to %gs between tries%s",
                            name,
                            os.strerror(exc.errno),
                            errno.errorcode.get(exc.errno, exc.errno),
                            backoff.cap,
                            f" ({held} more failures since the last report)" if held else "",
                        )
                    await trio.sleep(delay)
                    continue
                if exc.errno in _SKIP_ERRNOS:
                    await checkpoint()
                    continue
                raise
            if backoff.failures:
                now = trio.current_time()
                failed_for = now - backoff.since
                backoff.succeed()
                if recoveries.ready(now) is not None:
                    log.info("%s: accepting connections again (after %.1fs short of resources)", name, failed_for)
            host = peer[0] if tcp and isinstance(peer, tuple) else ""
            source = source_key(host)
            if not limiter.try_acquire(source):
                _reset_close(conn)
                held = rejects.ready(trio.current_time())
                if held is not None:
                    if limiter.active >= limiter.max_connections:
                        why = f"all {limiter.max_connections} connections in use"
                    else:
                        why = f"{source or 'local'} holds {limiter.max_per_source}, the per-source cap"
                    log.warning(
                        "%s: connection over the cap closed (%s)%s",
                        name,
                        why,
                        f"; {held} more closed since the last report" if held else "",
                    )
                await checkpoint()
                continue
            try:
                conn.setblocking(False)
                if tcp:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    dead_peer_detection(conn)
            except OSError:
                pass
            nursery.start_soon(_run_handler, handler, conn, peer, limiter, source)
            await checkpoint()
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def _run_handler(
    handler: Callable[[socket.socket, Any], Awaitable[None]],
    conn: socket.socket,
    peer: Any,
    limiter: ConnectionLimiter,
    source: str,
) -> None:
    try:
        await handler(conn, peer)
    finally:
        limiter.release(source)
        if conn.fileno() != -1:
            trio.lowlevel.notify_closing(conn)
            conn.close()


def _socket_stream(conn: socket.socket) -> trio.abc.Stream:
    return trio.SocketStream(trio.socket.from_stdlib_socket(conn))


def stream_handler(
    handler: Callable[[Any], Awaitable[None]],
    make_stream: Callable[[socket.socket], trio.abc.Stream] = _socket_stream,
) -> Callable[[socket.socket, Any], Awaitable[None]]:
    """Adapt a ``handler(stream)`` (as `trio.serve_listeners` calls it) to `accept_loop`; the
    stream is a `trio.SocketStream` unless `make_stream` builds another (e.g. a `RawStream`)."""

    async def run(conn: socket.socket, peer: Any) -> None:
        stream = make_stream(conn)
        try:
            await handler(stream)
        finally:
            await close_at_once(stream)

    return run


def listener_sockets(listeners: Sequence[Any]) -> list[socket.socket]:
    """Take the stdlib sockets out of `trio.SocketListener`s (e.g. from `trio.open_tcp_listeners`)."""
    out: list[socket.socket] = []
    for listener in listeners:
        tsock = listener.socket
        out.append(socket.socket(tsock.family, tsock.type, tsock.proto, fileno=tsock.detach()))
    for sock in out:
        sock.setblocking(False)
    return out


async def serve_stream_sockets(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    socks: Sequence[socket.socket],
    *,
    limiter: ConnectionLimiter,
    log: logging.Logger | None = None,
    make_stream: Callable[[socket.socket], trio.abc.Stream] = _socket_stream,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`trio.serve_listeners` for listening stdlib sockets, under `limiter`'s caps (`make_stream`:
    see `stream_handler`)."""
    run = stream_handler(handler, make_stream)
    async with trio.open_nursery() as nursery:
        for sock in socks:
            sock.setblocking(False)
            nursery.start_soon(partial(accept_loop, sock, run, nursery, limiter=limiter, log=log))
        task_status.started()
