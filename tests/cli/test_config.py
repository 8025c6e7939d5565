from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from trioscale.config import (
    KNOWN_KEYS,
    Config,
    ConfigError,
    config_from_dict,
    env_name,
    load_config,
    parse_duration,
)
from util import TRIOSCALE


def test_embedded_defaults(tmp_path: Path) -> None:
    cfg = load_config(env={}, cwd=tmp_path)
    assert cfg.source is None
    assert cfg.server_url == "http://127.0.0.1:8080"
    assert cfg.listen_addr == "127.0.0.1:8080"
    assert cfg.data_dir == tmp_path / "var"
    assert cfg.unix_socket == tmp_path / "var" / "trioscale.sock"
    assert cfg.unix_socket_permission == "0770" and cfg.unix_socket_mode == 0o770
    assert cfg.admin.listen_addr == ""
    assert cfg.noise.private_key_path == tmp_path / "var" / "noise_private.key"
    assert (cfg.prefixes.v4, cfg.prefixes.v6, cfg.prefixes.allocation) == (
        "100.64.0.0/10",
        "fd7a:115c:a1e0::/48",
        "sequential",
    )
    assert cfg.database.type == "sqlite"
    assert cfg.database.sqlite.path == tmp_path / "var" / "db.sqlite"
    assert cfg.database.postgres.port == 5432
    d = cfg.derp.server
    assert d.enabled and d.region_id == 999 and d.region_code == "trioscale"
    assert d.listen_addr == "127.0.0.1:8443" and d.stun_listen_addr == "127.0.0.1:3478"
    assert d.private_key_path == tmp_path / "var" / "derp_private.key"
    assert d.verify_clients and d.tls_cert_path is None and d.tls_key_path is None
    assert d.hostname == "127.0.0.1"
    assert d.insecure_for_tests is True  # self-signed
    assert d.mesh_key == "" and d.ipv4 == "" and d.ipv6 == ""
    assert cfg.derp.regions == () and cfg.derp.paths == ()
    assert cfg.dns.magic_dns and cfg.dns.base_domain == "tailnet.internal"
    assert cfg.dns.override_local_dns is False
    assert cfg.dns.nameservers.global_ == () and cfg.dns.nameservers.split == {}
    assert cfg.dns.search_domains == () and cfg.dns.extra_records == ()
    assert cfg.dns.extra_records_path is None and cfg.dns.listen_addr == "127.0.0.1:1053"
    assert cfg.policy.mode == "database" and cfg.policy.path is None
    assert cfg.node.expiry is None
    assert cfg.node.ephemeral.inactivity_timeout == timedelta(seconds=120)
    assert cfg.log.level == "info" and cfg.log.format == "text"
    assert cfg.health_listen_addr == ""
    assert cfg.metrics_listen_addr == "127.0.0.1:9090"  # Headscale's default


