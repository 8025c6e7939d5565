"""Process runners: `trioscale serve` (everything) and `trioscale coord|derp|stun|dns` (one each).

Services start in a fixed order inside one nursery: stun, derp (so the relay registers with its
real ports), coord (+ the admin API), dns. Each is handed what it needs and nothing else: its typed
options (trioscale.options), the store, the connection limiter of each of its listeners, and the
handles of the services started before it that it works with (the STUN port for the DERP map, the
coordinator for the admin API). Each reports back, when started, an object with its addresses
(and its counters, for tests). SIGINT and SIGTERM cancel the nursery; that is a clean shutdown
(exit status 0).
"""

from __future__ import annotations

import gc
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial
from types import ModuleType
from typing import Any

import trio

from trioscale import allocator, options
from trioscale.config import Config, split_hostport
from trioscale.shared.net.limits import (
    ConnectionLimiter,
    ListenerCaps,
    install_budget,
    limiter_stats,
    plan_budget,
    raise_descriptor_limit,
    standalone_limiter,
)
from trioscale.shared.net.listen import listener_sockets, serve_stream_sockets
from trioscale.shared.net.ops import serve_ops
from trioscale.metrics import ProcessOps
from trioscale.log import current_format

__all__ = ["run_services", "serve_services", "SERVICE_ORDER", "next_steps_text", "serve_health", "connection_limiters"]

SERVICE_ORDER = ("stun", "derp", "coord", "dns")

log = logging.getLogger("trioscale")


def _load_service(name: str) -> ModuleType | None:
    module_name = f"trioscale.services.{name}.service"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name in (module_name, f"trioscale.services.{name}"):
            return None
        raise


