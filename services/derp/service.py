"""The DERP relay service: wires the parts together and runs them.

    async def serve(options, store, *, task_status=trio.TASK_STATUS_IGNORED, ...)

binds ``derp.server.listen_addr`` (TLS), registers itself in the store as a `DerpRelay`
(relayreg.py: heartbeat every 10 s, removed on shutdown) and reports its `DerpService` when
started (counters in ``.stats``, the bound ``.address`` and ``.port``).

The parts: router.py routes packets between connected clients; session.py runs each connection
(TLS, the HTTP front of http.py, then the DERP session); admission.py keeps verified clients'
admission true while they stay; mesh.py links the relays of a region. A shutdown (cancel of
`serve`) first queues Restarting to every client, lets the writers flush for `shutdown_grace`,
then closes the connections and deletes the relay's row.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trioscale.shared.model import DerpRelay
from trioscale.shared.net import tls as tlsutil
from trioscale.shared.net.addr import join_host_port
from trioscale.shared.net.limits import ConnectionLimiter, standalone_limiter
from trioscale.shared.net.listen import accept_loop
from trioscale.shared.net.rawstream import listen_socket
from trioscale.shared.proto import derp as proto

from .admission import Admission
from .http import HttpFront
from .mesh import Mesh
from .options import DerpOptions
from .relayreg import RelayRegistration
from .router import DerpServer
from .session import FIRST_BYTE_TIMEOUT, UPGRADE_TIMEOUT, Sessions
from .stats import DerpStats

__all__ = ["serve", "DerpService"]

_WILDCARDS = {"", "0.0.0.0", "::", "*"}

log = logging.getLogger("trioscale.derp")


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


async def open_listener(host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False) -> socket.socket:
    """One listening TCP socket (non-blocking); ``::`` is dual-stack, ``0.0.0.0``/empty is IPv4
    only. `reuse_port` lets several relay processes share the port (SO_REUSEPORT)."""
    if host in ("", "*"):
        host = "0.0.0.0"
    if _ip_version(host) is None:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        host = sockaddr[0]
    family = socket.AF_INET6 if _ip_version(host) == 6 else socket.AF_INET
    return listen_socket(host, port, family, reuse_port=reuse_port, backlog=backlog)


class DerpService:
    """One running relay, as `serve()` reports it: its parts, where it listens, its stats."""

    def __init__(
        self,
        store: Any,
        *,
        log: logging.Logger,
        listener_stats: Callable[[], dict[str, dict[str, int]]],
        private_key: bytes,
        ssl_context: ssl.SSLContext,
        keepalive_interval: float,
        keepalive_jitter: float,
        queue_depth: int,
        write_timeout: float | None,
        handshake_timeout: float,
        mesh_key: bytes | None,
        verify_clients: bool,
        first_byte_timeout: float = FIRST_BYTE_TIMEOUT,
        upgrade_timeout: float = UPGRADE_TIMEOUT,
    ):
        self.store = store
        self.log = log
        #: connection caps of every listener in this process, for the stats
        self.listener_stats = listener_stats
        self.server = DerpServer(private_key, stats=DerpStats(), queue_depth=queue_depth)
        self.stats = self.server.stats
        self.keepalive_interval = keepalive_interval
        self.keepalive_jitter = keepalive_jitter
        self.mesh_key = mesh_key
        self.admission = Admission(store, self.server, log) if verify_clients else None
        self.sessions = Sessions(
            self.server,
            HttpFront(self.stats, self.server.public_key, self.stats_dict, upgrade_timeout),
            log=log,
            ssl_context=ssl_context,
            keepalive_interval=keepalive_interval,
            keepalive_jitter=keepalive_jitter,
            write_timeout=write_timeout,
            first_byte_timeout=first_byte_timeout,
            upgrade_timeout=upgrade_timeout,
            handshake_timeout=handshake_timeout,
            mesh_key=mesh_key,
            admission=self.admission,
        )
        # filled in by serve() once bound
        self.port: int = 0
        self.address: str = ""
        self.cert_name: str = ""
        self.registration: RelayRegistration | None = None
        self.mesh: Mesh | None = None

    @property
    def relay(self) -> DerpRelay | None:
        """This relay's row in the store, as last written."""
        return self.registration.relay if self.registration is not None else None

    def buffered(self) -> dict[str, int]:
        """Bytes held for connections right now, by kind (computed when asked, off the hot path)."""
        return self.sessions.buffered()

    @property
    def addresses(self) -> dict[str, str]:
        return {"derp": self.address}

    def stats_dict(self) -> dict[str, Any]:
        d = self.stats.as_dict()
        d["buffers"] = self.buffered()
        d["listeners"] = self.listener_stats()
        if self.admission is not None:
            verifier = self.admission.verifier
            d["verify_cache"] = {"size": len(verifier), "hits": verifier.hits, "misses": verifier.misses}
        return d

    async def close_all(self, grace: float) -> None:
        await self.server.shutdown(grace)
        self.sessions.cancel_all()


