"""Configuration: one YAML file, Headscale's key names where the meaning is the same.

Sources, later ones win: the embedded defaults, the YAML file (``-c FILE``, else ``TRIOSCALE_CONFIG``,
else none), then one environment variable per key: ``TRIOSCALE_`` + the dotted key upper-cased with
dots replaced by ``_`` (``derp.server.listen_addr`` -> ``TRIOSCALE_DERP_SERVER_LISTEN_ADDR``), and
Headscale's name for it, ``HEADSCALE_`` + its Headscale key the same way (``HEADSCALE_SERVER_URL``;
the two given different values is an error). A HEADSCALE_ variable for a Headscale key we do not
implement is reported with the file's; one naming no Headscale key is warned about (an error with
``strict``). ``HEADSCALE_CONFIG`` names the file when ``TRIOSCALE_CONFIG`` does not.
List values from the environment are JSON (``["a","b"]``) or comma-separated; dict values are JSON.

Relative paths in the file are resolved against the file's folder; relative paths from the defaults
and the environment against the current directory. Files that live in the data directory default
to ``<data_dir>/...``.

The YAML key ``dns.nameservers.global`` is the attribute ``config.dns.nameservers.global_``
(``global`` is a Python keyword).

Each key is declared once, below, as a dataclass field made by :func:`~trioscale.configschema.setting`:
its kind, default, description and checks sit on the line that declares the attribute, and
:data:`SCHEMA` derives from those the key list, environment names, loading, validation and the
table in docs/configuration.md (``python -m trioscale.config --markdown docs/configuration.md``
rewrites it). The records are written out rather than generated so that a reader, and a type
checker, sees every attribute path where it is defined.

Every problem found is reported in one :class:`ConfigError`, one line per problem, each naming the
file (or environment variable) and the key.

Headscale's configuration file is read too (trioscale/configheadscale.py): its older spellings of our
keys are the same settings, and its keys trioscale does not implement are accepted and listed in
``Config.unsupported`` (one warning, :func:`unsupported_warning`), or refused with ``strict``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from trioscale.configheadscale import RENAMED, SHARED, UNSUPPORTED
from trioscale.configschema import (
    AUTOBOOL,
    BOOL,
    DATAFILE,
    DURATION,
    INT,
    MAX_DURATION,
    MODE,
    OPTDURATION,
    OPTPATH,
    PATH,
    PATHLIST,
    RECORDS,
    ROUTES,
    SSL,
    STR,
    STRLIST,
    STRMAP,
    WORD,
    Rule,
    Schema,
    env_name,
    not_a_key,
    parse_duration,
    section,
    setting,
    show_duration,
    split_hostport,
)
from trioscale.services.derp.session import FIRST_BYTE_TIMEOUT, HANDSHAKE_TIMEOUT, UPGRADE_TIMEOUT
from trioscale.shared.net.limits import DEFAULT_CAPS, DEFAULT_RESERVED

__all__ = [
    "ConfigError",
    "Config",
    "load_config",
    "config_from_dict",
    "parse_duration",
    "split_hostport",
    "KNOWN_KEYS",
    "env_name",
    "as_dict",
    "replace_keys",
    "MAX_DURATION",
    "unsupported_warning",
    "unknown_env_warning",
    "headscale_env_name",
]


class ConfigError(Exception):
    """Configuration problems: the message has one line per problem, each naming the key.
    `warnings` holds what a valid file would have been warned about (unsupported Headscale keys)."""

    def __init__(self, problems: str | Iterable[str], warnings: Iterable[str] = ()) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.problems))


# ---------------------------------------------------------------------------------------------
# checks of one value (each yields what is wrong with it)

_V4_RANGE = ipaddress.ip_network("100.64.0.0/10")
_V6_RANGE = ipaddress.ip_network("fd7a:115c:a1e0::/48")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _is_domain(name: str) -> bool:
    name = name.rstrip(".").lower()
    return bool(name) and len(name) <= 253 and all(_LABEL.match(p) for p in name.split("."))


def _url(value: str) -> Iterable[str]:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        yield f"expected an http:// or https:// URL, got {value!r}"


def _urls(values: tuple[str, ...]) -> Iterable[str]:
    for value in values:
        yield from _url(value)


def _hostport(value: str) -> Iterable[str]:
    try:
        split_hostport(value)
    except ValueError as exc:
        yield str(exc)


def _hostport_or_off(value: str) -> Iterable[str]:
    if value != "":
        yield from _hostport(value)


def _domain_or_off(value: str) -> Iterable[str]:
    if value != "":
        yield from _domain(value)


def _acme_listen(value: str) -> Iterable[str]:
    # Headscale's default names the port (Go's ":http"); anything else is host:port
    if value.rsplit(":", 1)[-1] != "http":
        yield from _hostport(value)


def _octal_mode(value: str) -> Iterable[str]:
    if not re.fullmatch(r"(0o?)?[0-7]{3}", value):
        yield f"expected an octal mode like 0770 (or Go's 0o770), got {value!r}"


def _prefix_inside(allowed: ipaddress.IPv4Network | ipaddress.IPv6Network):
    def check(value: str) -> Iterable[str]:
        if value == "":  # this address family is off (a rule wants the other one on)
            return
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError:
            yield f"not a network prefix: {value!r}"
            return
        if net.version != allowed.version or not net.subnet_of(allowed):  # type: ignore[arg-type]
            yield f"{value} is outside {allowed} (the only range Tailscale clients accept)"

    return check


def _between(low: int, high: int, what: str):
    def check(value: int) -> Iterable[str]:
        if not low <= value <= high:
            yield f"expected {what}, got {value}"

    return check


def _at_least(minimum: Any, why: str = ""):
    def check(value: Any) -> Iterable[str]:
        if value < minimum:
            shown = show_duration(minimum) if isinstance(minimum, timedelta) else str(minimum)
            got = show_duration(value) if isinstance(value, timedelta) else str(value)
            yield f"must be at least {shown}{why}, got {got}"

    return check


def _not_negative(value: int) -> Iterable[str]:
    if value < 0:
        yield "cannot be negative"


def _ip_or_empty(version: int):
    def check(value: str) -> Iterable[str]:
        if not value:
            return
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            yield f"not an IP address: {value!r}"
            return
        if ip.version != version:
            yield f"expected an IPv{version} address, got {value!r}"

    return check


def _derp_regions(regions: tuple[dict[str, Any], ...]) -> Iterable[str]:
    for i, region in enumerate(regions):
        if not isinstance(region.get("RegionID"), int) or not isinstance(region.get("Nodes", []), list):
            yield f"item {i}: expected a DERPRegion with an integer RegionID and a Nodes list"


def _domain(value: str) -> Iterable[str]:
    if not _is_domain(value):
        yield f"not a domain name: {value!r}"


def _domains(values: tuple[str, ...]) -> Iterable[str]:
    for value in values:
        yield from _domain(value)


def _networks(values: tuple[str, ...]) -> Iterable[str]:
    for value in values:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            yield f"not an IP address or network prefix: {value!r}"


def _routes(routes: dict[str, tuple[str, ...]]) -> Iterable[str]:
    for domain, servers in routes.items():
        if not _is_domain(domain):
            yield f"not a domain name: {domain!r}"
        elif not servers:
            yield f"domain {domain!r} has no nameservers"


def _extra_records(records: tuple[dict[str, Any], ...]) -> Iterable[str]:
    for i, rec in enumerate(records):
        missing = [k for k in ("name", "type", "value") if not isinstance(rec.get(k), str) or not rec.get(k)]
        if missing:
            yield f"item {i}: needs string fields name, type and value (missing {', '.join(missing)})"
            continue
        extra = set(rec) - {"name", "type", "value"}
        if extra:
            yield f"item {i}: unknown field(s) {', '.join(sorted(extra))}"
            continue
        rtype = rec["type"].upper()
        if rtype not in ("A", "AAAA"):
            yield f"item {i}: type must be A or AAAA, got {rec['type']!r}"
            continue
        try:
            ip = ipaddress.ip_address(rec["value"])
        except ValueError:
            yield f"item {i}: value is not an IP address: {rec['value']!r}"
            continue
        if (ip.version == 4) != (rtype == "A"):
            yield f"item {i}: {rec['type']} record with value {rec['value']}"


_MIN_PHASE = _at_least(timedelta(milliseconds=100))
_AT_LEAST_ONE = _at_least(1)


# ---------------------------------------------------------------------------------------------
# the records: every key, declared once

_LISTENER_TOTAL = "concurrent connections to this listener; one over the cap is reset at once (never queued) and counted, with one log line per 10 s at most"
_LISTENER_PER_SOURCE = "concurrent connections to this listener from one source address (an IPv4 address, an IPv6 /64)"


@dataclass(frozen=True)
class AdminConfig:
    listen_addr: str = setting(STR, "", "TCP admin API (API keys required); empty = off", check=_hostport_or_off)


def _url_or_off(value: str) -> Iterable[str]:
    if value != "":
        yield from _url(value)


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = setting(BOOL, False, "the web console at `/console/` on the admin listener (`admin.listen_addr`)")
    url: str = setting(STR, "", "where browsers reach the console (`https://…`, behind a TLS proxy); empty = `http://` + `admin.listen_addr`, loopback only", check=_url_or_off)
    admins: tuple[str, ...] = setting(STRLIST, (), "who may sign in through the identity provider (`oidc:`): verified emails, or `issuer/subject` ids; an API key always may")
    session_lifetime: timedelta = setting(DURATION, timedelta(hours=8), "a console session ends this long after sign-in", check=_between(timedelta(minutes=1), timedelta(days=7), "a lifetime between 1m and 7d"))


def _issuer(value: str) -> Iterable[str]:
    if value != "":
        yield from _url(value)


def _has_openid(scopes: tuple[str, ...]) -> Iterable[str]:
    if "openid" not in scopes:
        yield "must include `openid` (an OpenID Connect login)"


@dataclass(frozen=True)
class PkceConfig:
    enabled: bool = setting(BOOL, False, "send a PKCE code challenge (RFC 7636) with every login")
    method: str = setting(STR, "S256", "`S256` (a SHA-256 of the verifier) or `plain`", choices=("S256", "plain"))


@dataclass(frozen=True)
class OidcConfig:
    """OpenID Connect login for `tailscale up` without a key (Headscale's `oidc:` keys)."""

    issuer: str = setting(STR, "", "the identity provider's issuer URL (its `/.well-known/openid-configuration` is read); empty = no OIDC login: interactive logins wait for `trioscale nodes register`", check=_issuer)
    only_start_if_oidc_is_available: bool = setting(BOOL, True, "`true`: `serve` fails at start when the provider's discovery document cannot be read; `false`: it is read again at the first login")
    client_id: str = setting(STR, "", "the client id trioscale has at the provider (its redirect URL: `server_url` + `/oidc/callback`)")
    client_secret: str = setting(STR, "", "the client's secret; or `client_secret_path`")
    client_secret_path: str = setting(STR, "", "a file holding the client's secret (`${VAR}` in the path is expanded, e.g. `${CREDENTIALS_DIRECTORY}/oidc_client_secret`; a relative path is relative to the configuration file's folder)")
    scope: tuple[str, ...] = setting(STRLIST, ("openid", "profile", "email"), "the scopes asked for (add `groups` where the provider sends groups only then)", check=_has_openid)
    extra_params: dict[str, str] = setting(STRMAP, {}, "more parameters for the provider's authorization URL (`domain_hint: example.com`)")
    allowed_domains: tuple[str, ...] = setting(STRLIST, (), "only emails in these domains may log in; `[]` = any")
    allowed_users: tuple[str, ...] = setting(STRLIST, (), "only these emails may log in; `[]` = any")
    allowed_groups: tuple[str, ...] = setting(STRLIST, (), "only members of one of these groups (the `groups` claim) may log in; `[]` = any")
    email_verified_required: bool = setting(BOOL, True, "an email the provider has not verified (`email_verified`) is not kept on the user and fails `allowed_domains`/`allowed_users`")
    use_expiry_from_token: bool = setting(BOOL, False, "a node logged in through OIDC expires with the ID token (else after `node.expiry`)")
    pkce: PkceConfig = section(PkceConfig)
    timeout: timedelta = setting(DURATION, timedelta(seconds=10), "every call to the provider (discovery, keys, token, userinfo) gives up after this", check=_between(timedelta(seconds=1), timedelta(minutes=2), "a timeout between 1s and 2m"))


@dataclass(frozen=True)
class NoiseConfig:
    private_key_path: Path = setting(DATAFILE, Path("noise_private.key"), "the control server's Noise key; generated on first start")


@dataclass(frozen=True)
class PrefixesConfig:
    v4: str = setting(STR, "100.64.0.0/10", "must be inside 100.64.0.0/10; `\"\"`: nodes get no IPv4 address", check=_prefix_inside(_V4_RANGE))
    v6: str = setting(STR, "fd7a:115c:a1e0::/48", "must be inside fd7a:115c:a1e0::/48; `\"\"`: nodes get no IPv6 address", check=_prefix_inside(_V6_RANGE))
    allocation: str = setting(STR, "sequential", "how a new node's addresses are picked", choices=("sequential", "random"))


@dataclass(frozen=True)
class SqliteConfig:
    path: Path = setting(DATAFILE, Path("db.sqlite"), "the SQLite database file")


@dataclass(frozen=True)
class PostgresConfig:
    host: str = setting(STR, "localhost", "PostgreSQL server host")
    port: int = setting(INT, 5432, "PostgreSQL server port", check=_between(1, 65535, "a port number"))
    name: str = setting(STR, "trioscale", "database name")
    user: str = setting(STR, "", "database user")
    password: str = setting(STR, "", "the user's password", aliases=("pass",))
    ssl: bool | str = setting(SSL, False, "a bool, or a libpq sslmode: `disable` … `verify-full`")
    max_open_conns: int = setting(INT, 10, "connections the pool holds at most", check=_AT_LEAST_ONE)
    conn_max_idle_time_secs: int = setting(
        INT, 300,
        "seconds a pooled connection may stay idle before it is closed (up to twice that for the few kept out of the pool between operations); `0` keeps them",
        check=_not_negative,
    )


@dataclass(frozen=True)
class DatabaseConfig:
    type: str = setting(STR, "sqlite", "the store", choices=("sqlite", "postgres"), synonyms={"sqlite3": "sqlite"})
    sqlite: SqliteConfig = section(SqliteConfig)
    postgres: PostgresConfig = section(PostgresConfig)


@dataclass(frozen=True)
class DerpServerConfig:
    enabled: bool = setting(BOOL, True, "embedded DERP relay")
    region_id: int = setting(INT, 999, "the embedded relay's DERP region", check=_between(1, 2**31 - 1, "a positive region id"))
    region_code: str = setting(STR, "trioscale", "its region code")
    region_name: str = setting(STR, "trioscale embedded DERP", "its region name")
    listen_addr: str = setting(STR, "127.0.0.1:8443", "DERP over TLS", check=_hostport)
    stun_listen_addr: str = setting(STR, "127.0.0.1:3478", "STUN (UDP)", check=_hostport_or_off)
    private_key_path: Path = setting(DATAFILE, Path("derp_private.key"), "the relay's key; generated on first start")
    verify_clients: bool = setting(
        BOOL,
        True,
        "only known, unexpired nodes may use the relay; a connected node's connection is closed when the node expires, is deleted or changes its node key",
    )
    tls_cert_path: Path | None = setting(OPTPATH, None, "the relay's certificate; none (with `tls_key_path`) = a self-signed certificate in `data_dir`")
    tls_key_path: Path | None = setting(OPTPATH, None, "the key of `tls_cert_path`")
    hostname: str = setting(STR, "", "name in the DERP map", shown_default="host of `listen_addr`")
    ipv4: str = setting(STR, "", "IPv4 address advertised in the DERP map", check=_ip_or_empty(4))
    ipv6: str = setting(STR, "", "IPv6 address advertised in the DERP map", check=_ip_or_empty(6))
    insecure_for_tests: bool = setting(AUTOBOOL, True, "clients skip certificate checks", shown_default="`true` only when self-signed")
    mesh_key: str = setting(STR, "", "64 hex characters; relays of a region with the same key mesh")
    reuse_port: bool = setting(
        BOOL,
        False,
        "bind `listen_addr` with SO_REUSEPORT so several relay processes on one host share it (they mesh like relays of a region)",
    )
    heartbeat_interval: timedelta = setting(DURATION, timedelta(seconds=10), "how often a relay refreshes its row in the store", check=_MIN_PHASE)
    # total deadlines before a client is admitted, so a trickle of bytes cannot hold a connection
    first_byte_timeout: timedelta = setting(
        DURATION, timedelta(seconds=FIRST_BYTE_TIMEOUT), "a DERP connection that sends nothing for this long after accept is closed",
        check=_MIN_PHASE,
    )
    upgrade_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=UPGRADE_TIMEOUT),
        "total time from accept (or from the end of the previous request on a kept-alive connection) to a complete HTTP request head, TLS handshake included; a peer trickling bytes is closed when it runs out",
        check=_MIN_PHASE,
    )
    handshake_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=HANDSHAKE_TIMEOUT),
        "total time from the `/derp` upgrade (DERP or WebSocket) to a verified ClientInfo (client-key check included)",
        check=_MIN_PHASE,
    )


