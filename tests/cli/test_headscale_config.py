"""Headscale's configuration file starts trioscale (issue #13): its keys reach the services' options
under Headscale's names, its other spellings are the same settings, and the keys trioscale does not
implement are reported in one warning (refused with --strict)."""

from __future__ import annotations

import logging
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import trio
import yaml

from trioscale.config import SCHEMA, ConfigError, config_from_dict, load_config
from trioscale.configheadscale import RENAMED, SHARED, UNSUPPORTED
from trioscale.options import admin_options, coord_options, derp_options, dns_config_options, registration_policy, stun_options
from trioscale.services.coord.policysource import PolicySource
from util import TRIOSCALE

EXAMPLE = Path(__file__).parent / "data" / "headscale-v0.29.2-config-example.yaml"
DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

#: the keys of the example that ask for something trioscale does not do
EXAMPLE_UNSUPPORTED = (
    "grpc_listen_addr",
    "node.routes.ha.probe_interval",
    "node.routes.ha.probe_timeout",
    "database.gorm.slow_threshold",
)


def _leaves(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" not in UNSUPPORTED:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOSCALE_")}
    return subprocess.run([*TRIOSCALE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


# -- the example file ------------------------------------------------------------------------


def test_the_example_passes_configtest_with_one_warning(tmp_path: Path) -> None:
    proc = _run("configtest", "-c", str(EXAMPLE), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"config OK ({EXAMPLE})\n"
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("Warning: 4 Headscale keys") and "--strict" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == list(EXAMPLE_UNSUPPORTED)
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_example_is_refused_with_strict(tmp_path: Path) -> None:
    proc = _run("configtest", "--strict", "-c", str(EXAMPLE), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == len(EXAMPLE_UNSUPPORTED)
    for line, key in zip(lines, EXAMPLE_UNSUPPORTED):
        assert line.startswith(f"Error: {EXAMPLE}: {key}: ") and "--strict" in line
    proc = _run("serve", "--strict", "-c", str(EXAMPLE), cwd=tmp_path)
    assert proc.returncode == 1 and "grpc_listen_addr" in proc.stderr and "Traceback" not in proc.stderr


def test_every_key_of_the_example_is_known() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for key in _leaves(data):
        assert key in SHARED or key in RENAMED or key in UNSUPPORTED, key
    cfg = load_config(EXAMPLE)
    assert cfg.unsupported == EXAMPLE_UNSUPPORTED


def test_configtest_json_lists_the_unsupported_keys(tmp_path: Path) -> None:
    import json

    proc = _run("configtest", "-o", "json", "-c", str(EXAMPLE), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["ok"] is True and [item["key"] for item in body["unsupported"]] == list(EXAMPLE_UNSUPPORTED)
    assert all(item["reason"] for item in body["unsupported"])
    proc = _run("configtest", "-o", "yaml", "-c", str(EXAMPLE), cwd=tmp_path)
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout) == body


def test_serve_logs_the_warning_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import trioscale.log
    import trioscale.serve
    from trioscale.cli.root import main

    started = []
    monkeypatch.setattr(trioscale.log, "setup_logging", lambda level, fmt: None)
    monkeypatch.setattr(trioscale.serve, "run_services", lambda names, cfg: started.append(cfg) or 0)
    monkeypatch.delenv("TRIOSCALE_CONFIG", raising=False)
    with caplog.at_level(logging.WARNING, logger="trioscale"):
        assert main(["serve", "-c", str(EXAMPLE)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(key in warnings[0] for key in EXAMPLE_UNSUPPORTED)
    assert len(started) == 1 and started[0].unsupported == EXAMPLE_UNSUPPORTED


# -- honoured keys reach the services --------------------------------------------------------


def test_the_examples_keys_reach_the_services() -> None:
    cfg = load_config(EXAMPLE)
    coord = coord_options(cfg)
    assert coord.server_url == "http://127.0.0.1:8080" and coord.listen_addr == "127.0.0.1:8080"
    assert coord.noise_private_key_path == Path("/var/lib/headscale/noise_private.key")
    assert coord.ephemeral_timeout == timedelta(minutes=30)
    assert coord.policy.mode == "file" and coord.policy.path is None
    reg = registration_policy(cfg)
    assert (reg.prefix_v4, reg.prefix_v6, reg.allocation) == ("100.64.0.0/10", "fd7a:115c:a1e0::/48", "sequential")
    assert reg.node_expiry is None  # Headscale's 0: never
    dns = coord.dns
    assert dns.magic_dns and dns.base_domain == "example.com" and dns.override_local_dns
    assert dns.nameservers == ("1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001")
    assert dns.split_nameservers == {} and dns.search_domains == () and dns.extra_records == ()
    derp = derp_options(cfg)
    assert (derp.region_id, derp.region_code, derp.region_name) == (999, "headscale", "Headscale Embedded DERP")
    assert derp.verify_clients and derp.stun_port == 3478
    assert (derp.ipv4, derp.ipv6) == ("198.51.100.1", "2001:db8::1")
    assert derp.private_key_path == Path("/var/lib/headscale/derp_server_private.key")
    assert (stun_options(cfg).listen_host, stun_options(cfg).listen_port) == ("0.0.0.0", 3478)
    assert cfg.derp.server.enabled is False and cfg.derp.paths == ()
    assert coord.derp_map_urls == ("https://controlplane.tailscale.com/derpmap/default",)
    assert coord.derp_map_refresh == timedelta(hours=3)  # derp.auto_update_enabled, derp.update_frequency
    assert coord_options(config_from_dict({"derp": {"urls": ["https://d.example/map"]}})).derp_map_refresh is None
    with pytest.raises(ConfigError, match="derp.urls: expected an http"):
        config_from_dict({"derp": {"urls": ["ftp://d.example/map"]}})
    admin = admin_options(cfg)
    assert admin.unix_socket == Path("/var/run/headscale/headscale.sock") and admin.unix_socket_mode == 0o770
    assert cfg.database.type == "sqlite" and cfg.database.sqlite.path == Path("/var/lib/headscale/db.sqlite")
    assert (cfg.log.level, cfg.log.format) == ("info", "text")


def test_postgres_keys_under_headscales_names() -> None:
    cfg = config_from_dict({"database": {"type": "postgres", "postgres": {
        "host": "db.internal", "port": 5433, "name": "headscale", "user": "hs", "pass": "s3cret", "ssl": "verify-full"}}})
    pg = cfg.database.postgres
    assert (pg.host, pg.port, pg.name, pg.user, pg.password, pg.ssl) == ("db.internal", 5433, "headscale", "hs", "s3cret", "verify-full")
    assert config_from_dict({"database": {"postgres": {"ssl": True}}}).database.postgres.ssl is True


def test_older_spellings_are_the_same_setting(tmp_path: Path) -> None:
    policy = tmp_path / "acl.hujson"
    cfg = config_from_dict({
        "ephemeral_node_inactivity_timeout": "5m",
        "acl_policy_path": str(policy),
        "policy": {"mode": "file"},
        "dns_config": {"magic_dns": False, "base_domain": "hs.test", "override_local_dns": True,
                       "nameservers": ["9.9.9.9"], "restricted_nameservers": {"corp.example": ["10.0.0.53"]},
                       "domains": ["corp.example"], "extra_records": [{"name": "a.hs.test", "type": "A", "value": "100.64.0.9"}]},
    })
    coord = coord_options(cfg)
    assert coord.ephemeral_timeout == timedelta(minutes=5) and coord.policy.path == policy
    dns = dns_config_options(cfg)
    assert not dns.magic_dns and dns.base_domain == "hs.test" and dns.override_local_dns
    assert dns.nameservers == ("9.9.9.9",) and dns.split_nameservers == {"corp.example": ("10.0.0.53",)}
    assert dns.search_domains == ("corp.example",) and dns.extra_records[0]["name"] == "a.hs.test"
    # the same value under both names is one setting given twice
    same = config_from_dict({"ephemeral_node_inactivity_timeout": "5m", "node": {"ephemeral": {"inactivity_timeout": "300s"}}})
    assert same.node.ephemeral.inactivity_timeout == timedelta(minutes=5)


def test_two_names_with_different_values_are_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({
            "ephemeral_node_inactivity_timeout": "5m",
            "node": {"ephemeral": {"inactivity_timeout": "10m"}},
            "database": {"postgres": {"pass": "a", "password": "b"}},
            "log": {"format": "xml"},
        })
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert any("node.ephemeral.inactivity_timeout" in p and "ephemeral_node_inactivity_timeout" in p for p in problems)
    assert any("database.postgres.pass" in p and "database.postgres.password" in p for p in problems)
    assert not any("'a'" in p or "'b'" in p for p in problems)  # a password is never shown
    assert any("log.format" in p for p in problems)  # every problem in one run
    with pytest.raises(ConfigError, match="TRIOSCALE_DATABASE_POSTGRES_PASS"):
        config_from_dict({}, env={"TRIOSCALE_DATABASE_POSTGRES_PASSWORD": "a", "TRIOSCALE_DATABASE_POSTGRES_PASS": "b"})


def test_headscales_value_forms(tmp_path: Path) -> None:
    levels = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning", "error": "error",
              "fatal": "critical", "panic": "critical"}
    for given, level in levels.items():
        assert config_from_dict({"log": {"level": given}}).log.level == level
    for mode in ("0770", "0o770", "770"):
        assert config_from_dict({"unix_socket_permission": mode}).unix_socket_mode == 0o770
    path = tmp_path / "c.yaml"
    path.write_text("unix_socket_permission: 0750\n")  # YAML 1.1: the octal number 488
    assert load_config(path, env={}).unix_socket_mode == 0o750
    cfg = config_from_dict({"node": {"expiry": "180d", "ephemeral": {"inactivity_timeout": "0.5h"}},
                            "prefixes": {"allocation": "random"}})
    assert cfg.node.expiry == timedelta(days=180) and cfg.node.ephemeral.inactivity_timeout == timedelta(minutes=30)
    assert registration_policy(cfg).allocation == "random"


def test_unsupported_keys_are_quiet_when_they_ask_for_nothing() -> None:
    quiet = config_from_dict({
        "trusted_proxies": [], "logtail": {"enabled": False}, "taildrop": {"enabled": True},
        "tls_cert_path": "", "tls_letsencrypt_hostname": "", "acme_url": "https://acme.example/dir",
        "derp": {"urls": [], "auto_update_enabled": True}, "disable_check_updates": False,
        "oidc": {"enabled": True},
    })
    assert quiet.unsupported == ()
    loud = config_from_dict({
        "trusted_proxies": ["10.0.0.0/8"], "logtail": {"enabled": True},
        "oidc": {"expiry": "180d"},
    })
    assert loud.unsupported == ("trusted_proxies", "logtail.enabled", "oidc.expiry")
    # OIDC login is ours since issue #14: Headscale's keys take effect
    oidc = config_from_dict({"oidc": {"issuer": "https://id.example", "client_id": "x", "pkce": {"enabled": True}}})
    assert oidc.unsupported == () and oidc.oidc.client_id == "x" and oidc.oidc.pkce.enabled
    # TLS and ACME are ours since issue #15: Headscale's keys take effect
    acme = config_from_dict({"tls_letsencrypt_hostname": "hs.example.com", "acme_url": "https://acme.example/dir"})
    assert acme.unsupported == () and acme.tls_letsencrypt_hostname == "hs.example.com"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"logtail": {"enabled": True}, "oidc": {"expiry": "180d"}}, strict=True)
    assert [p.split(":")[1].strip() for p in info.value.problems] == ["logtail.enabled", "oidc.expiry"]


def test_keys_neither_server_knows_stay_errors() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"oidc": {"issuer": "https://id.example", "client_id": "x", "clientid": "typo"},
                          "dns": {"use_username_in_magic_dns": True}, "tuning": {"speed": 11},
                          "logtail": {"enabled": True}})
    problems = info.value.problems
    assert len(problems) == 3 and all("unknown key" in p for p in problems), problems
    assert info.value.warnings and "logtail.enabled" in info.value.warnings[0]
    # Headscale 0.29 moved it into the policy; files of earlier releases still start
    assert config_from_dict({"randomize_client_port": True}).unsupported == ("randomize_client_port",)
    assert config_from_dict({"randomize_client_port": False}).unsupported == ()


def test_file_policy_without_a_path_is_no_policy() -> None:
    # Headscale starts without a policy file in file mode: every node may reach every other
    cfg = config_from_dict({"policy": {"mode": "file"}})
    assert coord_options(cfg).policy.path is None
    source = PolicySource(None, mode="file", path=None, tailnet=None, host=None, install=None)  # type: ignore[arg-type]
    assert trio.run(source.initial) == (None, None, None)


# -- the doc ---------------------------------------------------------------------------------


def test_the_doc_lists_every_headscale_key() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Coming from Headscale"):]
    for key in SHARED:
        assert SCHEMA.aliases.get(key, key) in SCHEMA.keys, key
        assert f"`{key}`" in section, key
    for key in list(RENAMED) + list(UNSUPPORTED):
        assert f"| `{key}` |" in section, key


def test_postgres_pool_keys_reach_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    import trioscale.shared.store as store

    opened = {}
    monkeypatch.setattr(store, "open_postgres", lambda dsn=None, **kw: opened.update(kw))
    cfg = config_from_dict({"database": {"type": "postgres", "postgres": {
        "user": "hs", "pass": "pw", "max_open_conns": 25, "conn_max_idle_time_secs": 3600, "max_idle_conns": 10}}})
    store.open_store(cfg)
    assert opened["max_size"] == 25 and opened["max_inactive_connection_lifetime"] == 3600.0
    assert opened["password"] == "pw" and cfg.unsupported == ("database.postgres.max_idle_conns",)
    with pytest.raises(ConfigError, match="max_open_conns"):
        config_from_dict({"database": {"postgres": {"max_open_conns": 0}}})


def test_one_address_family_may_be_off() -> None:
    # Headscale: an empty prefix turns that family off; at least one is needed
    from trioscale.options import dns_options

    cfg = config_from_dict({"prefixes": {"v6": ""}})
    assert registration_policy(cfg).prefix_v6 is None and registration_policy(cfg).prefix_v4 == "100.64.0.0/10"
    assert dns_options(cfg).prefixes == ("100.64.0.0/10",) and dns_config_options(cfg).prefixes == ("100.64.0.0/10",)
    with pytest.raises(ConfigError, match="prefixes.v4: and prefixes.v6 are both empty"):
        config_from_dict({"prefixes": {"v4": "", "v6": ""}})


def test_a_key_without_a_value_keeps_its_default(tmp_path: Path) -> None:
    # Headscale's example: a unix socket in `host`, `port` left blank
    path = tmp_path / "c.yaml"
    path.write_text("database:\n  type: sqlite3\n  postgres:\n    host: /run/postgresql\n    port:\nlog:\n  format: ''\n")
    cfg = load_config(path, env={})
    assert cfg.database.type == "sqlite" and cfg.database.postgres.port == 5432
    assert cfg.database.postgres.host == "/run/postgresql" and cfg.log.format == "text"


def test_configtest_prints_warning_and_every_problem_together(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("grpc_listen_addr: 0.0.0.0:50443\ncolour: red\nlog:\n  level: loud\n")
    proc = _run("configtest", "-c", str(path), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 3 and lines[0].startswith("Warning: ") and "grpc_listen_addr" in lines[0]
    assert lines[1] == f"Error: {path}: colour: unknown key" and lines[2].startswith(f"Error: {path}: log.level: ")


def test_a_server_in_file_mode_without_a_file_allows_all_and_has_nothing_to_set(tmp_path: Path) -> None:
    from util import TrioscaleServer, free_ports_config

    policy = tmp_path / "p.hujson"
    policy.write_text('{"acls": []}')
    config = free_ports_config(tmp_path / "data")
    config["policy"] = {"mode": "file", "path": ""}  # as Headscale's example has it
    srv = TrioscaleServer(tmp_path, config)
    srv.start()
    try:
        got = srv.cli_json("policy", "get")
        assert got["mode"] == "file" and got["policy"] == "" and got["path"] is None
        proc = srv.cli("policy", "set", "-f", str(policy))
        assert proc.returncode == 1 and "no policy.path is set" in proc.stderr
        assert "all traffic is allowed" in srv.stderr()
    finally:
        srv.stop()
