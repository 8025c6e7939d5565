"""What the DERP relay is told at start (built from ``derp.*`` by trioscale.options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DerpOptions"]


@dataclass(frozen=True)
class DerpOptions:
    listen_host: str
    listen_port: int
    #: the STUN port published in the DERP map when no STUN responder runs in this process
    #: (0: unknown, the well-known 3478 is published)
    stun_port: int
    private_key_path: Path
    #: where a self-signed certificate is kept when no tls_cert_path/tls_key_path are given
    data_dir: Path
    tls_cert_path: Path | None
    tls_key_path: Path | None
    verify_clients: bool
    #: the name published in the DERP map ("" = the listen host, or this machine's name)
    hostname: str
    ipv4: str
    ipv6: str
    region_id: int
    region_code: str
    region_name: str
    #: None: true exactly when the certificate is self-signed
    insecure_for_tests: bool | None
    #: 64 hex characters shared by the relays of a region ("" = no mesh)
    mesh_key: str
    reuse_port: bool
    # seconds
    heartbeat_interval: float
    first_byte_timeout: float
    upgrade_timeout: float
    handshake_timeout: float
    #: relays whose row is older than this are dead (0: three heartbeats and 5 s)
    relay_timeout: float