def test_file_with_headscale_names(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "config.yaml"
    path.write_text(
        """
server_url: https://hs.example.com
listen_addr: 0.0.0.0:8080
data_dir: data
database:
  type: postgres
  postgres:
    host: db.local
    port: 5433
    name: ts
    user: ts
    pass: s3cret
    ssl: require
derp:
  server:
    region_id: 901
    listen_addr: "[::]:8443"
    hostname: derp.example.com
    tls_cert_path: /etc/ssl/derp.crt
    tls_key_path: /etc/ssl/derp.key
  paths: [derpmap.json]
  regions:
    - {RegionID: 1, RegionCode: x, Nodes: []}
dns:
  base_domain: ts.example.net
  nameservers:
    global: [1.1.1.1, "2606:4700:4700::1111"]
    split:
      corp.example.com: [10.0.0.53]
  search_domains: [corp.example.com]
  extra_records:
    - {name: grafana.ts.example.net, type: A, value: 100.64.0.3}
node:
  expiry: 90d
  ephemeral:
    inactivity_timeout: 5m
policy:
  mode: file
  path: policy.hujson
log:
  level: DEBUG
  format: json
"""
    )
    cfg = load_config(path, env={}, cwd=tmp_path)
    assert cfg.source == path
    assert cfg.data_dir == tmp_path / "conf" / "data"  # relative to the file's folder
    assert cfg.unix_socket == tmp_path / "conf" / "data" / "trioscale.sock"
    pg = cfg.database.postgres
    assert (pg.host, pg.port, pg.name, pg.user, pg.password, pg.ssl) == ("db.local", 5433, "ts", "ts", "s3cret", "require")
    assert cfg.derp.server.hostname == "derp.example.com"
    assert cfg.derp.server.insecure_for_tests is False  # real certificate
    assert cfg.derp.paths == (tmp_path / "conf" / "derpmap.json",)
    assert cfg.derp.regions[0]["RegionID"] == 1
    assert cfg.dns.nameservers.global_ == ("1.1.1.1", "2606:4700:4700::1111")
    assert cfg.dns.nameservers.split == {"corp.example.com": ("10.0.0.53",)}
    assert cfg.node.expiry == timedelta(days=90)
    assert cfg.node.ephemeral.inactivity_timeout == timedelta(minutes=5)
    assert cfg.policy.path == tmp_path / "conf" / "policy.hujson"
    assert cfg.log.level == "debug" and cfg.log.format == "json"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("90d", timedelta(days=90)),
        ("1h30m", timedelta(minutes=90)),
        ("0", timedelta(0)),
        (45, timedelta(seconds=45)),
        ("45", timedelta(seconds=45)),
        ("2.5", timedelta(seconds=2.5)),
    ],
)
def test_durations(text, expected) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["5x", "h", "-1", "1 h", "", True, "1h-2m"])
def test_bad_durations(bad) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_node_expiry_zero_means_never() -> None:
    assert config_from_dict({"node": {"expiry": 0}}).node.expiry is None
    assert config_from_dict({"node": {"expiry": "0"}}).node.expiry is None
    assert config_from_dict({"node": {"expiry": "1h"}}).node.expiry == timedelta(hours=1)