@dataclass(frozen=True)
class DerpConfig:
    server: DerpServerConfig = section(DerpServerConfig)
    regions: tuple[dict[str, Any], ...] = setting(
        RECORDS, (), "extra regions, DERPMap JSON shape (`RegionID`, `Nodes`, …)", check=_derp_regions
    )
    urls: tuple[str, ...] = setting(
        STRLIST,
        (),
        "DERP maps fetched over HTTP(S) by each coordinator (Tailscale's: `https://controlplane.tailscale.com/derpmap/default`); "
        "fetched once it runs, a URL that fails is logged and tried again every minute until it answers",
        check=_urls,
    )
    auto_update_enabled: bool = setting(BOOL, False, "fetch `urls` again every `update_frequency`; a failed fetch keeps the last map")
    update_frequency: timedelta = setting(DURATION, timedelta(hours=3), "see `auto_update_enabled`", check=_at_least(timedelta(seconds=10)))
    paths: tuple[Path, ...] = setting(
        PATHLIST,
        (),
        "files with DERP maps, read at start: Tailscale's DERPMap JSON or Headscale's YAML (`regionid`, `hostname`, …); "
        "their regions replace those of `urls` and `regions` with the same id, a null region drops one",
    )
    relay_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=30),
        "coordinators drop relays whose last heartbeat is older (must exceed `derp.server.heartbeat_interval`); the relay leaves every client's DERP map",
    )


