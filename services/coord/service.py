"""The coordinator service: control listener + change-log follower + map fan-out."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import trio

from trioscale.context import ServiceContext
from trioscale.services.dns.txt import txt_records_in
from trioscale.shared.net.limits import connection_limiter
from trioscale.shared.proto import keys

from . import register
from .coordinator import Coordinator
from trioscale.shared.domain import tailcfg
from trioscale.shared.domain.netmap import Settings, dns_config
from .dnswatch import DnsConfigWatcher
from .handlers import ControlHandlers
from .presence import PresenceTracker
from .control_server import TransportConfig, TransportStats, serve_control

log = logging.getLogger("trioscale.coord")


def reverse_zones(prefix: str) -> list[str]:
    """The reverse-DNS zones covering a tailnet prefix (on octet / nibble boundaries)."""
    net = ipaddress.ip_network(prefix)
    if net.version == 4:
        boundary = ((net.prefixlen + 7) // 8) * 8
        subnets = net.subnets(new_prefix=boundary) if boundary > net.prefixlen else [net]
        return [
            ".".join(reversed(str(sub.network_address).split(".")[: boundary // 8])) + ".in-addr.arpa"
            for sub in subnets
        ]
    boundary = ((net.prefixlen + 3) // 4) * 4
    nibbles = net.network_address.exploded.replace(":", "")[: boundary // 4]
    return [".".join(reversed(nibbles)) + ".ip6.arpa"]


def static_regions(config) -> list[dict[str, Any]]:
    regions = [dict(r) for r in config.derp.regions]
    for path in config.derp.paths:
        data = json.loads(Path(path).read_text())
        regions.extend((data.get("Regions") or data.get("regions") or {}).values())
    return regions


def dns_config_from(config, file_records: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """The tailnet-wide DNSConfig: the `dns:` keys plus the records read from extra_records_path."""
    zones: list[str] = []
    for prefix in (config.prefixes.v4, config.prefixes.v6):
        if prefix:
            zones.extend(reverse_zones(prefix))
    return dns_config(
        magic_dns=config.dns.magic_dns,
        base_domain=config.dns.base_domain,
        search_domains=config.dns.search_domains,
        nameservers=config.dns.nameservers.global_,
        override_local_dns=config.dns.override_local_dns,
        split={k: list(v) for k, v in config.dns.nameservers.split.items()},
        extra_records=[*config.dns.extra_records, *file_records],
        reverse_zones=zones,
    )


def settings_from_config(config, file_records: Sequence[dict[str, str]] = ()) -> Settings:
    return Settings(
        base_domain=config.dns.base_domain,
        domain=urlparse(config.server_url).hostname or "",
        dns_config=dns_config_from(config, file_records),
    )


def transport_config(config) -> TransportConfig:
    """The control listener's limits and deadlines from the `control:` keys."""
    c = config.control
    return TransportConfig(
        first_byte_timeout=c.first_byte_timeout.total_seconds(),
        request_timeout=c.request_timeout.total_seconds(),
        h2_preface_timeout=c.handshake_timeout.total_seconds(),
        first_request_timeout=c.first_request_timeout.total_seconds(),
        request_body_timeout=c.request_body_timeout.total_seconds(),
        h2_idle_timeout=c.idle_timeout.total_seconds(),
        max_request_body=c.max_request_body,
        max_connection_body=c.max_connection_body,
        max_buffered_bodies=c.max_buffered_bodies,
        max_concurrent_streams=c.max_streams,
        unregistered_concurrent_streams=c.max_streams_unregistered,
    )


def registration_policy(config) -> register.Policy:
    return register.Policy(
        server_url=config.server_url,
        prefix_v4=config.prefixes.v4 or None,
        prefix_v6=config.prefixes.v6 or None,
        allocation=config.prefixes.allocation,
        node_expiry=config.node.expiry,
    )


async def serve(ctx: ServiceContext, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    config = ctx.config
    noise_key = keys.load_or_create_private_key(config.noise.private_key_path)
    regions = static_regions(config)
    dns_watch = DnsConfigWatcher(config, dns_config_from)
    dns_watch.load_records()
    coordinator = Coordinator(
        ctx.store,
        settings_from_config(config, dns_watch.records),
        build_derp_map=lambda relays: tailcfg.derp_map(relays, regions),
        ephemeral_timeout=config.node.ephemeral.inactivity_timeout,
        policy_mode=config.policy.mode,
        policy_path=str(config.policy.path) if config.policy.path else None,
        presence=PresenceTracker(ctx.store, lease=config.presence.lease, heartbeat=config.presence.heartbeat),
        relay_timeout=config.derp.relay_timeout,
    )
    log.info("coordinator replica %s (presence lease %ss)", coordinator.presence.replica_id,
             config.presence.lease.total_seconds())
    handlers = ControlHandlers(coordinator, registration_policy(config), txt_records_in(ctx.registry))
    ctx.registry["coord"] = coordinator
    #: the control listener's accounting (connections, streams, buffered request bodies)
    control_stats = ctx.registry["control"] = TransportStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        if config.policy.mode == "file":
            from .policysource import watch_policy_file

            await nursery.start(watch_policy_file, coordinator.policy_source)
        await nursery.start(dns_watch.run, coordinator.set_dns_config)
        address = await nursery.start(
            partial(serve_control, limiter=connection_limiter(ctx, "control"), stats=control_stats,
                    config=transport_config(config)),
            config.listen_addr, noise_key, handlers.noise, handlers.http,
        )
        log.info("control listening on %s (server_url %s)", address, config.server_url)
        task_status.started({"control": address})
