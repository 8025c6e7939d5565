"""What the DNS server is told at start: `DnsOptions` from the ``dns:`` keys (built by
trioscale.options, again whenever the configuration file changes), and `DnsTuning`, the limits
that have no configuration keys (tests and tools set them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DnsOptions", "DnsTuning"]


@dataclass(frozen=True)
class DnsOptions:
    #: where to bind UDP and TCP; None: no DNS server (``dns.listen_addr`` is empty)
    listen: tuple[str, int] | None
    base_domain: str
    #: the tailnet's prefixes: reverse zones, and sources whose queries may be forwarded
    prefixes: tuple[str, ...]
    extra_records: tuple[dict[str, str], ...]
    extra_records_path: Path | None
    #: upstream resolvers for names outside our zones (``dns.nameservers.global``)
    upstreams: tuple[str, ...]
    forward_allowed_from: tuple[str, ...]
    #: the configuration file, watched for changes (None: the options do not come from a file)
    config_file: Path | None


@dataclass(frozen=True)
class DnsTuning:
    """Defaults here because no configuration key sets them."""

    rate: float = 100.0
    burst: float = 200.0
    max_sources: int = 10_000
    max_tcp_connections: int = 128
    tcp_idle_timeout: float = 10.0
    tcp_write_timeout: float = 10.0
    forward_timeout: float = 2.0
    max_forwards: int = 256
    #: store reads of ACME TXT names in flight (and queries waiting on them), and how long one may take
    max_txt_reads: int = 64
    txt_read_timeout: float = 2.0
    #: store reads per ACME TXT name: a burst (tailscaled's own look-up, then the ACME server's
    #: perspectives), then this many a second; the TXT table answers the rest
    txt_read_burst: float = 4.0
    txt_read_rate: float = 1.0
    watch_interval: float = 0.5
    max_udp_size: int = 4096
    ttl: int = 60