@dataclass(frozen=True)
class NameserversConfig:
    global_: tuple[str, ...] = setting(
        STRLIST,
        (),
        "IPs, `ip:port` or DoH URLs (others skipped with a warning); our DNS server forwards to the IP ones",
        name="global",
    )
    split: dict[str, tuple[str, ...]] = setting(ROUTES, {}, "domain → list of nameservers (DNSConfig `Routes`)", check=_routes)


@dataclass(frozen=True)
class DNSConfig:
    magic_dns: bool = setting(BOOL, True, "DNSConfig `Proxied`; also routes the tailnet's reverse zones to 100.100.100.100")
    base_domain: str = setting(STR, "tailnet.internal", "the tailnet's zone; must differ from `server_url`'s domain", check=_domain)
    override_local_dns: bool = setting(
        BOOL,
        False,
        "`true`: `nameservers.global` become the clients' `Resolvers`; `false`: `FallbackResolvers` (Headscale's mapping); `true` needs `nameservers.global`",
    )
    nameservers: NameserversConfig = section(NameserversConfig)
    search_domains: tuple[str, ...] = setting(STRLIST, (), "DNSConfig `Domains`, after `base_domain`", check=_domains)
    extra_records: tuple[dict[str, Any], ...] = setting(
        RECORDS,
        (),
        "`{name, type: A/AAAA, value}`; served by our DNS server and sent to clients as `ExtraRecords`",
        check=_extra_records,
    )
    extra_records_path: Path | None = setting(
        OPTPATH,
        None,
        "a JSON array of the same objects; watched (checked every 0.25–0.5 s), changes reach connected clients and the DNS server within 1 s; used together with `extra_records`",
    )
    listen_addr: str = setting(STR, "127.0.0.1:1053", "UDP and TCP; `\"\"` disables the DNS server", check=_hostport_or_off)
    # loopback cannot be spoofed from the network, so it adds no amplifier and keeps local tools working
    forward_allowed_from: tuple[str, ...] = setting(
        STRLIST,
        ("127.0.0.0/8", "::1/128"),
        "addresses or prefixes whose queries for names outside the tailnet zone our DNS server forwards to `nameservers.global`, "
        "besides `prefixes.v4`/`prefixes.v6` (always allowed: tailscaled sends a node's queries from its tailnet address); "
        "any other source gets REFUSED (no open resolver, which a spoofed source could use as a 100× amplifier). "
        "Names in the tailnet zone, its reverse zones, extra records and TXT answer for every source. "
        "Loopback is in the default because it cannot be spoofed from the network and local tools (`dig @127.0.0.1`) "
        "and the embedded default address need it; list `[]` to forward for the tailnet only",
        check=_networks,
    )


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = setting(
        STR,
        "database",
        "`database`: set with `trioscale policy set -f FILE` (checked, versioned, applied live); `file`: read from `policy.path`, and without one no policy (all traffic allowed, as in Headscale) ([access-control.md](access-control.md))",
        choices=("file", "database"),
    )
    path: Path | None = setting(
        OPTPATH,
        None,
        "the HuJSON policy file in file mode: must be valid at start; re-read when it changes (checked every second) and on SIGHUP; an invalid edit is logged with line and column and the previous policy stays",
    )