def test_every_key_has_an_env_override(tmp_path: Path) -> None:
    # a value per kind that differs from the default
    samples = {
        "server_url": "https://x.example.org",
        "listen_addr": "127.0.0.1:1",
        "data_dir": str(tmp_path / "dd"),
        "unix_socket": str(tmp_path / "s.sock"),
        "unix_socket_permission": "0700",
        "health_listen_addr": "127.0.0.1:2",
        "metrics_listen_addr": "127.0.0.1:3",
        "tls_cert_path": str(tmp_path / "tls.crt"),
        "tls_key_path": str(tmp_path / "tls.key"),
        "tls_letsencrypt_hostname": "ctl.example.org",
        "tls_letsencrypt_cache_dir": str(tmp_path / "acme"),
        "tls_letsencrypt_challenge_type": "TLS-ALPN-01",
        "tls_letsencrypt_listen": "127.0.0.1:8081",
        "acme_url": "https://acme.example.org/directory",
        "acme_email": "ops@example.org",
        "admin.listen_addr": "127.0.0.1:3",
        "console.enabled": "true",
        "console.url": "https://admin.example.org",
        "console.admins": "alice@example.com,bob@example.com",
        "console.session_lifetime": "1h",
        "noise.private_key_path": str(tmp_path / "n.key"),
        "prefixes.v4": "100.100.0.0/16",
        "prefixes.v6": "fd7a:115c:a1e0:ab12::/64",
        "prefixes.allocation": "random",
        "database.type": "postgres",
        "database.sqlite.path": str(tmp_path / "x.db"),
        "database.postgres.host": "pg.example",
        "database.postgres.port": "6543",
        "database.postgres.name": "dbn",
        "database.postgres.user": "dbu",
        "database.postgres.password": "dbp",
        "database.postgres.ssl": "true",
        "database.postgres.max_open_conns": "20",
        "database.postgres.conn_max_idle_time_secs": "60",
        "derp.urls": "https://a.example/derp,https://b.example/derp",
        "derp.auto_update_enabled": "true",
        "derp.update_frequency": "1h",
        "derp.server.enabled": "false",
        "derp.server.region_id": "42",
        "derp.server.region_code": "rc",
        "derp.server.region_name": "rn",
        "derp.server.listen_addr": "127.0.0.1:4",
        "derp.server.stun_listen_addr": "127.0.0.1:5",
        "derp.server.private_key_path": str(tmp_path / "d.key"),
        "derp.server.verify_clients": "no",
        "derp.server.tls_cert_path": str(tmp_path / "c.pem"),
        "derp.server.tls_key_path": str(tmp_path / "k.pem"),
        "derp.server.hostname": "derp.example",
        "derp.server.ipv4": "192.0.2.1",
        "derp.server.ipv6": "2001:db8::1",
        "derp.server.insecure_for_tests": "false",
        "derp.server.mesh_key": "mk",
        "derp.server.reuse_port": "yes",
        "derp.server.heartbeat_interval": "3s",
        "derp.server.first_byte_timeout": "4s",
        "derp.server.upgrade_timeout": "7s",
        "derp.server.handshake_timeout": "9s",
        "derp.relay_timeout": "1m",
        "derp.regions": '[{"RegionID": 7, "Nodes": []}]',
        "derp.paths": "a.json,b.json",
        "dns.magic_dns": "false",
        "dns.base_domain": "ts.example.net",
        "dns.override_local_dns": "true",
        "dns.nameservers.global": "1.1.1.1,8.8.8.8",
        "dns.nameservers.split": '{"corp.example": ["10.0.0.1"]}',
        "dns.search_domains": '["a.example", "b.example"]',
        "dns.extra_records": '[{"name": "x.ts.example.net", "type": "A", "value": "100.64.0.9"}]',
        "dns.extra_records_path": str(tmp_path / "extra.json"),
        "dns.listen_addr": "127.0.0.1:6",
        "dns.forward_allowed_from": "10.0.0.0/8,192.0.2.1",
        "policy.mode": "file",
        "policy.path": str(tmp_path / "p.hujson"),
        "node.expiry": "7d",
        "node.ephemeral.inactivity_timeout": "10m",
        "presence.lease": "2m",
        "presence.heartbeat": "20s",
        "log.level": "warning",
        "log.format": "json",
        "limits.control.max_connections": "100",
        "limits.control.max_connections_per_source": "10",
        "limits.derp.max_connections": "101",
        "limits.derp.max_connections_per_source": "11",
        "limits.admin.max_connections": "102",
        "limits.admin.max_connections_per_source": "12",
        "limits.dns.max_connections": "103",
        "limits.dns.max_connections_per_source": "13",
        "limits.health.max_connections": "104",
        "limits.health.max_connections_per_source": "14",
        "limits.reserved_descriptors": "15",
        "control.first_byte_timeout": "5s",
        "control.request_timeout": "6s",
        "control.handshake_timeout": "7s",
        "control.first_request_timeout": "8s",
        "control.request_body_timeout": "9s",
        "control.idle_timeout": "2m",
        "control.max_request_body": "100000",
        "control.max_connection_body": "200000",
        "control.max_buffered_bodies": "300000",
        "control.max_streams": "50",
        "control.max_streams_unregistered": "2",
        "oidc.issuer": "https://id.example",
        "oidc.only_start_if_oidc_is_available": "false",
        "oidc.client_id": "trioscale",
        "oidc.client_secret": "s3cret",
        "oidc.client_secret_path": "",  # with client_secret it would be an error: checked on its own below
        "oidc.scope": "openid,email,groups",
        "oidc.extra_params": '{"domain_hint": "example.com"}',
        "oidc.allowed_domains": "example.com",
        "oidc.allowed_users": "alice@example.com",
        "oidc.allowed_groups": "tailnet",
        "oidc.email_verified_required": "false",
        "oidc.use_expiry_from_token": "true",
        "oidc.pkce.enabled": "true",
        "oidc.pkce.method": "plain",
        "oidc.timeout": "3s",
    }
    assert set(samples) == set(KNOWN_KEYS)
    env = {env_name(k): v for k, v in samples.items()}
    assert env_name("derp.server.listen_addr") == "TRIOSCALE_DERP_SERVER_LISTEN_ADDR"
    assert env_name("database.postgres.host") == "TRIOSCALE_DATABASE_POSTGRES_HOST"
    assert env_name("dns.base_domain") == "TRIOSCALE_DNS_BASE_DOMAIN"
    cfg = load_config(env=env, cwd=tmp_path)
    default = load_config(env={}, cwd=tmp_path)
    from trioscale.config import as_dict

    got, base = as_dict(cfg), as_dict(default)
    for key in KNOWN_KEYS:
        if key != "oidc.client_secret_path":
            assert got[key] != base[key], f"{env_name(key)} did not override {key}"
    alone = {**env, "TRIOSCALE_OIDC_CLIENT_SECRET": "", "TRIOSCALE_OIDC_CLIENT_SECRET_PATH": "/run/secrets/oidc"}
    assert str(load_config(env=alone, cwd=tmp_path).oidc.client_secret_path) == "/run/secrets/oidc"
    assert cfg.derp.paths == (tmp_path / "a.json", tmp_path / "b.json")
    assert cfg.dns.search_domains == ("a.example", "b.example")
    assert cfg.database.postgres.ssl is True
    assert cfg.dns.nameservers.split == {"corp.example": ("10.0.0.1",)}


