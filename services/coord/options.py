"""What the coordinator and its admin API are told at start (built from the configuration by
trioscale.options; `DnsConfigOptions` again whenever the configuration file changes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from trioscale.shared.proto.control import TransportConfig

from .register import RegistrationPolicy

__all__ = ["AdminOptions", "CoordOptions", "DnsConfigOptions", "PolicyOptions", "RegistrationPolicy"]


@dataclass(frozen=True)
class DnsConfigOptions:
    """The ``dns:`` keys that shape the DNSConfig clients get in their maps."""

    magic_dns: bool
    base_domain: str
    override_local_dns: bool
    nameservers: tuple[str, ...]
    split_nameservers: Mapping[str, tuple[str, ...]]
    search_domains: tuple[str, ...]
    extra_records: tuple[dict[str, str], ...]
    extra_records_path: Path | None
    #: the tailnet's prefixes, whose reverse zones MagicDNS answers
    prefixes: tuple[str, ...]


@dataclass(frozen=True)
class PolicyOptions:
    mode: str  # "file" | "database"
    path: Path | None


@dataclass(frozen=True)
class CoordOptions:
    server_url: str
    listen_addr: str
    noise_private_key_path: Path
    registration: RegistrationPolicy
    control: TransportConfig
    dns: DnsConfigOptions
    policy: PolicyOptions
    #: static DERP regions (DERPMap JSON shape) and files holding DERP maps, read at start
    derp_regions: tuple[Mapping[str, Any], ...]
    derp_map_paths: tuple[Path, ...]
    #: relays silent for longer leave the DERP map
    relay_timeout: timedelta
    ephemeral_timeout: timedelta
    presence_lease: timedelta
    presence_heartbeat: timedelta
    #: the configuration file, watched for DNS changes (None: the options do not come from a file)
    config_file: Path | None
    #: DERP maps fetched over HTTP(S), and how often again (None: once)
    derp_map_urls: tuple[str, ...] = ()
    derp_map_refresh: timedelta | None = None


@dataclass(frozen=True)
class AdminOptions:
    unix_socket: Path
    unix_socket_mode: int
    #: TCP listener where every request needs an API key ("" = none)
    listen_addr: str
    policy: PolicyOptions
    registration: RegistrationPolicy
