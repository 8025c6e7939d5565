"""Configuration: one YAML file, Headscale's key names where the meaning is the same.

Sources, later ones win: the embedded defaults, the YAML file (``-c FILE``, else ``TRIOSCALE_CONFIG``,
else none), then one environment variable per key: ``TRIOSCALE_`` + the dotted key upper-cased with
dots replaced by ``_`` (``derp.server.listen_addr`` -> ``TRIOSCALE_DERP_SERVER_LISTEN_ADDR``).
List values from the environment are JSON (``["a","b"]``) or comma-separated; dict values are JSON.

Relative paths in the file are resolved against the file's folder; relative paths from the defaults
and the environment against the current directory. Files that live in the data directory default
to ``<data_dir>/...``.

The YAML key ``dns.nameservers.global`` is the attribute ``config.dns.nameservers.global_``
(``global`` is a Python keyword).

Every problem is a :class:`ConfigError` whose one-line message names the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from trioscale.shared.net.addr import split_host_port

__all__ = [
    "ConfigError",
    "Config",
    "load_config",
    "config_from_dict",
    "parse_duration",
    "split_hostport",
    "KNOWN_KEYS",
    "env_name",
]


class ConfigError(Exception):
    """A configuration problem; the message is one line and names the key."""


# ---------------------------------------------------------------------------------------------
# the records


@dataclass(frozen=True)
class AdminConfig:
    listen_addr: str = ""  # "" = no TCP admin API (the unix socket is always there)


@dataclass(frozen=True)
class NoiseConfig:
    private_key_path: Path = Path("noise_private.key")


@dataclass(frozen=True)
class PrefixesConfig:
    v4: str = "100.64.0.0/10"
    v6: str = "fd7a:115c:a1e0::/48"
    allocation: str = "sequential"  # "sequential" | "random"


@dataclass(frozen=True)
class SqliteConfig:
    path: Path = Path("db.sqlite")


@dataclass(frozen=True)
class PostgresConfig:
    host: str = "localhost"
    port: int = 5432
    name: str = "trioscale"
    user: str = ""
    password: str = ""
    ssl: bool | str = False  # a bool, or a libpq sslmode ("disable", "require", "verify-full", ...)


@dataclass(frozen=True)
class DatabaseConfig:
    type: str = "sqlite"  # "sqlite" | "postgres"
    sqlite: SqliteConfig = field(default_factory=SqliteConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)


@dataclass(frozen=True)
class DerpServerConfig:
    enabled: bool = True
    region_id: int = 999
    region_code: str = "trioscale"
    region_name: str = "trioscale embedded DERP"
    listen_addr: str = "127.0.0.1:8443"
    stun_listen_addr: str = "127.0.0.1:3478"
    private_key_path: Path = Path("derp_private.key")
    verify_clients: bool = True
    tls_cert_path: Path | None = None  # None (both) = a self-signed cert generated in data_dir
    tls_key_path: Path | None = None
    hostname: str = ""  # default: the host part of listen_addr
    ipv4: str = ""
    ipv6: str = ""
    insecure_for_tests: bool = True  # default: True only when the certificate is self-signed
    mesh_key: str = ""
    reuse_port: bool = False  # SO_REUSEPORT: several relay processes (meshed) share listen_addr
    heartbeat_interval: timedelta = timedelta(seconds=10)  # how often the relay refreshes its store row
    # total deadlines before a client is admitted (a trickle of bytes cannot hold a connection)
    first_byte_timeout: timedelta = timedelta(seconds=10)  # accept -> the first byte
    upgrade_timeout: timedelta = timedelta(seconds=20)  # accept -> TLS done and the HTTP request head read
    handshake_timeout: timedelta = timedelta(seconds=15)  # upgrade -> a verified ClientInfo


@dataclass(frozen=True)
class DerpConfig:
    server: DerpServerConfig = field(default_factory=DerpServerConfig)
    regions: tuple[dict[str, Any], ...] = ()  # static extra regions, DERPMap JSON shape
    paths: tuple[Path, ...] = ()  # files holding DERP maps
    relay_timeout: timedelta = timedelta(seconds=30)  # relays silent for longer leave the DERP map


@dataclass(frozen=True)
class NameserversConfig:
    global_: tuple[str, ...] = ()  # YAML key "global"
    split: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class DNSConfig:
    magic_dns: bool = True
    base_domain: str = "tailnet.internal"
    override_local_dns: bool = False
    nameservers: NameserversConfig = field(default_factory=NameserversConfig)
    search_domains: tuple[str, ...] = ()
    extra_records: tuple[dict[str, str], ...] = ()  # each {"name", "type", "value"}
    extra_records_path: Path | None = None
    listen_addr: str = "127.0.0.1:1053"
    # who may have names outside our zones forwarded (besides the tailnet's prefixes); loopback
    # cannot be spoofed from the network, so it adds no amplifier and keeps local tools working
    forward_allowed_from: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = "database"  # "file" | "database"
    path: Path | None = None


@dataclass(frozen=True)
class EphemeralConfig:
    inactivity_timeout: timedelta = timedelta(seconds=120)


@dataclass(frozen=True)
class NodeConfig:
    expiry: timedelta | None = None  # None = never (config value 0)
    ephemeral: EphemeralConfig = field(default_factory=EphemeralConfig)


@dataclass(frozen=True)
class PresenceConfig:
    """Map sessions a coordinator replica holds are recorded in the store with a lease."""

    lease: timedelta = timedelta(seconds=30)  # a dead replica's nodes go offline after this
    heartbeat: timedelta = timedelta(seconds=10)  # how often a replica renews its leases


@dataclass(frozen=True)
class ControlConfig:
    """The control listener (`listen_addr`) before and while it serves requests: total deadlines
    for each phase, request bodies bounded per request, connection and listener, concurrent streams."""

    first_byte_timeout: timedelta = timedelta(seconds=10)  # accept -> the first byte
    request_timeout: timedelta = timedelta(seconds=30)  # one whole HTTP/1.1 request (the /ts2021 upgrade too)
    handshake_timeout: timedelta = timedelta(seconds=10)  # the 101 -> the client's first Noise record (HTTP/2 preface)
    first_request_timeout: timedelta = timedelta(seconds=30)  # the 101 -> the first request inside Noise
    request_body_timeout: timedelta = timedelta(seconds=30)  # a request's headers -> its end (then 408 + reset)
    idle_timeout: timedelta = timedelta(seconds=300)  # a connection with no request open for this long is closed
    max_request_body: int = 256 * 1024  # bytes; register/map requests are a few KiB (Hostinfo <= 64 KiB)
    max_connection_body: int = 1 << 20  # unfinished request bodies of one connection (its HTTP/2 window)
    max_buffered_bodies: int = 64 << 20  # unfinished request bodies of all connections together
    max_streams: int = 250  # concurrent requests on a connection whose machine has a node
    max_streams_unregistered: int = 4  # ... and before that


@dataclass(frozen=True)
class ListenerLimitsConfig:
    """Concurrent connections one listener holds: in total, and from one source address (IPv6: /64).
    Sized for 10,000 nodes behind a few NAT addresses: each holds one control and one DERP connection."""

    max_connections: int = 16384
    max_connections_per_source: int = 4096


@dataclass(frozen=True)
class AdminLimitsConfig(ListenerLimitsConfig):
    max_connections: int = 256  # CLI and API tools, not nodes
    max_connections_per_source: int = 64


@dataclass(frozen=True)
class DnsLimitsConfig(ListenerLimitsConfig):
    max_connections: int = 128  # DNS over TCP only (truncated answers, zone tools)
    max_connections_per_source: int = 32


@dataclass(frozen=True)
class HealthLimitsConfig(ListenerLimitsConfig):
    max_connections: int = 64  # load balancer and orchestrator probes
    max_connections_per_source: int = 16


@dataclass(frozen=True)
class LimitsConfig:
    """Connection caps per listener; their sum is fitted below RLIMIT_NOFILE at start."""

    control: ListenerLimitsConfig = field(default_factory=ListenerLimitsConfig)
    derp: ListenerLimitsConfig = field(default_factory=ListenerLimitsConfig)
    admin: AdminLimitsConfig = field(default_factory=AdminLimitsConfig)
    dns: DnsLimitsConfig = field(default_factory=DnsLimitsConfig)
    health: HealthLimitsConfig = field(default_factory=HealthLimitsConfig)
    reserved_descriptors: int = 1024  # kept out of the caps for files, the database, outgoing sockets


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"  # "text" | "json"


@dataclass(frozen=True)
class Config:
    server_url: str = "http://127.0.0.1:8080"
    listen_addr: str = "127.0.0.1:8080"
    data_dir: Path = Path("var")
    unix_socket: Path = Path("trioscale.sock")
    unix_socket_permission: str = "0770"
    health_listen_addr: str = ""
    admin: AdminConfig = field(default_factory=AdminConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    prefixes: PrefixesConfig = field(default_factory=PrefixesConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    derp: DerpConfig = field(default_factory=DerpConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    #: the file this was read from (None = embedded defaults); not a key
    source: Path | None = field(default=None, compare=False)

    def replace(self, **changes: Any) -> "Config":
        """dataclasses.replace, plus dotted keys: ``cfg.replace(**{"derp.server.enabled": False})``."""
        return replace_keys(self, changes)

    @property
    def unix_socket_mode(self) -> int:
        return int(self.unix_socket_permission, 8)


# ---------------------------------------------------------------------------------------------
# the key table: dotted key -> (kind, default-in-raw-form)
#
# kinds: str, int, bool, path, optpath, duration, optduration, strlist, pathlist, dictlist,
#        splitmap, ssl

_KINDS: dict[str, str] = {
    "server_url": "str",
    "listen_addr": "str",
    "data_dir": "path",
    "unix_socket": "optpath",
    "unix_socket_permission": "str",
    "health_listen_addr": "str",
    "admin.listen_addr": "str",
    "noise.private_key_path": "optpath",
    "prefixes.v4": "str",
    "prefixes.v6": "str",
    "prefixes.allocation": "str",
    "database.type": "str",
    "database.sqlite.path": "optpath",
    "database.postgres.host": "str",
    "database.postgres.port": "int",
    "database.postgres.name": "str",
    "database.postgres.user": "str",
    "database.postgres.password": "str",
    "database.postgres.ssl": "ssl",
    "derp.server.enabled": "bool",
    "derp.server.region_id": "int",
    "derp.server.region_code": "str",
    "derp.server.region_name": "str",
    "derp.server.listen_addr": "str",
    "derp.server.stun_listen_addr": "str",
    "derp.server.private_key_path": "optpath",
    "derp.server.verify_clients": "bool",
    "derp.server.tls_cert_path": "optpath",
    "derp.server.tls_key_path": "optpath",
    "derp.server.hostname": "str",
    "derp.server.ipv4": "str",
    "derp.server.ipv6": "str",
    "derp.server.insecure_for_tests": "optbool",
    "derp.server.mesh_key": "str",
    "derp.server.reuse_port": "bool",
    "derp.server.heartbeat_interval": "duration",
    "derp.server.first_byte_timeout": "duration",
    "derp.server.upgrade_timeout": "duration",
    "derp.server.handshake_timeout": "duration",
    "derp.regions": "dictlist",
    "derp.paths": "pathlist",
    "derp.relay_timeout": "duration",
    "dns.magic_dns": "bool",
    "dns.base_domain": "str",
    "dns.override_local_dns": "bool",
    "dns.nameservers.global": "strlist",
    "dns.nameservers.split": "splitmap",
    "dns.search_domains": "strlist",
    "dns.extra_records": "dictlist",
    "dns.extra_records_path": "optpath",
    "dns.listen_addr": "str",
    "dns.forward_allowed_from": "strlist",
    "policy.mode": "str",
    "policy.path": "optpath",
    "node.expiry": "optduration",
    "node.ephemeral.inactivity_timeout": "duration",
    "presence.lease": "duration",
    "presence.heartbeat": "duration",
    "log.level": "str",
    "log.format": "str",
    "limits.control.max_connections": "int",
    "limits.control.max_connections_per_source": "int",
    "limits.derp.max_connections": "int",
    "limits.derp.max_connections_per_source": "int",
    "limits.admin.max_connections": "int",
    "limits.admin.max_connections_per_source": "int",
    "limits.dns.max_connections": "int",
    "limits.dns.max_connections_per_source": "int",
    "limits.health.max_connections": "int",
    "limits.health.max_connections_per_source": "int",
    "limits.reserved_descriptors": "int",
    "control.first_byte_timeout": "duration",
    "control.request_timeout": "duration",
    "control.handshake_timeout": "duration",
    "control.first_request_timeout": "duration",
    "control.request_body_timeout": "duration",
    "control.idle_timeout": "duration",
    "control.max_request_body": "int",
    "control.max_connection_body": "int",
    "control.max_buffered_bodies": "int",
    "control.max_streams": "int",
    "control.max_streams_unregistered": "int",
}

#: other spellings accepted in the file (Headscale's) -> the canonical key
_ALIASES = {"database.postgres.pass": "database.postgres.password"}

KNOWN_KEYS: tuple[str, ...] = tuple(_KINDS)

_DEFAULT_DATA_DIR = "./var"


def env_name(key: str) -> str:
    """The environment variable that overrides dotted `key`."""
    return "TRIOSCALE_" + key.upper().replace(".", "_")


_ENV_TO_KEY: dict[str, str] = {}
for _k in list(_KINDS) + list(_ALIASES):
    _n = env_name(_k)
    assert _n not in _ENV_TO_KEY, f"ambiguous environment name {_n}"
    _ENV_TO_KEY[_n] = _ALIASES.get(_k, _k)

#: environment variables that start with TRIOSCALE_ but are not configuration keys
NON_KEY_ENV = frozenset({"TRIOSCALE_CONFIG", "TRIOSCALE_CLI_ADDRESS", "TRIOSCALE_CLI_API_KEY"})


# ---------------------------------------------------------------------------------------------
# value parsing

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


#: the longest duration accepted anywhere: beyond it a number is a typo or an attack, and
#: `now + duration` must still be a datetime
MAX_DURATION = timedelta(days=36500)


def _bounded(seconds: float, value: Any) -> timedelta:
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number, got {_cut(value)}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"a duration is at most 100 years (36500d), got {_cut(value)}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {_cut(value)}")
    return timedelta(seconds=seconds)


def _cut(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python will print
        return "a number too large to show"
    return text if len(text) <= 80 else text[:60] + "…"


def parse_duration(value: Any) -> timedelta:
    """'30s', '5m', '1h', '90d', '1h30m', '0', or a number of seconds, at most `MAX_DURATION`.
    ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 90d, got {value!r}")
    if isinstance(value, timedelta):
        return _bounded(value.total_seconds(), value)
    if isinstance(value, (int, float)):
        try:
            return _bounded(float(value), value)
        except OverflowError:  # an int too large for a float
            raise ValueError(f"a duration is at most 100 years (36500d), got {_cut(value)}") from None
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 90d, got {_cut(value)}")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _bounded(float(text), value)
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 90d, got {_cut(value)}")
    return _bounded(total, value)