def test_env_beats_file_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dns:\n  base_domain: from.file\n")
    cfg = load_config(env={"TRIOSCALE_CONFIG": str(path), "TRIOSCALE_DNS_BASE_DOMAIN": "from.env"}, cwd=tmp_path)
    assert cfg.source == path and cfg.dns.base_domain == "from.env"
    # unrelated TRIOSCALE_ variables are ignored
    load_config(env={"TRIOSCALE_CLI_ADDRESS": "http://x", "TRIOSCALE_SOMETHING": "1"}, cwd=tmp_path)


def test_postgres_pass_env_alias(tmp_path: Path) -> None:
    cfg = load_config(env={"TRIOSCALE_DATABASE_POSTGRES_PASS": "pw"}, cwd=tmp_path)
    assert cfg.database.postgres.password == "pw"


@pytest.mark.parametrize(
    "data,key,words",
    [
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"derp": {"server": {"colour": "red"}}}, "derp.server.colour", "unknown key"),
        ({"derp": {"server": {"region_id": "abc"}}}, "derp.server.region_id", "integer"),
        ({"derp": {"server": {"enabled": "maybe"}}}, "derp.server.enabled", "true or false"),
        ({"node": {"expiry": "5 fortnights"}}, "node.expiry", "duration"),
        ({"node": {"ephemeral": {"inactivity_timeout": "soon"}}}, "node.ephemeral.inactivity_timeout", "duration"),
        ({"prefixes": {"v4": "10.0.0.0/8"}}, "prefixes.v4", "outside"),
        ({"prefixes": {"v4": "100.64.0.1/10"}}, "prefixes.v4", "not a network"),
        ({"prefixes": {"v6": "fd00::/8"}}, "prefixes.v6", "outside"),
        ({"prefixes": {"v4": "banana"}}, "prefixes.v4", "not a network"),
        ({"prefixes": {"allocation": "clever"}}, "prefixes.allocation", "sequential"),
        ({"database": {"type": "mysql"}}, "database.type", "sqlite"),
        ({"database": {"postgres": {"ssl": "sometimes"}}}, "database.postgres.ssl", "verify-full"),
        ({"log": {"format": "xml"}}, "log.format", "json"),
        ({"log": {"level": "chatty"}}, "log.level", "debug"),
        ({"policy": {"mode": "magic"}}, "policy.mode", "file"),
        ({"server_url": "hs.example.com"}, "server_url", "URL"),
        ({"listen_addr": "8080"}, "listen_addr", "host:port"),
        ({"dns": {"base_domain": "example.com"}, "server_url": "https://hs.example.com"}, "dns.base_domain", "differ"),
        ({"dns": {"base_domain": "not a domain"}}, "dns.base_domain", "domain"),
        ({"dns": {"nameservers": {"global": "1.1.1.1"}}}, "dns.nameservers.global", "list"),
        ({"dns": {"extra_records": [{"name": "x"}]}}, "dns.extra_records", "value"),
        ({"derp": {"server": {"tls_cert_path": "/x.pem"}}}, "derp.server.tls_cert_path", "both"),
        ({"unix_socket_permission": "rwx"}, "unix_socket_permission", "octal"),
        ({"dns": "yes"}, "dns", "mapping"),
    ],
)
def test_errors_name_the_key(data, key, words) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    assert f"{key}:" in message, message
    assert words.lower() in message.lower(), message


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TRIOSCALE_DERP_SERVER_REGION_ID \(derp.server.region_id\)"):
        load_config(env={"TRIOSCALE_DERP_SERVER_REGION_ID": "x"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="dns.extra_records"):
        load_config(env={"TRIOSCALE_DNS_EXTRA_RECORDS": "[not json"}, cwd=tmp_path)


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_url: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad, env={})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar, env={})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty, env={}).server_url == "http://127.0.0.1:8080"


