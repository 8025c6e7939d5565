"""Serving the admin API: the unix socket (trusted) and, when admin.listen_addr is set, TCP with API keys."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.statsd import StatsdLogger
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from trioscale.shared.net.addr import split_host_port
from trioscale.shared.net.limits import ConnectionLimiter, standalone_limiter
from trioscale.shared.net.listen import serve_stream_sockets
from trioscale.shared.net.tls import CertFiles
from trioscale.shared.net.unixpath import short_unix_path

from ..console import create_console_app, mount_console
from ..options import AdminOptions
from .api import api_key_accepted
from .app import create_admin_app
from .oncontrol import API_PREFIX, AsgiOnControl

__all__ = ["serve_admin"]


def _bind_unix(path: Path, mode: int) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with short_unix_path(path) as p:
                probe.connect(p)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise RuntimeError(f"another server is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        with short_unix_path(path) as p:
            sock.bind(p)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _bind_tcp(addr: str) -> tuple[socket.socket, str]:
    host, port = split_host_port(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise RuntimeError(f"admin.listen_addr {addr}: address already in use") from None
        raise RuntimeError(f"admin.listen_addr {addr}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    real = sock.getsockname()
    shown = f"[{real[0]}]:{real[1]}" if family == socket.AF_INET6 else f"{real[0]}:{real[1]}"
    return sock, shown


def _hypercorn_config(log: logging.Logger) -> HypercornConfig:
    hc = HypercornConfig()
    hc.accesslog = None  # request lines and headers never reach a log
    hc.errorlog = log
    hc.include_server_header = False
    hc.graceful_timeout = 2.0
    hc.keep_alive_timeout = 30
    hc.ssl_handshake_timeout = 10
    return hc


#: hypercorn speaks both; browsers and API clients pick
_ADMIN_ALPN = ("h2", "http/1.1")


async def _serve_app(
    app: QuartTrio,
    sock: socket.socket,
    log: logging.Logger,
    *,
    limiter: ConnectionLimiter,
    tls: CertFiles | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's trio worker (`worker_serve`) with our accept loop in place of its own: that one
    wraps the socket itself, so it could neither cap connections nor survive EMFILE quietly."""
    hc = _hypercorn_config(log)
    hc.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, hc.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, hc, lifespan_state)
    context = WorkerContext(None)

    async def handle(stream: trio.SocketStream) -> None:
        if tls is not None:
            ctx = tls.context(_ADMIN_ALPN)
            if ctx is None:
                return  # no certificate yet (ACME's first one is on its way)
            stream = trio.SSLStream(stream, ctx, server_side=True)  # TCPServer runs the handshake
        await TCPServer(wrapped, hc, context, ConnectionState(lifespan_state.copy()), stream)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        await serve_stream_sockets(handle, [sock], limiter=limiter, log=log, task_status=task_status)


async def serve_admin(
    options: AdminOptions,
    store: Any,
    *,
    coordinator: Any | None,
    limiter: ConnectionLimiter | None = None,
    unix_limiter: ConnectionLimiter | None = None,
    mount_api: Callable[[AsgiOnControl], None] | None = None,
    tls: CertFiles | None = None,
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin API on the unix socket (+ TCP with API keys when admin.listen_addr is set).

    `coordinator` is this process's (None: the answers do not wait for one); `limiter` and
    `unix_limiter` cap the TCP listener and the unix socket (default: listeners of their own);
    `mount_api` puts the API-key app on the control listener too (Headscale serves /api/v1 on server_url);
    `tls`: the certificate the TCP listener serves (default: `options.tls_cert_path`'s, if set; the
    coordinator hands over its own, ACME's included).
    Reports {"admin_unix": path, "admin_tcp": "host:port"?}. Removes the socket file on the way out.
    """
    log = logging.getLogger("trioscale.admin")
    http_log = logging.getLogger("trioscale.admin.http")
    path = options.unix_socket
    unix_sock = _bind_unix(path, options.unix_socket_mode)
    inode = os.stat(path).st_ino
    addresses: dict[str, str] = {"admin_unix": str(path)}
    tcp_sock = None
    try:
        if options.listen_addr:
            if tls is None and options.tls_cert_path is not None and options.tls_key_path is not None:
                tls = CertFiles(options.tls_cert_path, options.tls_key_path)
            tcp_sock, shown = _bind_tcp(options.listen_addr)
            addresses["admin_tcp"] = shown
        async with trio.open_nursery() as nursery:
            local_app = create_admin_app(options, store, coordinator=coordinator, require_auth=False)
            await nursery.start(
                partial(_serve_app, limiter=unix_limiter or standalone_limiter("admin_unix")), local_app, unix_sock, http_log
            )
            log.info("admin API (local, no auth) on unix socket %s", path)
            remote_app = create_admin_app(options, store, coordinator=coordinator, require_auth=True)
            if mount_api is not None:
                mount_api(AsgiOnControl(remote_app))
                log.info("admin API (API keys required) on the control listener under %s", API_PREFIX)
            if tcp_sock is not None:
                tcp_app: Any = remote_app
                if options.console is not None:
                    tcp_app = mount_console(remote_app, create_console_app(
                        options, store, coordinator=coordinator, key_check=api_key_accepted,
                        api_app=create_admin_app(options, store, coordinator=coordinator, require_auth=False)))
                    log.info("web console on the admin listener under /console/")
                await nursery.start(
                    partial(_serve_app, limiter=limiter or standalone_limiter("admin"), tls=tls), tcp_app, tcp_sock,
                    http_log,
                )
                log.info("admin API (API keys required) on %s://%s", "https" if tls else "http", addresses["admin_tcp"])
            task_status.started(addresses)
    finally:
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass
        unix_sock.close()
        if tcp_sock is not None:
            tcp_sock.close()