def split_hostport(addr: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port). ValueError if not (the one parser: shared/net/addr)."""
    return split_host_port(addr)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _to_str(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _env_list(text: str) -> list[Any]:
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"bad JSON list: {exc.msg}") from None
        return value
    return [part.strip() for part in text.split(",") if part.strip()]


def _env_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected JSON, {exc.msg}") from None


class _Ctx:
    """Where a value came from, for resolving relative paths."""

    def __init__(self, base: Path):
        self.base = base

    def path(self, value: Any) -> Path:
        if isinstance(value, Path):
            p = value
        else:
            text = _to_str(value)
            if not text:
                raise ValueError("expected a path, got an empty string")
            p = Path(os.path.expanduser(text))
        return p if p.is_absolute() else (self.base / p)


def _convert(kind: str, value: Any, ctx: _Ctx, from_env: bool) -> Any:
    if kind == "str":
        return _to_str(value)
    if kind == "int":
        return _to_int(value)
    if kind == "bool":
        return _to_bool(value)
    if kind == "optbool":
        if value is None or value == "":
            return None
        return _to_bool(value)
    if kind == "path":
        return ctx.path(value)
    if kind == "optpath":
        if value is None or value == "":
            return None
        return ctx.path(value)
    if kind == "duration":
        return parse_duration(value)
    if kind == "optduration":
        if value is None:
            return None
        d = parse_duration(value)
        return None if d == timedelta(0) else d
    if kind == "ssl":
        if isinstance(value, bool):
            return value
        text = _to_str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        modes = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
        if text not in modes:
            raise ValueError(f"expected true, false or one of {', '.join(sorted(modes))}, got {value!r}")
        return text
    if kind in ("strlist", "pathlist", "dictlist"):
        if value is None:
            return ()
        if from_env and isinstance(value, str):
            value = _env_json(value) if kind == "dictlist" else _env_list(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        if kind == "strlist":
            return tuple(_to_str(v) for v in value)
        if kind == "pathlist":
            return tuple(ctx.path(v) for v in value)
        for v in value:
            if not isinstance(v, dict):
                raise ValueError(f"expected a list of mappings, got an item {v!r}")
        return tuple(dict(v) for v in value)
    if kind == "splitmap":
        if value is None:
            return {}
        if from_env and isinstance(value, str):
            value = _env_json(value)
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping of domain to list of nameservers, got {value!r}")
        out: dict[str, tuple[str, ...]] = {}
        for dom, servers in value.items():
            if isinstance(servers, str):
                servers = [servers]
            if not isinstance(servers, (list, tuple)):
                raise ValueError(f"domain {dom!r}: expected a list of nameservers, got {servers!r}")
            out[_to_str(dom)] = tuple(_to_str(s) for s in servers)
        return out
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------
# loading


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, Any], source: str) -> None:
    for raw_key, value in data.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"{source}: key {raw_key!r} under {prefix.rstrip('.') or 'top level'}: keys must be strings")
        key = prefix + raw_key
        key = _ALIASES.get(key, key)
        if key in _KINDS:
            out[key] = value
        elif any(k.startswith(key + ".") for k in _KINDS):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
            _flatten(value, key + ".", out, source)
        else:
            raise ConfigError(f"{source}: {key}: unknown key")


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
) -> Config:
    """Read the configuration: defaults, then the file (`path`, else $TRIOSCALE_CONFIG), then env."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    if path is None and env.get("TRIOSCALE_CONFIG"):
        path = env["TRIOSCALE_CONFIG"]
    data: dict[str, Any] = {}
    file_path: Path | None = None
    if path is not None and str(path) != "":
        file_path = Path(os.path.expanduser(str(path)))
        if not file_path.is_absolute():
            file_path = cwd / file_path
        data = _read_file(file_path)
    return _build(data, env, file_path=file_path, cwd=cwd)