def test_replace_helpers() -> None:
    cfg = config_from_dict({})
    changed = cfg.replace(**{"derp.server.listen_addr": "127.0.0.1:0", "log.level": "debug"})
    assert changed.derp.server.listen_addr == "127.0.0.1:0" and changed.log.level == "debug"
    assert cfg.derp.server.listen_addr == "127.0.0.1:8443"
    assert isinstance(changed, Config)
    with pytest.raises(Exception):
        cfg.server_url = "x"  # type: ignore[misc]


# -- trioscale configtest ------------------------------------------------------------------------


def _configtest(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("TRIOSCALE_")}
    full.update(env or {})
    return subprocess.run([*TRIOSCALE, *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=60)


def test_configtest_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("log:\n  level: debug\n")
    proc = _configtest("configtest", "-c", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "config OK" in proc.stdout
    proc = _configtest("-c", str(path), "configtest", cwd=tmp_path)
    assert proc.returncode == 0 and "config OK" in proc.stdout
    proc = _configtest("configtest", cwd=tmp_path, env={"TRIOSCALE_CONFIG": str(path)})
    assert proc.returncode == 0 and "config OK" in proc.stdout
    proc = _configtest("configtest", cwd=tmp_path)  # embedded defaults
    assert proc.returncode == 0 and "config OK" in proc.stdout


def test_configtest_bad(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("derp:\n  server:\n    region_id: many\n")
    proc = _configtest("configtest", "-c", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "derp.server.region_id" in lines[0]
    assert "Traceback" not in proc.stderr
    proc = _configtest("configtest", cwd=tmp_path, env={"TRIOSCALE_NODE_EXPIRY": "forever"})
    assert proc.returncode == 1 and "TRIOSCALE_NODE_EXPIRY" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_presence_and_relay_timeouts() -> None:
    cfg = config_from_dict({"presence": {"lease": "6s", "heartbeat": "2s"}, "derp": {"relay_timeout": "5s", "server": {"heartbeat_interval": "1s"}}})
    assert cfg.presence.lease == timedelta(seconds=6) and cfg.presence.heartbeat == timedelta(seconds=2)
    assert cfg.derp.relay_timeout == timedelta(seconds=5)
    with pytest.raises(ConfigError, match="presence.lease"):
        config_from_dict({"presence": {"lease": "5s", "heartbeat": "5s"}})
    with pytest.raises(ConfigError, match="derp.relay_timeout"):
        config_from_dict({"derp": {"relay_timeout": "5s", "server": {"heartbeat_interval": "10s"}}})


def test_override_local_dns_needs_global_nameservers():
    # Headscale's rule: overriding the clients' DNS with nothing would leave them without a resolver
    with pytest.raises(ConfigError, match="dns.override_local_dns"):
        config_from_dict({"dns": {"override_local_dns": True}})
    cfg = config_from_dict({"dns": {"override_local_dns": True, "nameservers": {"global": ["9.9.9.9"]}}})
    assert cfg.dns.nameservers.global_ == ("9.9.9.9",)