def _parse_mesh_key(value: Any) -> bytes | None:
    if value in (None, ""):
        return None
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        return bytes(value)
    text = str(value).strip()
    if len(text) != 64:
        raise ValueError("derp mesh key must be 64 hex characters")
    return bytes.fromhex(text)


def _load_tls(
    cert_path: Path | None, key_path: Path | None, data_dir: Path, names: list[str]
) -> tuple[ssl.SSLContext, str]:
    """SSLContext and the DERP map CertName ("sha256-raw:<hex>" for our self-signed cert)."""
    if cert_path and key_path:
        return _no_tickets(tlsutil.server_context(cert_path, key_path)), ""
    cert_path = Path(data_dir) / "derp_tls_cert.pem"
    key_path = Path(data_dir) / "derp_tls_key.pem"
    tlsutil.ensure_self_signed(cert_path, key_path, names)
    ctx = _no_tickets(tlsutil.server_context(cert_path, key_path))
    return ctx, "sha256-raw:" + tlsutil.cert_sha256(cert_path.read_bytes())


def _no_tickets(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """DERP clients keep one long connection and do not resume TLS sessions: session tickets
    would only cost every handshake (anyone's) two ticket encryptions."""
    try:
        ctx.num_tickets = 0
    except (AttributeError, ValueError):
        pass
    return ctx


def _load_private_key(path: Path) -> bytes:
    from trioscale.shared.proto import keys

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return keys.load_or_create_private_key(path)


async def serve(
    options: DerpOptions,
    store: Any,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    limiter: ConnectionLimiter | None = None,
    stun_port: int | None = None,
    listener_stats: Callable[[], dict[str, dict[str, int]]] | None = None,
    keepalive_interval: float = proto.KEEPALIVE_INTERVAL,
    keepalive_jitter: float = 5.0,
    queue_depth: int = 32,
    write_timeout: float | None = 2.0,
    handshake_timeout: float | None = None,  # default: options.handshake_timeout
    first_byte_timeout: float | None = None,  # default: options.first_byte_timeout
    upgrade_timeout: float | None = None,  # default: options.upgrade_timeout
    heartbeat_interval: float | None = None,  # default: options.heartbeat_interval
    shutdown_grace: float = 1.0,
    reuse_port: bool | None = None,
) -> None:
    """Run the DERP relay until cancelled (see the module docstring).

    `limiter` caps the listener (default: a listener of its own); `stun_port` is the port of the
    STUN responder in this process, published in the DERP map (default: the configured one);
    `listener_stats` gives the caps of every listener in the process for the debug stats
    (default: this listener's). `reuse_port` (default: ``options.reuse_port``) binds with
    SO_REUSEPORT so that several relay processes of one host share the port; give each its own
    ``private_key_path`` and a common ``mesh_key`` so that they mesh like the relays of a region."""
    host, port = options.listen_host, options.listen_port
    data_dir = options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    private_key = await trio.to_thread.run_sync(_load_private_key, options.private_key_path)
    publish_host = options.hostname or (host if host not in _WILDCARDS else socket.gethostname())
    names = [publish_host, "localhost", "127.0.0.1", "::1"]
    if host not in _WILDCARDS:
        names.append(host)
    for extra in (options.ipv4, options.ipv6):
        if extra and _ip_version(extra):
            names.append(extra)
    ssl_context, cert_name = await trio.to_thread.run_sync(
        _load_tls, options.tls_cert_path, options.tls_key_path, data_dir, names)
    if limiter is None:
        limiter = standalone_limiter("derp")
    if listener_stats is None:
        own = limiter

        def listener_stats() -> dict[str, dict[str, int]]:
            return {own.name: own.stats()}

    svc = DerpService(
        store,
        log=log,
        listener_stats=listener_stats,
        private_key=private_key,
        ssl_context=ssl_context,
        keepalive_interval=keepalive_interval,
        keepalive_jitter=keepalive_jitter,
        queue_depth=queue_depth,
        write_timeout=write_timeout,
        handshake_timeout=_seconds(handshake_timeout, options.handshake_timeout),
        first_byte_timeout=_seconds(first_byte_timeout, options.first_byte_timeout),
        upgrade_timeout=_seconds(upgrade_timeout, options.upgrade_timeout),
        mesh_key=_parse_mesh_key(options.mesh_key),
        verify_clients=options.verify_clients,
    )
    if reuse_port is None:
        reuse_port = options.reuse_port
    listener = await open_listener(host, port, reuse_port=reuse_port)
    bound_host, bound_port = listener.getsockname()[:2]
    address = join_host_port(host or bound_host, bound_port)
    svc.port = bound_port
    svc.address = address
    svc.cert_name = cert_name
    svc.log.info("DERP relay listening on %s (TLS), server key %s", address, svc.server.public_key.hex())

    ipv4 = options.ipv4 or (publish_host if _ip_version(publish_host) == 4 else "")
    ipv6 = options.ipv6 or (publish_host if _ip_version(publish_host) == 6 else "")
    region_id = options.region_id
    name = f"{region_id}-{publish_host}-{bound_port}"
    if reuse_port:  # several processes share host:port: tell their rows apart by server key
        name += "-" + svc.server.public_key.hex()[:8]
    relay = DerpRelay(
        region_id=region_id,
        name=name,
        host=publish_host,
        region_code=options.region_code,
        region_name=options.region_name,
        ipv4=ipv4,
        ipv6=ipv6,
        derp_port=bound_port,
        # a configured port 0 is picked at bind time by a STUN responder elsewhere: publish the usual one
        stun_port=stun_port or options.stun_port or 3478,
        cert_name=cert_name,
        insecure_for_tests=bool(options.insecure_for_tests),
    )
    registration = svc.registration = RelayRegistration(store, relay, svc.log)

    async with trio.open_nursery() as nursery:
        try:
            if svc.keepalive_interval:
                nursery.start_soon(svc.server.keepalives, svc.keepalive_interval, svc.keepalive_jitter)
            nursery.start_soon(partial(accept_loop, listener, svc.sessions.handle_tcp, nursery, limiter=limiter,
                                       log=svc.log))
            if svc.admission is not None:
                nursery.start_soon(svc.admission.follow_changes)
                nursery.start_soon(svc.admission.expire_clients)
            await registration.upsert()
            if heartbeat_interval is None:
                heartbeat_interval = options.heartbeat_interval
            nursery.start_soon(registration.heartbeat, heartbeat_interval)
            if svc.mesh_key is not None:
                svc.mesh = Mesh(
                    svc.server,
                    svc.mesh_key,
                    own=relay,
                    store=store,
                    relay_timeout=_relay_timeout(options.relay_timeout, heartbeat_interval),
                    resync_interval=max(1.0, min(heartbeat_interval, 10.0)),
                )
                await nursery.start(svc.mesh.run)
            task_status.started(svc)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if svc.mesh is not None:
                    svc.mesh.close()
                await svc.close_all(shutdown_grace)
                await registration.delete(2.0)
                svc.log.info("DERP relay on %s stopped", address)


def _seconds(explicit: float | None, configured: float) -> float:
    """A deadline in seconds: the explicit argument, else the configured one (config refuses 0)."""
    return float(explicit) if explicit is not None else configured


def _relay_timeout(configured: float, heartbeat_interval: float) -> float:
    """Rows older than this are dead relays (``derp.relay_timeout``, else 3 heartbeats + 5 s)."""
    return configured if configured > 0 else 3 * heartbeat_interval + 5.0