def next_steps_text(config: Config, addresses: dict[str, Any]) -> str:
    prog = "trioscale" if not config.source else f"trioscale -c {config.source}"
    lines = [
        "",
        f"trioscale is running. Control server URL: {config.server_url}",
        "",
        "Next steps:",
        "  1. create a user:",
        f"       {prog} users create alice",
        "  2. create a pre-auth key for it:",
        f"       {prog} preauthkeys create --user alice",
        "  3. point a Tailscale client at this server:",
        f"       tailscale up --login-server {config.server_url} --authkey <key from step 2>",
        "",
        "Listening: " + ", ".join(f"{k}={v}" for k, v in addresses.items()),
        "Stop with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)


async def serve_health(
    addr: str,
    *,
    limiter: ConnectionLimiter | None = None,
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A tiny HTTP server answering `200 ok` on any GET (for standalone stun/dns processes)."""
    host, port = split_hostport(addr)
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    if limiter is None:
        limiter = standalone_limiter("health")
    shown = f"{sockname[0]}:{sockname[1]}"

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                path = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b"/"
                if path.split(b"?")[0] in (b"/health", b"/healthz", b"/"):
                    status, body = b"200 OK", b'{"status":"ok"}\n'
                else:
                    status, body = b"404 Not Found", b'{"error":"not found"}\n'
                await stream.send_all(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_stream_sockets, handle, listener_sockets(listeners), limiter=limiter, log=log))
        log.info("health endpoint on http://%s/health", shown)
        task_status.started({"health": shown})


async def serve_services(
    names: Sequence[str],
    config: Config,
    *,
    print_next_steps: bool | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open the store, start `names` in SERVICE_ORDER, run until cancelled."""
    from trioscale.shared.store import open_store

    wanted = [n for n in SERVICE_ORDER if n in names]
    unknown = set(names) - set(SERVICE_ORDER)
    if unknown:
        raise ValueError(f"unknown service(s): {', '.join(sorted(unknown))}")
    if print_next_steps is None:
        print_next_steps = "coord" in wanted

    caps = _plan_connection_caps(config, _listeners_of(config, wanted))
    from trioscale.shared.store.filemodes import secure_data_dir

    secure_data_dir(config)  # 0700 / 0600, fixing what an older trioscale left open
    async with open_store(config) as store:
        ops = ProcessOps(store)
        store = ops.store  # every store operation timed (trioscale_store_operation_seconds)
        limiters = install_budget(caps)
        addresses: dict[str, Any] = {}
        stun_port: int | None = None
        async with trio.open_nursery() as nursery:
            if config.metrics_listen_addr:
                # first, so /health answers (and /ready says what is still starting) during start
                host, port = split_hostport(config.metrics_listen_addr)
                _merge(addresses, "metrics", await nursery.start(serve_ops, host, port, ops.endpoints))
            for name in wanted:
                if name == "derp" and not config.derp.server.enabled:
                    log.info("embedded DERP relay disabled (derp.server.enabled: false)")
                    continue
                if name == "stun" and "derp" in wanted and not config.derp.server.enabled:
                    # As in Headscale, STUN belongs to the embedded relay: no DERP map names it
                    # when the relay is off, so opening its UDP port would serve nobody.
                    log.info("STUN not started with the embedded DERP relay disabled")
                    continue
                service = _load_service(name)
                if service is None:
                    log.warning("service %s is not available in this build; skipping it", name)
                    continue
                if name == "stun":
                    stun = await nursery.start(service.serve, options.stun_options(config))
                    ops.started(name, stun)
                    stun_port = stun.port
                    _merge(addresses, name, stun.addresses)
                elif name == "derp":
                    derp = await nursery.start(partial(
                        service.serve, options.derp_options(config), store, limiter=limiters.get("derp"),
                        stun_port=stun_port, listener_stats=partial(limiter_stats, limiters),
                    ))
                    _merge(addresses, name, derp.addresses)
                    ops.started(name, derp)
                elif name == "coord":
                    coord = await nursery.start(partial(
                        service.serve, options.coord_options(config), store, limiter=limiters.get("control"),
                        reload=options.reloader(config, options.coord_options),
                    ))
                    _merge(addresses, name, coord.addresses)
                    ops.started(name, coord)
                    from trioscale.services.coord.admin import serve_admin

                    admin = partial(serve_admin, options.admin_options(config), store, coordinator=coord.coordinator,
                                    limiter=limiters.get("admin"), unix_limiter=limiters.get("admin_unix"),
                                    mount_api=coord.mount_api, tls=coord.tls)
                    _merge(addresses, "admin", await nursery.start(admin))
                elif name == "dns":
                    dns = await nursery.start(partial(
                        service.serve, options.dns_options(config), store, limiter=limiters.get("dns"),
                        reload=options.reloader(config, options.dns_options),
                    ))
                    if dns is not None:
                        _merge(addresses, name, dns.addresses)
                    ops.started(name, dns)
            if "coord" not in wanted and set(wanted) & {"stun", "dns"} and config.health_listen_addr:
                health = partial(serve_health, limiter=limiters.get("health"))
                _merge(addresses, "health", await nursery.start(health, config.health_listen_addr))
            for key, value in addresses.items():
                log.info("listening: %s = %s", key, value)
            if print_next_steps:
                sys.stdout.write(next_steps_text(config, addresses))
            else:
                listening = ", ".join(f"{k}={v}" for k, v in addresses.items())
                sys.stdout.write(f"trioscale is running ({', '.join(wanted)}): {listening}\n")
            sys.stdout.flush()
            ops.listeners_bound()
            task_status.started(addresses)


def _listeners_of(config: Config, wanted: Sequence[str]) -> list[str]:
    """The capped listeners (`limits.<name>`) the services `wanted` open in this process."""
    out: list[str] = []
    if "coord" in wanted:
        out += ["control", "admin_unix"] + (["admin"] if config.admin.listen_addr else [])
    if "derp" in wanted and config.derp.server.enabled:
        out.append("derp")
    if "dns" in wanted and config.dns.listen_addr:
        out.append("dns")
    if "coord" not in wanted and set(wanted) & {"stun", "dns"} and config.health_listen_addr:
        out.append("health")
    return out


def connection_limiters(config: Config, listeners: Sequence[str]) -> dict[str, ConnectionLimiter]:
    """The limiters of `listeners` (names as in ``limits.<name>``), planned as `trioscale serve`
    plans them, for a tool or benchmark that starts a service itself."""
    return install_budget(_plan_connection_caps(config, listeners))


def _plan_connection_caps(config: Config, listeners: Sequence[str]) -> dict[str, ListenerCaps]:
    """Raise the descriptor limit as far as allowed, then fit every listener's cap under it, so a
    flood that fills one listener leaves descriptors for the others (and for files and the store)."""
    soft, hard = raise_descriptor_limit()
    caps, note = plan_budget(options.connection_caps(config, listeners), soft, config.limits.reserved_descriptors)
    if note is not None:
        log.warning("%s", note)
    log.debug("descriptor limit %d (hard %s); connection caps %s", soft, hard,
              ", ".join(f"{n} {c.max_connections}/{c.max_connections_per_source}" for n, c in caps.items()))
    return caps


def _merge(into: dict[str, Any], name: str, got: Any) -> None:
    if isinstance(got, dict):
        for k, v in got.items():
            into[k if k not in into else f"{name}.{k}"] = v
    elif got is not None:
        into[name] = got


#: the cyclic collector's thresholds in a server process. A coordinator holds millions of
#: long-lived objects (nodes, sessions, kept peer JSON) and a join storm allocates fast: at
#: Python's default (700, 10, 10) full collections walked that heap over and over (6 % of the
#: server's CPU in a 2,000-node storm, more as the tailnet grows). Cycles are rare here; garbage
#: is mostly freed by reference counting, so collecting less often costs little memory.
GC_THRESHOLDS = (50_000, 20, 20)


async def _main(names: Sequence[str], config: Config) -> None:
    async with trio.open_nursery() as nursery:
        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(on_signals)
        await nursery.start(serve_services, names, config)
        gc.freeze()  # what start-up built (modules, the loaded tailnet) lives as long as the process


def run_services(names: Sequence[str], config: Config) -> int:
    """Run services until SIGINT/SIGTERM; returns the process exit status (0 = clean)."""
    gc.set_threshold(*GC_THRESHOLDS)
    allocator.keep_large_buffers()
    try:
        trio.run(_main, list(names), config)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:  # noqa: BLE001 - report, don't dump a traceback at the user
        if isinstance(exc, SystemExit):
            raise
        errors = _leaves(exc)
        for err in errors:
            log.error("fatal: %s", err, exc_info=err if log.isEnabledFor(logging.DEBUG) else None)
        first = errors[0] if errors else exc
        if current_format() != "json":  # in JSON every stderr line is a record: the "fatal" one says it
            sys.stderr.write(f"Error: {_describe(first)}\n")
        return 1
    log.info("stopped")
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out += _leaves(e)
        return out
    return [exc]


def _describe(exc: BaseException) -> str:
    from trioscale.shared.domain.secrets import mask

    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return mask(" ".join(text.split()))