def config_from_dict(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
) -> Config:
    """Build a Config from a nested dict shaped like the YAML file (tests). No environment unless
    `env` is given; relative paths resolve against `base_dir` (default: the current directory)."""
    base = Path.cwd() if base_dir is None else Path(base_dir)
    return _build(dict(data), env or {}, file_path=None, cwd=base, source_label="config")


def _build(
    data: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    file_path: Path | None,
    cwd: Path,
    source_label: str | None = None,
) -> Config:
    label = source_label or (str(file_path) if file_path is not None else "config")
    flat: dict[str, Any] = {}
    _flatten(data, "", flat, label)

    file_ctx = _Ctx(file_path.parent if file_path is not None else cwd)
    env_ctx = _Ctx(cwd)

    values: dict[str, Any] = {}
    for key, raw in flat.items():
        try:
            values[key] = _convert(_KINDS[key], raw, file_ctx, from_env=False)
        except ValueError as exc:
            raise ConfigError(f"{label}: {key}: {exc}") from None
    for name, raw in env.items():
        key = _ENV_TO_KEY.get(name)
        if key is None:
            continue
        try:
            values[key] = _convert(_KINDS[key], raw, env_ctx, from_env=True)
        except ValueError as exc:
            raise ConfigError(f"environment {name} ({key}): {exc}") from None

    # defaults that depend on other values
    data_dir = values.get("data_dir") or (cwd / _DEFAULT_DATA_DIR)
    data_dir = Path(os.path.normpath(data_dir))
    values["data_dir"] = data_dir
    for key, filename in (
        ("unix_socket", "trioscale.sock"),
        ("noise.private_key_path", "noise_private.key"),
        ("database.sqlite.path", "db.sqlite"),
        ("derp.server.private_key_path", "derp_private.key"),
    ):
        if values.get(key) is None:
            values[key] = data_dir / filename

    _validate(values, label)

    if not values.get("derp.server.hostname"):
        host, _ = split_hostport(values.get("derp.server.listen_addr", DerpServerConfig.listen_addr))
        values["derp.server.hostname"] = host
    if values.get("derp.server.insecure_for_tests") is None:
        self_signed = values.get("derp.server.tls_cert_path") is None
        values["derp.server.insecure_for_tests"] = self_signed

    return _assemble(values, file_path)