@dataclass(frozen=True)
class EphemeralConfig:
    inactivity_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=120),
        "an ephemeral node offline this long (on every replica) is deleted",
        check=_at_least(timedelta(seconds=1)),
    )


@dataclass(frozen=True)
class NodeConfig:
    expiry: timedelta | None = setting(OPTDURATION, None, "how long a node's key stays valid after it registers (tagged nodes never expire); attribute is a `timedelta` or `None` (never)")
    ephemeral: EphemeralConfig = section(EphemeralConfig)


@dataclass(frozen=True)
class PresenceConfig:
    """Map sessions a coordinator replica holds are recorded in the store with a lease."""

    lease: timedelta = setting(
        DURATION,
        timedelta(seconds=30),
        "a coordinator replica's map sessions are recorded in the store with this lease; when the replica dies its nodes go offline after at most `lease` + `heartbeat`",
    )
    heartbeat: timedelta = setting(
        DURATION,
        timedelta(seconds=10),
        "how often a replica renews its leases (and any live replica reaps expired ones); must be shorter than `lease`",
        check=_MIN_PHASE,
    )


@dataclass(frozen=True)
class ControlConfig:
    """The control listener (`listen_addr`) before and while it serves requests: total deadlines
    for each phase, request bodies bounded per request, connection and listener, concurrent streams."""

    first_byte_timeout: timedelta = setting(
        DURATION, timedelta(seconds=10), "a control connection that sends nothing for this long after accept is closed", check=_MIN_PHASE
    )
    request_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=30),
        "total time for one plain HTTP/1.1 request, the `/ts2021` upgrade included (also the keep-alive idle time)",
        check=_MIN_PHASE,
    )
    handshake_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=10),
        "total time from the 101 to the client's first Noise record (its HTTP/2 preface)",
        check=_MIN_PHASE,
    )
    first_request_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=30),
        "total time from the 101 to the first request inside Noise; a connection that never asks anything is closed",
        check=_MIN_PHASE,
    )
    request_body_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=30),
        "a request inside Noise must be complete this long after its headers; otherwise it is answered 408 and reset (the connection stays)",
        check=_MIN_PHASE,
    )
    idle_timeout: timedelta = setting(
        DURATION,
        timedelta(seconds=300),
        "a Noise connection with no request open for this long is closed; PINGs and other frames do not keep it",
        check=_MIN_PHASE,
    )
    max_request_body: int = setting(
        INT,
        256 * 1024,
        "bytes of one request inside Noise; more is refused with 413 (the connection stays). Register and map requests are a few KiB; their Hostinfo is capped at 64 KiB, so at least 65536",
        check=_at_least(64 * 1024, " (a Hostinfo may take 64 KiB)"),
    )
    max_connection_body: int = setting(
        INT,
        1 << 20,
        "bytes of unfinished request bodies one connection may have (its HTTP/2 receive window; credit comes back only for bytes handed to a handler or thrown away)",
    )
    max_buffered_bodies: int = setting(
        INT,
        64 << 20,
        "unfinished request bodies of all control connections together; a stream that brings more is refused with 503",
    )
    max_streams: int = setting(INT, 250, "concurrent requests on a connection whose machine key has a node")
    max_streams_unregistered: int = setting(
        INT,
        4,
        "concurrent requests before that (a client registering uses one or two); a peer that opens more than it was told loses the connection",
    )


