"""What the coordinator and its admin API are told at start (built from the configuration by
trioscale.options; `DnsConfigOptions` again whenever the configuration file changes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from trioscale.shared.proto.control import TransportConfig

from .acme import AcmeOptions
from .register import RegistrationPolicy

__all__ = ["AcmeOptions", "TlsOptions", "AdminOptions", "ConsoleOptions", "CoordOptions", "DnsConfigOptions", "OidcOptions", "PolicyOptions", "RegistrationPolicy"]


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
class OidcOptions:
    """The identity provider for interactive logins (and the console's sign-in): Headscale's `oidc:`
    keys, the client secret already read from `client_secret_path`."""

    issuer: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    scope: tuple[str, ...] = ("openid", "profile", "email")
    extra_params: Mapping[str, str] = field(default_factory=dict)
    allowed_domains: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    email_verified_required: bool = True
    use_expiry_from_token: bool = False
    pkce_enabled: bool = False
    pkce_method: str = "S256"
    #: every call to the provider gives up after this
    timeout: timedelta = timedelta(seconds=10)
    #: `serve` fails at start when the discovery document cannot be read
    required_at_start: bool = True


@dataclass(frozen=True)
class TlsOptions:
    """HTTPS on the control and admin listeners: the operator's files, or ACME's (`acme` set)."""

    cert_path: Path | None = None
    key_path: Path | None = None
    acme: AcmeOptions | None = None


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
    #: HTTPS on the control listener (None: plain HTTP)
    tls: TlsOptions | None = None
    #: OIDC login for /register/<id> (None: the page tells the admin command)
    oidc: OidcOptions | None = None


@dataclass(frozen=True)
class ConsoleOptions:
    """The web console on the admin listener (services/coord/console)."""

    #: where browsers reach the console ("https://admin.example.com"); "" = the admin listener's
    #: own address over plain HTTP (cookies then lack Secure: loopback only, see docs/console.md)
    url: str
    #: who may sign in through the identity provider: verified emails, or "issuer/subject" ids (API keys always may)
    admins: tuple[str, ...]
    session_lifetime: timedelta
    #: the identity provider for signing in (the `oidc:` options), None = API keys only
    oidc: Any = None


@dataclass(frozen=True)
class AdminOptions:
    unix_socket: Path
    unix_socket_mode: int
    #: TCP listener where every request needs an API key ("" = none)
    listen_addr: str
    policy: PolicyOptions
    registration: RegistrationPolicy
    #: the TCP listener's certificate when it runs without a coordinator's (None: plain HTTP)
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    #: the web console on the TCP listener (None: off)
    console: ConsoleOptions | None = None
    #: the configured `dns:` keys: what API v2's DNS routes show until they set their own (None: unknown)
    dns: DnsConfigOptions | None = None