def _assemble(values: Mapping[str, Any], source: Path | None) -> Config:
    def build(cls: type, prefix: str) -> Any:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            yaml_name = "global" if f.name == "global_" else f.name
            key = prefix + yaml_name
            sub = _SUBRECORDS.get(key)
            if sub is not None:
                kwargs[f.name] = build(sub, key + ".")
            elif key in values:
                kwargs[f.name] = values[key]
        return cls(**kwargs)

    cfg = build(Config, "")
    return dataclasses.replace(cfg, source=source)


_SUBRECORDS: dict[str, type] = {
    "admin": AdminConfig,
    "noise": NoiseConfig,
    "prefixes": PrefixesConfig,
    "database": DatabaseConfig,
    "database.sqlite": SqliteConfig,
    "database.postgres": PostgresConfig,
    "derp": DerpConfig,
    "derp.server": DerpServerConfig,
    "dns": DNSConfig,
    "dns.nameservers": NameserversConfig,
    "policy": PolicyConfig,
    "node": NodeConfig,
    "node.ephemeral": EphemeralConfig,
    "presence": PresenceConfig,
    "log": LogConfig,
    "limits": LimitsConfig,
    "limits.control": ListenerLimitsConfig,
    "limits.derp": ListenerLimitsConfig,
    "limits.admin": AdminLimitsConfig,
    "limits.dns": DnsLimitsConfig,
    "limits.health": HealthLimitsConfig,
    "control": ControlConfig,
}