@dataclass(frozen=True)
class ListenerLimitsConfig:
    """Concurrent connections one listener holds: in total, and from one source address (IPv6: /64)."""

    max_connections: int = setting(INT, DEFAULT_CAPS["control"].max_connections, _LISTENER_TOTAL, check=_AT_LEAST_ONE)
    max_connections_per_source: int = setting(
        INT, DEFAULT_CAPS["control"].max_connections_per_source, _LISTENER_PER_SOURCE, check=_AT_LEAST_ONE
    )


@dataclass(frozen=True)
class LimitsConfig:
    """Connection caps per listener; their sum is fitted below RLIMIT_NOFILE at start."""

    control: ListenerLimitsConfig = section(
        ListenerLimitsConfig,
        "the control listener. Every node holds one control connection (its map long-poll) and one DERP connection: "
        "the default caps fit 10,000 nodes with room for reconnects, and \"a few NAT addresses\" means up to 4,096 nodes behind one",
    )
    derp: ListenerLimitsConfig = section(ListenerLimitsConfig, "the DERP listener, sized like control")
    admin: ListenerLimitsConfig = section(
        ListenerLimitsConfig,
        "the TCP admin API (tools and the CLI, not nodes); the unix socket has its own cap of `max_connections`",
        max_connections=DEFAULT_CAPS["admin"].max_connections,
        max_connections_per_source=DEFAULT_CAPS["admin"].max_connections_per_source,
    )
    dns: ListenerLimitsConfig = section(
        ListenerLimitsConfig,
        "DNS over TCP (clients fall back to it only for truncated answers; UDP has its own per-source rate limit)",
        max_connections=DEFAULT_CAPS["dns"].max_connections,
        max_connections_per_source=DEFAULT_CAPS["dns"].max_connections_per_source,
    )
    health: ListenerLimitsConfig = section(
        ListenerLimitsConfig,
        "`health_listen_addr` (probes from a load balancer or orchestrator)",
        max_connections=DEFAULT_CAPS["health"].max_connections,
        max_connections_per_source=DEFAULT_CAPS["health"].max_connections_per_source,
    )
    reserved_descriptors: int = setting(
        INT,
        DEFAULT_RESERVED,
        "descriptors kept out of the caps for the database, files and outgoing sockets (at most a quarter of the limit)",
        check=_not_negative,
    )


@dataclass(frozen=True)
class LogConfig:
    level: str = setting(
        WORD,
        "info",
        "least severe messages logged",
        choices=("debug", "info", "warning", "error", "critical"),
        synonyms={"trace": "debug", "warn": "warning", "fatal": "critical", "panic": "critical"},
    )
    format: str = setting(STR, "text", "log line format", choices=("text", "json"), synonyms={"": "text"})


