"""The typed options each service is started with, built from the one `Config`.

Services never see the configuration itself: each package says what it needs in its own
``options.py`` (frozen dataclasses, like h2's ``H2Configuration``), and this module is the only
place that maps configuration keys onto them. Defaults live in the configuration schema alone.

A service that applies some keys live (the coordinator's DNSConfig, the DNS server's extra
records) is handed a `reloader`: a function that reads the configuration file again, with the
same rules as at start, and builds its options anew.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from trioscale.config import Config, ConfigError, load_config
from trioscale.services.coord.options import (
    AcmeOptions,
    AdminOptions,
    ConsoleOptions,
    CoordOptions,
    DnsConfigOptions,
    OidcOptions,
    PolicyOptions,
    RegistrationPolicy,
    TlsOptions,
)
from trioscale.shared.proto.control import TransportConfig
from trioscale.services.derp.options import DerpOptions
from trioscale.services.dns.options import DnsOptions
from trioscale.services.stun.options import StunOptions
from trioscale.shared.net.addr import split_host_port
from trioscale.shared.net.limits import ListenerCaps, listener_caps
from trioscale.shared.net.tls import TlsFilesError, check_pair

__all__ = [
    "admin_options",
    "tls_options",
    "tls_file_problems",
    "console_options",
    "connection_caps",
    "coord_options",
    "derp_options",
    "dns_config_options",
    "dns_options",
    "oidc_options",
    "registration_policy",
    "reloader",
    "stun_options",
]

T = TypeVar("T")


def stun_options(config: Config) -> StunOptions:
    host, port = split_host_port(config.derp.server.stun_listen_addr.strip())
    return StunOptions(listen_host=host, listen_port=port)


def derp_options(config: Config) -> DerpOptions:
    s = config.derp.server
    host, port = split_host_port(s.listen_addr.strip())
    try:
        stun_port = split_host_port(s.stun_listen_addr.strip())[1]
    except ValueError:
        stun_port = 0
    return DerpOptions(
        listen_host=host,
        listen_port=port,
        stun_port=stun_port,
        private_key_path=Path(s.private_key_path),
        data_dir=Path(config.data_dir),
        tls_cert_path=s.tls_cert_path,
        tls_key_path=s.tls_key_path,
        verify_clients=s.verify_clients,
        hostname=s.hostname,
        ipv4=s.ipv4,
        ipv6=s.ipv6,
        region_id=s.region_id,
        region_code=s.region_code,
        region_name=s.region_name,
        insecure_for_tests=s.insecure_for_tests,
        mesh_key=s.mesh_key,
        reuse_port=s.reuse_port,
        heartbeat_interval=s.heartbeat_interval.total_seconds(),
        first_byte_timeout=s.first_byte_timeout.total_seconds(),
        upgrade_timeout=s.upgrade_timeout.total_seconds(),
        handshake_timeout=s.handshake_timeout.total_seconds(),
        relay_timeout=config.derp.relay_timeout.total_seconds(),
    )


def dns_options(config: Config) -> DnsOptions:
    d = config.dns
    return DnsOptions(
        listen=split_host_port(d.listen_addr) if d.listen_addr else None,
        base_domain=d.base_domain,
        prefixes=tuple(p for p in (config.prefixes.v4, config.prefixes.v6) if p),
        extra_records=tuple(d.extra_records),
        extra_records_path=d.extra_records_path,
        upstreams=tuple(d.nameservers.global_),
        forward_allowed_from=tuple(d.forward_allowed_from),
        config_file=config.source,
    )


def dns_config_options(config: Config) -> DnsConfigOptions:
    d = config.dns
    return DnsConfigOptions(
        magic_dns=d.magic_dns,
        base_domain=d.base_domain,
        override_local_dns=d.override_local_dns,
        nameservers=tuple(d.nameservers.global_),
        split_nameservers={k: tuple(v) for k, v in d.nameservers.split.items()},
        search_domains=tuple(d.search_domains),
        extra_records=tuple(d.extra_records),
        extra_records_path=d.extra_records_path,
        prefixes=tuple(p for p in (config.prefixes.v4, config.prefixes.v6) if p),
    )


def registration_policy(config: Config) -> RegistrationPolicy:
    return RegistrationPolicy(
        server_url=config.server_url,
        prefix_v4=config.prefixes.v4 or None,
        prefix_v6=config.prefixes.v6 or None,
        allocation=config.prefixes.allocation,
        node_expiry=config.node.expiry,
    )


def _policy(config: Config) -> PolicyOptions:
    return PolicyOptions(mode=config.policy.mode, path=config.policy.path)


def _control(config: Config) -> TransportConfig:
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


def coord_options(config: Config) -> CoordOptions:
    return CoordOptions(
        server_url=config.server_url,
        listen_addr=config.listen_addr,
        noise_private_key_path=Path(config.noise.private_key_path),
        registration=registration_policy(config),
        control=_control(config),
        dns=dns_config_options(config),
        policy=_policy(config),
        derp_regions=tuple(config.derp.regions),
        derp_map_paths=tuple(config.derp.paths),
        derp_map_urls=tuple(config.derp.urls),
        derp_map_refresh=config.derp.update_frequency if config.derp.auto_update_enabled else None,
        relay_timeout=config.derp.relay_timeout,
        ephemeral_timeout=config.node.ephemeral.inactivity_timeout,
        presence_lease=config.presence.lease,
        presence_heartbeat=config.presence.heartbeat,
        config_file=config.source,
        oidc=oidc_options(config),
        tls=tls_options(config),
    )


def tls_options(config: Config) -> TlsOptions | None:
    """HTTPS on the control and admin listeners (None: plain HTTP)."""
    if config.tls_letsencrypt_hostname:
        return TlsOptions(acme=AcmeOptions(
            hostname=config.tls_letsencrypt_hostname,
            cache_dir=Path(config.tls_letsencrypt_cache_dir),
            challenge_type=config.tls_letsencrypt_challenge_type,
            listen=config.tls_letsencrypt_listen,
            directory_url=config.acme_url,
            email=config.acme_email,
        ))
    if config.tls_cert_path is not None and config.tls_key_path is not None:
        return TlsOptions(cert_path=Path(config.tls_cert_path), key_path=Path(config.tls_key_path))
    return None


def tls_file_problems(config: Config) -> list[str]:
    """What is wrong with `tls_cert_path`/`tls_key_path` as files (one line each), for configtest;
    the service refuses to start with the same line."""
    if config.tls_cert_path is None or config.tls_key_path is None:
        return []
    try:
        check_pair(config.tls_cert_path, config.tls_key_path)
    except TlsFilesError as exc:
        return [str(exc)]
    return []


def oidc_options(config: Config) -> OidcOptions | None:
    """The `oidc:` keys (None without `oidc.issuer`), the client secret read from its file.
    ConfigError when that file cannot be read."""
    o = config.oidc
    if not o.issuer:
        return None
    secret = o.client_secret
    if o.client_secret_path:
        path = Path(os.path.expandvars(o.client_secret_path)).expanduser()
        if not path.is_absolute() and config.source is not None:
            path = Path(config.source).parent / path
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"oidc.client_secret_path: cannot read the client secret: {exc.strerror or exc}") from None
    return OidcOptions(
        issuer=o.issuer,
        client_id=o.client_id,
        client_secret=secret,
        scope=tuple(o.scope),
        extra_params=dict(o.extra_params),
        allowed_domains=tuple(o.allowed_domains),
        allowed_users=tuple(o.allowed_users),
        allowed_groups=tuple(o.allowed_groups),
        email_verified_required=o.email_verified_required,
        use_expiry_from_token=o.use_expiry_from_token,
        pkce_enabled=o.pkce.enabled,
        pkce_method=o.pkce.method,
        timeout=o.timeout,
        required_at_start=o.only_start_if_oidc_is_available,
    )


def admin_options(config: Config) -> AdminOptions:
    return AdminOptions(
        unix_socket=Path(config.unix_socket),
        unix_socket_mode=config.unix_socket_mode,
        listen_addr=config.admin.listen_addr,
        policy=_policy(config),
        registration=registration_policy(config),
        tls_cert_path=config.tls_cert_path,
        tls_key_path=config.tls_key_path,
        console=console_options(config),
        dns=dns_config_options(config),
    )


def console_options(config: Config) -> ConsoleOptions | None:
    c = config.console
    if not c.enabled:
        return None
    return ConsoleOptions(url=c.url.rstrip("/"), admins=tuple(c.admins), session_lifetime=c.session_lifetime,
                          oidc=oidc_options(config))


def connection_caps(config: Config, listeners: Sequence[str]) -> dict[str, ListenerCaps]:
    """The configured caps (``limits.<name>.*``) of `listeners`; "admin_unix" shares the admin keys."""
    out: dict[str, ListenerCaps] = {}
    for name in listeners:
        keys = getattr(config.limits, name.split("_", 1)[0])
        out[name] = listener_caps(name, keys.max_connections, keys.max_connections_per_source)
    return out


def reloader(config: Config, build: Callable[[Config], T]) -> Callable[[], T] | None:
    """A function that reads `config`'s file again and builds options from it with `build`
    (ValueError when the file no longer makes a valid configuration, OSError when it cannot be
    read); None when `config` did not come from a file."""
    source = config.source
    if source is None:
        return None

    def reload() -> T:
        try:
            return build(load_config(source))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    return reload