# ---------------------------------------------------------------------------------------------
# validation

_V4_RANGE = ipaddress.ip_network("100.64.0.0/10")
_V6_RANGE = ipaddress.ip_network("fd7a:115c:a1e0::/48")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _is_domain(name: str) -> bool:
    name = name.rstrip(".").lower()
    return bool(name) and len(name) <= 253 and all(_LABEL.match(p) for p in name.split("."))


def _validate(v: dict[str, Any], label: str) -> None:
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{label}: {key}: {problem}")

    def get(key: str) -> Any:
        if key in v:
            return v[key]
        return _default_of(key)

    def choice(key: str, options: tuple[str, ...]) -> None:
        value = get(key)
        if value not in options:
            fail(key, f"expected one of {', '.join(options)}, got {value!r}")

    url = get("server_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail("server_url", f"expected an http:// or https:// URL, got {url!r}")

    for key, optional in (
        ("listen_addr", False),
        ("admin.listen_addr", True),
        ("health_listen_addr", True),
        ("derp.server.listen_addr", False),
        ("derp.server.stun_listen_addr", True),
        ("dns.listen_addr", True),
    ):
        value = get(key)
        if optional and value == "":
            continue
        try:
            split_hostport(value)
        except ValueError as exc:
            fail(key, str(exc))

    perm = get("unix_socket_permission")
    if not re.fullmatch(r"0?[0-7]{3}", perm):
        fail("unix_socket_permission", f"expected an octal mode like 0770, got {perm!r}")

    for key, rng in (("prefixes.v4", _V4_RANGE), ("prefixes.v6", _V6_RANGE)):
        value = get(key)
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError:
            fail(key, f"not a network prefix: {value!r}")
        if net.version != rng.version or not net.subnet_of(rng):  # type: ignore[arg-type]
            fail(key, f"{value} is outside {rng} (the only range Tailscale clients accept)")
    choice("prefixes.allocation", ("sequential", "random"))
    choice("database.type", ("sqlite", "postgres"))
    port = get("database.postgres.port")
    if not 0 < port < 65536:
        fail("database.postgres.port", f"expected a port number, got {port}")
    choice("policy.mode", ("file", "database"))
    if get("policy.mode") == "file" and get("policy.path") is None:
        fail("policy.path", "policy.mode is file but no policy.path is set")
    choice("log.format", ("text", "json"))
    level = get("log.level")
    if isinstance(level, str):
        v["log.level"] = level = level.lower()
    choice("log.level", _LOG_LEVELS)

    rid = get("derp.server.region_id")
    if not 0 < rid < 2**31:
        fail("derp.server.region_id", f"expected a positive region id, got {rid}")
    for key, version in (("derp.server.ipv4", 4), ("derp.server.ipv6", 6)):
        value = get(key)
        if value:
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                fail(key, f"not an IP address: {value!r}")
            if ip.version != version:
                fail(key, f"expected an IPv{version} address, got {value!r}")
    if (get("derp.server.tls_cert_path") is None) != (get("derp.server.tls_key_path") is None):
        fail("derp.server.tls_cert_path", "set both tls_cert_path and tls_key_path, or neither")
    for i, region in enumerate(get("derp.regions")):
        if not isinstance(region.get("RegionID"), int) or not isinstance(region.get("Nodes", []), list):
            fail("derp.regions", f"item {i}: expected a DERPRegion with an integer RegionID and a Nodes list")

    base = get("dns.base_domain")
    if not _is_domain(base):
        fail("dns.base_domain", f"not a domain name: {base!r}")
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    bd = base.lower().rstrip(".")
    if host == bd or host.endswith("." + bd):
        fail(
            "dns.base_domain",
            f"{base!r} must differ from the server_url's domain ({host}), or clients could not reach the server",
        )
    for d in get("dns.search_domains"):
        if not _is_domain(d):
            fail("dns.search_domains", f"not a domain name: {d!r}")
    for net in get("dns.forward_allowed_from"):
        try:
            ipaddress.ip_network(net.strip(), strict=False)
        except ValueError:
            fail("dns.forward_allowed_from", f"not an IP address or network prefix: {net!r}")
    for d, servers in get("dns.nameservers.split").items():
        if not _is_domain(d):
            fail("dns.nameservers.split", f"not a domain name: {d!r}")
        if not servers:
            fail("dns.nameservers.split", f"domain {d!r} has no nameservers")
    if get("dns.override_local_dns") and not get("dns.nameservers.global"):
        fail("dns.override_local_dns", "is true but dns.nameservers.global is empty: clients would have no resolver")
    for i, rec in enumerate(get("dns.extra_records")):
        missing = [k for k in ("name", "type", "value") if not isinstance(rec.get(k), str) or not rec.get(k)]
        if missing:
            fail("dns.extra_records", f"item {i}: needs string fields name, type and value (missing {', '.join(missing)})")
        extra = set(rec) - {"name", "type", "value"}
        if extra:
            fail("dns.extra_records", f"item {i}: unknown field(s) {', '.join(sorted(extra))}")
        if rec["type"].upper() not in ("A", "AAAA"):
            fail("dns.extra_records", f"item {i}: type must be A or AAAA, got {rec['type']!r}")
        try:
            ip = ipaddress.ip_address(rec["value"])
        except ValueError:
            fail("dns.extra_records", f"item {i}: value is not an IP address: {rec['value']!r}")
        if (ip.version == 4) != (rec["type"].upper() == "A"):
            fail("dns.extra_records", f"item {i}: {rec['type']} record with value {rec['value']}")

    timeout = get("node.ephemeral.inactivity_timeout")
    if timeout < timedelta(seconds=1):
        fail("node.ephemeral.inactivity_timeout", "must be at least 1s")

    lease, heartbeat = get("presence.lease"), get("presence.heartbeat")
    if heartbeat < timedelta(milliseconds=100):
        fail("presence.heartbeat", "must be at least 100ms")
    if lease <= heartbeat:
        fail("presence.lease", f"must be longer than presence.heartbeat ({heartbeat.total_seconds():g}s)")
    for key in [k for k in _KINDS if k.startswith("limits.") and "max_connections" in k]:
        if get(key) < 1:
            fail(key, f"must be at least 1, got {get(key)}")
    if get("limits.reserved_descriptors") < 0:
        fail("limits.reserved_descriptors", "cannot be negative")
    for key in [k for k in _KINDS if k.startswith("control.") and k.endswith("_timeout")]:
        if get(key) < timedelta(milliseconds=100):
            fail(key, "must be at least 100ms")
    if get("control.max_request_body") < 64 * 1024:
        fail("control.max_request_body", "must be at least 65536 (a Hostinfo may take 64 KiB)")
    if get("control.max_connection_body") < max(65535, get("control.max_request_body")):
        fail("control.max_connection_body", "must be at least 65535 and at least control.max_request_body")
    if get("control.max_buffered_bodies") < get("control.max_connection_body"):
        fail("control.max_buffered_bodies", "must be at least control.max_connection_body")
    if not 1 <= get("control.max_streams_unregistered") <= get("control.max_streams"):
        fail("control.max_streams_unregistered", "must be between 1 and control.max_streams")
    relay_beat = get("derp.server.heartbeat_interval")
    if relay_beat < timedelta(milliseconds=100):
        fail("derp.server.heartbeat_interval", "must be at least 100ms")
    if get("derp.relay_timeout") <= relay_beat:
        fail("derp.relay_timeout", "must be longer than derp.server.heartbeat_interval")


_DEFAULTS_CACHE: dict[str, Any] = {}


def _default_of(key: str) -> Any:
    if not _DEFAULTS_CACHE:
        def walk(obj: Any, prefix: str) -> None:
            for f in dataclasses.fields(obj):
                if f.name == "source":
                    continue
                value = getattr(obj, f.name)
                name = "global" if f.name == "global_" else f.name
                if dataclasses.is_dataclass(value):
                    walk(value, prefix + name + ".")
                else:
                    _DEFAULTS_CACHE[prefix + name] = value

        walk(Config(), "")
        _DEFAULTS_CACHE["derp.server.insecure_for_tests"] = None
        _DEFAULTS_CACHE["unix_socket"] = None
    return _DEFAULTS_CACHE[key]


# ---------------------------------------------------------------------------------------------
# helpers for tests and tools


def replace_keys(cfg: Config, changes: Mapping[str, Any]) -> Config:
    """A copy of `cfg` with dotted keys (or top-level attribute names) set to already-typed values.

    No validation: for tests. ``replace_keys(cfg, {"derp.server.listen_addr": "127.0.0.1:0"})``.
    """
    out = cfg
    for dotted, value in changes.items():
        parts = dotted.split(".")
        parts = ["global_" if p == "global" else p for p in parts]

        def set_in(obj: Any, path: list[str]) -> Any:
            if len(path) == 1:
                return dataclasses.replace(obj, **{path[0]: value})
            return dataclasses.replace(obj, **{path[0]: set_in(getattr(obj, path[0]), path[1:])})

        out = set_in(out, parts)
    return out


def as_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration as a flat {dotted key: value} dict (for `configtest -v`)."""
    out: dict[str, Any] = {}
    for key in _KINDS:
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, "global_" if part == "global" else part)
        out[key] = obj
    return out