@dataclass(frozen=True)
class Config:
    server_url: str = setting(STR, "http://127.0.0.1:8080", "what clients use as `--login-server`", check=_url)
    listen_addr: str = setting(STR, "127.0.0.1:8080", "control protocol (HTTP, `/ts2021`)", check=_hostport)
    data_dir: Path = setting(PATH, Path("var"), "where the keys, the SQLite database and the unix socket live unless set")
    unix_socket: Path = setting(DATAFILE, Path("trioscale.sock"), "local admin API, no authentication")
    unix_socket_permission: str = setting(MODE, "0770", "the unix socket's file mode, octal (`0770`, `0o770`)", check=_octal_mode)
    health_listen_addr: str = setting(STR, "", "`/health` for standalone `stun`/`dns` processes; empty = off", check=_hostport_or_off)
    tls_cert_path: Path | None = setting(OPTPATH, None, "HTTPS on `listen_addr` and `admin.listen_addr` with this certificate (PEM chain), read again when it changes; none = plain HTTP")
    tls_key_path: Path | None = setting(OPTPATH, None, "the key of `tls_cert_path` (PEM, unencrypted)")
    tls_letsencrypt_hostname: str = setting(STR, "", "HTTPS with a certificate for this name from the ACME CA at `acme_url`, renewed at 2/3 of its lifetime (wins over `tls_cert_path`, as in Headscale); empty = off", check=_domain_or_off)
    tls_letsencrypt_cache_dir: Path = setting(DATAFILE, Path("acme"), "ACME account key and certificates (0700; files 0600)")
    tls_letsencrypt_challenge_type: str = setting(STR, "HTTP-01", "how the CA checks the name: `HTTP-01` (on `tls_letsencrypt_listen`) or `TLS-ALPN-01` (on `listen_addr`, which must then be the name's port 443)", choices=("HTTP-01", "TLS-ALPN-01"))
    tls_letsencrypt_listen: str = setting(STR, ":http", "HTTP-01: where the challenge listener binds (`:http` = port 80)", check=_acme_listen)
    acme_url: str = setting(STR, "https://acme-v02.api.letsencrypt.org/directory", "the ACME CA's directory", check=_url)
    acme_email: str = setting(STR, "", "contact address given to the ACME CA (optional)")
    metrics_listen_addr: str = setting(STR, "127.0.0.1:9090", "`/metrics` (Prometheus), `/health` and `/ready` of this process (docs/operations.md); empty = off", check=_hostport_or_off)
    admin: AdminConfig = section(AdminConfig)
    console: ConsoleConfig = section(ConsoleConfig)
    noise: NoiseConfig = section(NoiseConfig)
    oidc: OidcConfig = section(OidcConfig)
    prefixes: PrefixesConfig = section(PrefixesConfig)
    database: DatabaseConfig = section(DatabaseConfig)
    derp: DerpConfig = section(DerpConfig)
    dns: DNSConfig = section(DNSConfig)
    policy: PolicyConfig = section(PolicyConfig)
    node: NodeConfig = section(NodeConfig)
    presence: PresenceConfig = section(PresenceConfig)
    log: LogConfig = section(LogConfig)
    limits: LimitsConfig = section(LimitsConfig, "connection caps per listener, one budget fitted below the descriptor limit at start (below)")
    control: ControlConfig = section(ControlConfig)
    #: the file this was read from (None = embedded defaults); not a key
    source: Path | None = not_a_key(default=None, compare=False)
    #: Headscale keys the file gives that have no effect here (trioscale/configheadscale.py); not a key
    unsupported: tuple[str, ...] = not_a_key(default=(), compare=False)
    #: HEADSCALE_ environment variables that name no Headscale key (warned about); not a key
    unknown_env: tuple[str, ...] = not_a_key(default=(), compare=False)

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with dotted keys changed: ``cfg.replace(**{"derp.server.enabled": False})``."""
        return replace_keys(self, changes)

    @property
    def unix_socket_mode(self) -> int:
        return int(self.unix_socket_permission, 8)  # Python reads Go's 0o770 the same way


def unsupported_warning(keys: Iterable[str], where: str = "") -> str:
    """The one warning naming every Headscale key given that trioscale does not implement."""
    keys = list(keys)
    prefix = f"{where}: " if where else ""
    return (
        f"{prefix}{len(keys)} Headscale key{'s' if len(keys) != 1 else ''} not implemented by trioscale, "
        f"ignored (an error with --strict; docs/configuration.md, Coming from Headscale): {', '.join(keys)}"
    )


def unknown_env_warning(names: Iterable[str]) -> str:
    """The one warning naming every HEADSCALE_ variable that is no Headscale key."""
    names = list(names)
    return (f"environment: {len(names)} HEADSCALE_ variable{'s' if len(names) != 1 else ''} naming no Headscale "
            f"key, ignored (an error with --strict): {', '.join(names)}")


# ---------------------------------------------------------------------------------------------
# checks across keys: each problem is reported under the rule's first key

_RULES: list[Rule] = []


def _rule(*keys: str):
    def register(check):
        _RULES.append(Rule(keys, check))
        return check

    return register


@_rule("prefixes.v4", "prefixes.v6")
def _an_address_family(v4: str, v6: str) -> Iterable[str]:
    if not v4 and not v6:
        yield "and prefixes.v6 are both empty: nodes would get no address"


@_rule("derp.server.tls_cert_path", "derp.server.tls_key_path")
def _certificate_and_key_together(cert: Path | None, key: Path | None) -> Iterable[str]:
    if (cert is None) != (key is None):
        yield "set both tls_cert_path and tls_key_path, or neither"


@_rule("tls_cert_path", "tls_key_path")
def _server_certificate_and_key_together(cert: Path | None, key: Path | None) -> Iterable[str]:
    if (cert is None) != (key is None):
        yield "set both tls_cert_path and tls_key_path, or neither"


@_rule("dns.base_domain", "server_url")
def _base_domain_is_not_the_servers(base: str, url: str) -> Iterable[str]:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    zone = base.lower().rstrip(".")
    if host == zone or host.endswith("." + zone):
        yield f"{base!r} must differ from the server_url's domain ({host}), or clients could not reach the server"


@_rule("dns.override_local_dns", "dns.nameservers.global")
def _override_needs_resolvers(override: bool, nameservers: tuple[str, ...]) -> Iterable[str]:
    if override and not nameservers:
        yield "is true but dns.nameservers.global is empty: clients would have no resolver"


@_rule("console.enabled", "admin.listen_addr", "console.url", "tls_cert_path", "tls_letsencrypt_hostname")
def _console_on_a_safe_listener(enabled: bool, listen: str, url: str, cert: Path | None, acme: str) -> Iterable[str]:
    if not enabled:
        return
    if not listen:
        yield "needs admin.listen_addr (the console is served on the admin listener)"
        return
    if url.startswith("https://") or cert is not None or acme:
        return  # browsers reach it over TLS
    host = split_hostport(listen)[0]
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not loopback:
        # session cookies over plain HTTP on a network could be read off the wire
        yield (f"admin.listen_addr {listen} is not a loopback address: serve the console over TLS (tls_cert_path, "
               "tls_letsencrypt_hostname, or a proxy named in console.url as https://…)")


@_rule("oidc.issuer", "oidc.client_id")
def _oidc_needs_a_client(issuer: str, client_id: str) -> Iterable[str]:
    if issuer and not client_id:
        yield "oidc.issuer is set but oidc.client_id is empty: the provider needs to know trioscale's client"
    if client_id and not issuer:
        yield "oidc.client_id is set but oidc.issuer is empty: set the provider's issuer URL (or remove the oidc keys)"


@_rule("oidc.client_secret", "oidc.client_secret_path")
def _oidc_one_secret(secret: str, secret_path: str) -> Iterable[str]:
    if secret and secret_path:
        yield "set oidc.client_secret or oidc.client_secret_path, not both"


@_rule("presence.lease", "presence.heartbeat")
def _lease_outlives_heartbeat(lease: timedelta, heartbeat: timedelta) -> Iterable[str]:
    if lease <= heartbeat:
        yield f"must be longer than presence.heartbeat ({heartbeat.total_seconds():g}s)"


@_rule("control.max_connection_body", "control.max_request_body")
def _connection_holds_a_request(connection: int, request: int) -> Iterable[str]:
    if connection < max(65535, request):
        yield "must be at least 65535 and at least control.max_request_body"


@_rule("control.max_buffered_bodies", "control.max_connection_body")
def _listener_holds_a_connection(buffered: int, connection: int) -> Iterable[str]:
    if buffered < connection:
        yield "must be at least control.max_connection_body"


@_rule("control.max_streams_unregistered", "control.max_streams")
def _unregistered_streams_fewer(unregistered: int, streams: int) -> Iterable[str]:
    if not 1 <= unregistered <= streams:
        yield "must be between 1 and control.max_streams"


@_rule("derp.relay_timeout", "derp.server.heartbeat_interval")
def _relay_outlives_heartbeat(timeout: timedelta, heartbeat: timedelta) -> Iterable[str]:
    if timeout <= heartbeat:
        yield "must be longer than derp.server.heartbeat_interval"


SCHEMA = Schema(Config, _RULES, renamed=RENAMED, foreign=UNSUPPORTED)

KNOWN_KEYS: tuple[str, ...] = tuple(SCHEMA.keys)

#: environment variables that start with TRIOSCALE_ but are not configuration keys
NON_KEY_ENV = frozenset({"TRIOSCALE_CONFIG", "TRIOSCALE_CLI_ADDRESS", "TRIOSCALE_CLI_API_KEY",
                         "TRIOSCALE_CLI_INSECURE"})


def headscale_env_name(key: str) -> str:
    """The variable Headscale reads for dotted `key` (viper: HEADSCALE_ prefix, `.` -> `_`)."""
    return "HEADSCALE_" + key.upper().replace(".", "_")


#: Headscale's variables that are not configuration keys here: the config file's path, and the
#: CLI's remote address, API key and TLS check (read by trioscale's CLI, trioscale/cli/root.py)
HEADSCALE_NON_KEY_ENV = frozenset({"HEADSCALE_CONFIG", "HEADSCALE_CLI_ADDRESS", "HEADSCALE_CLI_API_KEY",
                                   "HEADSCALE_CLI_INSECURE"})

def _headscale_env() -> dict[str, str]:
    names = [(k, k) for k in SCHEMA.keys] + list(SCHEMA.aliases.items()) + [(k, k) for k in SCHEMA.foreign]
    out: dict[str, str] = {}
    for name, key in names:  # a key's own name first: `_` inside names could make two alike
        out.setdefault(headscale_env_name(name), key)
    return {name: key for name, key in out.items() if name not in HEADSCALE_NON_KEY_ENV}


#: HEADSCALE_ variable -> the key it sets (ours, under Headscale's name or an older spelling) or
#: the Headscale key trioscale does not implement (reported like the file's)
HEADSCALE_ENV: dict[str, str] = _headscale_env()


# ---------------------------------------------------------------------------------------------
# loading


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    strict: bool = False,
) -> Config:
    """Read the configuration: defaults, then the file (`path`, else $TRIOSCALE_CONFIG), then env.
    With `strict`, Headscale keys trioscale does not implement are problems, not warnings."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    if path is None and env.get("TRIOSCALE_CONFIG"):
        path = env["TRIOSCALE_CONFIG"]
    elif path is None and env.get("HEADSCALE_CONFIG"):  # Headscale's own
        path = env["HEADSCALE_CONFIG"]
    data: dict[str, Any] = {}
    file_path: Path | None = None
    if path is not None and str(path) != "":
        file_path = Path(os.path.expanduser(str(path)))
        if not file_path.is_absolute():
            file_path = cwd / file_path
        data = _read_file(file_path)
    return _build(data, env, file_path=file_path, cwd=cwd, strict=strict)


