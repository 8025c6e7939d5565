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
from trioscale.shared.proto import keys
from trioscale.shared.proto.control import TransportStats

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

    @property
    def addresses(self) -> dict[str, str]:
        return {"control": self.control_address}


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
    log.info("coordinator replica %s (presence lease %ss)", coordinator.presence.replica_id,
             options.presence_lease.total_seconds())
    handlers = ControlHandlers(coordinator, options.registration)
    control_stats = TransportStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        if options.policy.mode == "file" and options.policy.path is not None:
            from .policysource import watch_policy_file

            await nursery.start(watch_policy_file, coordinator.policy_source)
        await nursery.start(dns_watch.run, coordinator.set_dns_config)
        if regions.urls:
            nursery.start_soon(regions.run, options.derp_map_refresh, coordinator.refresh_derp_map)
        address = await nursery.start(
            partial(serve_control, limiter=limiter or standalone_limiter("control"), stats=control_stats,
                    config=options.control),
            options.listen_addr, noise_key, handlers.noise, handlers.http,
        )
        log.info("control listening on %s (server_url %s)", address, options.server_url)
        task_status.started(CoordService(coordinator, control_stats, address, handlers.mount_api))
