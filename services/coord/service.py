"""The coordinator service: control listener + change-log follower + map fan-out.

`serve(options, store, ...)` reports a :class:`CoordService` when started: the coordinator (which
the admin API is handed), the control listener's accounting and its address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlparse

import trio

from trioscale.shared.net.limits import ConnectionLimiter, standalone_limiter
from trioscale.shared.net.tls import CertFiles, TlsAcceptor
from trioscale.shared.proto import keys
from trioscale.shared.proto.control import TransportStats

from .acme import HTTP01, AcmeManager
from .acmehttp import serve_http01
from . import dnssettings
from .coordinator import Coordinator
from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.netmap import Settings, dns_config
from trioscale.shared.domain.reversedns import reverse_zones
from .derpregions import DerpRegions
from .dnswatch import DnsConfigWatcher
from .handlers import ControlHandlers
from .options import CoordOptions, DnsConfigOptions
from .presence import PresenceTracker
from .control_server import serve_control

log = logging.getLogger("trioscale.coord")


def static_regions(options: CoordOptions) -> list[dict[str, Any]]:
    """`derp.regions`, then the regions of each `derp.paths` file (JSON, or Headscale's YAML)."""
    return DerpRegions((), options.derp_regions, options.derp_map_paths).regions()


def dns_config_from(options: DnsConfigOptions, file_records: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """The tailnet-wide DNSConfig: the `dns:` keys plus the records read from extra_records_path."""
    zones: list[str] = []
    for prefix in options.prefixes:
        zones.extend(reverse_zones(prefix))
    return dns_config(
        magic_dns=options.magic_dns,
        base_domain=options.base_domain,
        search_domains=options.search_domains,
        nameservers=options.nameservers,
        override_local_dns=options.override_local_dns,
        split={k: list(v) for k, v in options.split_nameservers.items()},
        extra_records=[*options.extra_records, *file_records],
        reverse_zones=zones,
    )


def settings_from(options: CoordOptions, file_records: Sequence[dict[str, str]] = ()) -> Settings:
    return Settings(
        base_domain=options.dns.base_domain,
        domain=urlparse(options.server_url).hostname or "",
        dns_config=dns_config_from(options.dns, file_records),
    )


@dataclass(frozen=True)
class CoordService:
    """The running coordinator, as `serve` reports it when started."""

    coordinator: Coordinator
    #: the control listener's accounting (connections, streams, buffered request bodies)
    control_stats: TransportStats
    control_address: str
    #: serves the admin API's /api/v1 on the control listener too (ControlHandlers.mount_api)
    mount_api: Callable[..., None] | None = None
    #: the certificate the control listener serves, for the admin listener too (None: plain HTTP)
    tls: CertFiles | None = None
    #: the ACME certificate keeper (None: no ACME)
    acme: AcmeManager | None = None
    #: the HTTP-01 listener's address ("" = none)
    http01_address: str = ""

    @property
    def addresses(self) -> dict[str, str]:
        out = {"control": self.control_address}
        if self.http01_address:
            out["acme_http01"] = self.http01_address
        return out


async def _check_provider(handlers: ControlHandlers, oidc) -> None:
    """Read the OIDC provider's discovery document at start: with
    `oidc.only_start_if_oidc_is_available` a failure stops the start, else it is logged and tried
    again at the first login."""
    from .oidc import LoginRefused

    try:
        await handlers.registration_pages.client.discover()
    except LoginRefused as exc:
        if oidc.required_at_start:
            raise RuntimeError(f"oidc.issuer {oidc.issuer}: {exc} (oidc.only_start_if_oidc_is_available is true)") from None
        log.warning("OIDC provider %s: %s; trying again at the first login", oidc.issuer, exc)
    else:
        log.info("OIDC login through %s (client %s)", oidc.issuer, oidc.client_id)


async def serve(
    options: CoordOptions,
    store: Any,
    *,
    limiter: ConnectionLimiter | None = None,
    reload: Callable[[], CoordOptions] | None = None,
    task_status: trio.TaskStatus[CoordService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the coordinator and its control listener until cancelled. `limiter` caps the control
    listener (default: a listener of its own); `reload` re-reads the configuration file when it
    changes, for the DNSConfig (None: no watching)."""
    noise_key = keys.load_or_create_private_key(options.noise_private_key_path)
    acme: AcmeManager | None = None
    certs: CertFiles | None = None
    if options.tls is not None and options.tls.acme is not None:
        acme = AcmeManager(options.tls.acme)
        certs = acme.certs
    elif options.tls is not None and options.tls.cert_path is not None and options.tls.key_path is not None:
        certs = CertFiles(options.tls.cert_path, options.tls.key_path)  # a bad pair stops the start, in one line
    tls = None if certs is None else TlsAcceptor(certs, ("http/1.1",), acme.alpn_challenges if acme else None)
    regions = DerpRegions(options.derp_map_urls, options.derp_regions, options.derp_map_paths)
    dns_watch = DnsConfigWatcher(
        options.dns, dns_config_from, config_file=options.config_file,
        reload=None if reload is None else (lambda: reload().dns),
    )
    dns_watch.load_records()
    coordinator = Coordinator(
        store,
        settings_from(options, dns_watch.records),
        build_derp_map=lambda relays: tailcfg.derp_map(relays, regions.regions()),
        ephemeral_timeout=options.ephemeral_timeout,
        policy_mode=options.policy.mode,
        policy_path=str(options.policy.path) if options.policy.path else None,
        presence=PresenceTracker(store, lease=options.presence_lease, heartbeat=options.presence_heartbeat),
        relay_timeout=options.relay_timeout,
    )
    # DNS settings API v2 stored replace the configured ones (dnssettings.py), here and on every change
    dns_watch.stored = await dnssettings.load(store)
    coordinator.tailnet.settings.dns_config = dns_watch.current()

    async def settings_changed(name: str) -> None:
        if not name or name.startswith(dnssettings.PREFIX):
            dns_watch.stored = await dnssettings.load(store)
            coordinator.set_dns_config(dns_watch.current())

    coordinator.on_settings = settings_changed
    log.info("coordinator replica %s (presence lease %ss)", coordinator.presence.replica_id,
             options.presence_lease.total_seconds())
    handlers = ControlHandlers(coordinator, options.registration, oidc=options.oidc)
    if options.oidc is not None:
        await _check_provider(handlers, options.oidc)
    control_stats = TransportStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        if options.policy.mode == "file" and options.policy.path is not None:
            from .policysource import watch_policy_file

            await nursery.start(watch_policy_file, coordinator.policy_source)
        await nursery.start(dns_watch.run, coordinator.set_dns_config)
        if regions.urls:
            nursery.start_soon(regions.run, options.derp_map_refresh, coordinator.refresh_derp_map)
        http01 = ""
        if acme is not None and acme.options.challenge_type == HTTP01:
            http01 = await nursery.start(serve_http01, acme.options.listen, acme.http_tokens, acme.hostname)
        address = await nursery.start(
            partial(serve_control, limiter=limiter or standalone_limiter("control"), stats=control_stats,
                    config=options.control, tls=tls),
            options.listen_addr, noise_key, handlers.noise, handlers.http,
        )
        log.info("control listening on %s (%s; server_url %s)", address, "HTTPS" if tls else "HTTP", options.server_url)
        if acme is not None:
            await nursery.start(acme.run)  # after the listeners: the CA validates through them
        task_status.started(CoordService(coordinator, control_stats, address, handlers.mount_api, tls=certs, acme=acme,
                                         http01_address=http01))