def config_from_dict(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
    strict: bool = False,
) -> Config:
    """Build a Config from a nested dict shaped like the file (tests). No environment unless
    `env` is given; relative paths resolve against `base_dir` (default: the current directory)."""
    base = Path.cwd() if base_dir is None else Path(base_dir)
    return _build(dict(data), env or {}, file_path=None, cwd=base, strict=strict)


def _build(
    data: Mapping[str, Any], env: Mapping[str, str], *, file_path: Path | None, cwd: Path, strict: bool = False
) -> Config:
    label = str(file_path) if file_path is not None else "config"
    file_base = file_path.parent if file_path is not None else cwd
    problems: list[str] = []
    where: dict[str, str] = {}  # key -> how a problem with its value is introduced
    failed: set[str] = set()
    given: dict[str, Any] = {}

    read = SCHEMA.read(data)
    problems.extend(f"{label}: {key}: {problem}" for key, problem in read.problems)
    for key, raw in read.values.items():
        where[key] = f"{label}: {read.spelled.get(key, key)}"
        try:
            given[key] = SCHEMA.keys[key].convert(raw, file_base)
        except ValueError as exc:
            problems.append(f"{where[key]}: {exc}")
            failed.add(key)
            continue
        for spelling, other in read.again.get(key, ()):
            try:
                same = SCHEMA.keys[key].convert(other, file_base) == given[key]
            except ValueError:
                same = False
            if not same:
                # values left out: the setting may be a password
                problems.append(
                    f"{label}: {spelling}: is another name of {read.spelled[key]}, which is given another value; give one of them"
                )
                failed.add(key)
    from_env: dict[str, tuple[str, str]] = {}  # key -> (variable, text)
    unknown_env: list[str] = []
    for name, text in sorted(env.items()):
        key = SCHEMA.by_env.get(name)
        if key is None and name.startswith("HEADSCALE_"):
            # Headscale reads every key from the environment too (a container's settings)
            key = HEADSCALE_ENV.get(name)
            if key is None:
                if name not in HEADSCALE_NON_KEY_ENV:
                    unknown_env.append(name)
                continue
            if key in SCHEMA.foreign:
                read.foreign[key] = _env_value(text)
                continue
        if key is None:
            continue
        if key in from_env and from_env[key][1] != text:
            other = from_env[key][0]
            problems.append(f"environment {name} ({key}): {other} names the same setting with another value; set one of them")
            continue
        from_env[key] = (name, text)
        where[key] = f"environment {name} ({key})"
        spec = SCHEMA.keys[key]
        if name.startswith("HEADSCALE_") and spec.setting.kind.from_env is STRLIST.from_env:
            text = _viper_list(text)
        try:
            given[key] = spec.convert(spec.setting.kind.from_env(text), cwd)
        except ValueError as exc:
            problems.append(f"{where[key]}: {exc}")
            failed.add(key)
            continue
        failed.discard(key)

    values = SCHEMA.defaults()
    values.update(given)
    values["data_dir"] = Path(os.path.normpath(cwd / values["data_dir"]))
    _fill_data_files(values, unset=[k for k in KNOWN_KEYS if given.get(k) is None])
    for key, problem in SCHEMA.check(values, skip=failed):
        problems.append(f"{where.get(key, f'{label}: {key}')}: {problem}")
    unsupported = tuple(read.reported(SCHEMA.foreign))
    warnings: list[str] = []
    if strict:
        problems.extend(
            f"{label}: {key}: a Headscale key trioscale does not implement, refused by --strict: {SCHEMA.foreign[key].reason}"
            for key in unsupported
        )
    elif unsupported:
        warnings.append(unsupported_warning(unsupported, label))
    if unknown_env:
        if strict:
            problems.extend(f"environment {name}: names no Headscale key, refused by --strict" for name in unknown_env)
        else:
            warnings.append(unknown_env_warning(unknown_env))
    if problems:
        raise ConfigError(problems, warnings)
    _derive(values, unset=[k for k in KNOWN_KEYS if given.get(k) in (None, "")])
    return SCHEMA.build(values, source=file_path, unsupported=unsupported, unknown_env=tuple(unknown_env))


def _viper_list(text: str) -> str:
    """Headscale (viper) splits a list from the environment at white space ("1.1.1.1 8.8.8.8"); ours
    is JSON or comma-separated, which a list without commas or brackets becomes."""
    stripped = text.strip()
    if stripped.startswith("[") or "," in stripped:
        return text
    return ",".join(stripped.split())


def _env_value(text: str) -> Any:
    """A Headscale key's value from the environment, typed as YAML would read it (`false`, `0`,
    `[]`), so that a value asking for nothing is not reported."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _fill_data_files(values: dict[str, Any], unset: Iterable[str]) -> None:
    """Files that live in the data directory unless set."""
    for key in unset:
        spec = SCHEMA.keys[key]
        if spec.setting.kind is DATAFILE:
            values[key] = values["data_dir"] / spec.default


def _derive(values: dict[str, Any], unset: Iterable[str]) -> None:
    """Defaults computed from other keys, once those are known to be valid."""
    unset = set(unset)
    if "derp.server.hostname" in unset:
        values["derp.server.hostname"] = split_hostport(values["derp.server.listen_addr"])[0]
    if "derp.server.insecure_for_tests" in unset:
        values["derp.server.insecure_for_tests"] = values["derp.server.tls_cert_path"] is None


# ---------------------------------------------------------------------------------------------
# helpers for tools, tests and live reloads


def replace_keys(cfg: Config, changes: Mapping[str, Any]) -> Config:
    """A copy of `cfg` with some keys changed, validated like a loaded configuration.

    `changes` maps dotted keys (the file's spelling or the attribute path) to values, typed or as
    the file would have them, or a section to a whole record: ``replace_keys(cfg,
    {"derp.server.listen_addr": "127.0.0.1:0"})``, ``replace_keys(cfg, {"dns": other.dns})``.
    Relative paths resolve against the current directory. ConfigError lists every problem.
    """
    values = SCHEMA.values(cfg)
    problems: list[str] = []
    failed: set[str] = set()
    changed: dict[str, Any] = {}
    source = cfg.source
    for dotted, value in changes.items():
        if dotted == "source":  # where the record came from: not a key, nothing to check
            source = value
            continue
        attrs = SCHEMA.attrs_of(dotted)
        if attrs is None:
            problems.append(f"replace: {dotted}: unknown key")
            continue
        for key, spec in SCHEMA.keys.items():
            if spec.attrs[: len(attrs)] != attrs:
                continue
            raw = value
            if len(spec.attrs) > len(attrs):  # a whole record: this key's value inside it
                for attr in spec.attrs[len(attrs) :]:
                    raw = getattr(raw, attr, _MISSING)
                if raw is _MISSING:
                    problems.append(f"replace: {dotted}: expected a {type(getattr(cfg, attrs[0])).__name__} record")
                    break
            try:
                changed[key] = spec.convert(raw, Path.cwd())
            except ValueError as exc:
                problems.append(f"replace: {key}: {exc}")
                failed.add(key)
    values.update(changed)
    unset = [k for k, v in changed.items() if v is None]
    _fill_data_files(values, unset)
    for key, problem in SCHEMA.check(values, skip=failed):
        problems.append(f"replace: {key}: {problem}")
    if problems:
        raise ConfigError(problems)
    _derive(values, [k for k, v in changed.items() if v in (None, "")])
    return SCHEMA.build(values, source=source, unsupported=cfg.unsupported, unknown_env=cfg.unknown_env)


_MISSING = object()


def as_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration as a flat {dotted key: value} dict (for `configtest -v`)."""
    return SCHEMA.values(cfg)


# ---------------------------------------------------------------------------------------------
# the doc's table

_TABLE_START = "<!-- the settings table: generated from trioscale/config.py by `python -m trioscale.config --markdown docs/configuration.md` -->"
_TABLE_END = "<!-- end of the settings table -->"


_HEADSCALE_START = "<!-- the Headscale keys: generated from trioscale/configheadscale.py by `python -m trioscale.config --markdown docs/configuration.md` -->"
_HEADSCALE_END = "<!-- end of the Headscale keys -->"


def _between(text: str, start: str, end: str, body: str) -> str:
    i, j = text.index(start), text.index(end)
    return text[: i + len(start)] + "\n\n" + body + "\n" + text[j:]


def doc_with_table(text: str) -> str:
    """`text` (docs/configuration.md) with the generated parts between their markers regenerated:
    the settings table and the lists of Headscale's keys."""
    text = _between(text, _TABLE_START, _TABLE_END, SCHEMA.markdown())
    return _between(text, _HEADSCALE_START, _HEADSCALE_END, headscale_markdown())


def headscale_markdown() -> str:
    """What becomes of each of Headscale's keys here: the same key, another name, or not implemented."""
    same = ", ".join(f"`{key}`" for key in SHARED)
    lines = [f"Honoured under the same name: {same}.", ""]
    lines += ["| Headscale's other spelling | the key here |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in RENAMED.items()]
    lines += ["", "| not implemented | not reported when | why |", "|---|---|---|"]
    for key, spec in UNSUPPORTED.items():
        quiet = [f"the value is {spec.inert_doc}"] if spec.inert_doc else []
        if spec.only_with:
            quiet.append(f"`{spec.only_with}` is not reported")
        reason = spec.reason.replace("|", "\\|")
        lines.append(f"| `{key}` | {' or '.join(quiet) or '—'} | {reason} |")
    return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> int:
    if argv[:1] != ["--markdown"] or len(argv) > 2:
        print("usage: python -m trioscale.config --markdown [FILE]  (print the settings table, or rewrite it in FILE)", file=sys.stderr)
        return 2
    if len(argv) == 1:
        sys.stdout.write(SCHEMA.markdown())
        return 0
    path = Path(argv[1])
    path.write_text(doc_with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
