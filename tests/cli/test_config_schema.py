"""The configuration schema: the records, the environment names and the doc agree with it, every
problem is reported at once, and replace_keys validates."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from trioscale.config import (
    KNOWN_KEYS,
    SCHEMA,
    Config,
    ConfigError,
    as_dict,
    config_from_dict,
    doc_with_table,
    env_name,
    load_config,
    replace_keys,
)
from util import TRIOSCALE

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


# -- the schema and the records --------------------------------------------------------------


def _record_fields(record: type, prefix: str = ""):
    """(attribute path, field) of every field in the record tree, by plain dataclass introspection."""
    for f in dataclasses.fields(record):
        path = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _record_fields(type(default), path + ".")
        else:
            yield path, f


def test_every_record_field_is_a_key_and_every_key_an_attribute() -> None:
    fields = dict(_record_fields(Config))
    del fields["source"]  # where the configuration was read from, not a key
    del fields["unsupported"]  # what the file gave that has no effect here, not a key
    del fields["unknown_env"]  # HEADSCALE_ variables naming no key, not a key
    attribute_paths = {".".join(spec.attrs) for spec in SCHEMA.keys.values()}
    assert attribute_paths == set(fields)
    assert tuple(SCHEMA.keys) == KNOWN_KEYS
    # the file's spelling differs from the attribute only where Python forces it
    renamed = {key: ".".join(spec.attrs) for key, spec in SCHEMA.keys.items() if key != ".".join(spec.attrs)}
    assert renamed == {"dns.nameservers.global": "dns.nameservers.global_"}


def test_annotations_match_the_kinds() -> None:
    fields = dict(_record_fields(Config))
    for key, spec in SCHEMA.keys.items():
        assert fields[".".join(spec.attrs)].type == spec.setting.kind.annotation, key


def test_record_defaults_are_the_schema_defaults() -> None:
    # a bare Config() and the schema agree, the per-listener caps of `limits` included
    assert as_dict(Config()) == SCHEMA.defaults()
    assert Config().limits.admin.max_connections == 256 and Config().limits.control.max_connections == 16384


def test_defaults_are_valid_values_of_their_kind(tmp_path: Path) -> None:
    for key, spec in SCHEMA.keys.items():
        if spec.default is None:
            continue
        # relative paths are relative to where the value came from: the current directory here
        expected = tmp_path / spec.default if isinstance(spec.default, Path) else spec.default
        assert spec.convert(spec.default, tmp_path) == expected, key
        assert spec.check(spec.default) == [], key
    assert SCHEMA.check(SCHEMA.defaults()) == []


def test_every_key_is_documented() -> None:
    for key, spec in SCHEMA.keys.items():
        assert spec.setting.doc.strip(), f"{key} has no description"


# -- environment names -----------------------------------------------------------------------


def test_environment_names_are_derived_and_unique() -> None:
    names = [env_name(k) for k in KNOWN_KEYS]
    assert len(set(names)) == len(names)
    for key in KNOWN_KEYS:
        assert SCHEMA.keys[key].env == env_name(key) == "TRIOSCALE_" + key.upper().replace(".", "_")
        assert SCHEMA.by_env[env_name(key)] == key
    assert SCHEMA.by_env["TRIOSCALE_DATABASE_POSTGRES_PASS"] == "database.postgres.password"  # Headscale's spelling
    assert env_name("dns.nameservers.global") == "TRIOSCALE_DNS_NAMESERVERS_GLOBAL"


def test_environment_values_of_each_list_kind(tmp_path: Path) -> None:
    cfg = load_config(
        env={
            "TRIOSCALE_DNS_NAMESERVERS_GLOBAL": '["9.9.9.9", "1.1.1.1"]',
            "TRIOSCALE_DNS_SEARCH_DOMAINS": "a.example, b.example",
            "TRIOSCALE_DERP_REGIONS": '[{"RegionID": 5, "Nodes": []}]',
            "TRIOSCALE_LIMITS_DNS_MAX_CONNECTIONS": "7",
        },
        cwd=tmp_path,
    )
    assert cfg.dns.nameservers.global_ == ("9.9.9.9", "1.1.1.1")
    assert cfg.dns.search_domains == ("a.example", "b.example")
    assert cfg.derp.regions == ({"RegionID": 5, "Nodes": []},)
    assert cfg.limits.dns.max_connections == 7 and cfg.limits.dns.max_connections_per_source == 32


# -- all problems at once --------------------------------------------------------------------


def test_every_problem_of_a_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "bogus: 1\n"
        "derp:\n  server:\n    region_id: many\n    colour: red\n"
        "log:\n  level: chatty\n"
        "prefixes:\n  v4: 10.0.0.0/8\n"
        "control:\n  max_streams: 2\n  max_streams_unregistered: 3\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"TRIOSCALE_NODE_EXPIRY": "forever"}, cwd=tmp_path)
    lines = str(info.value).splitlines()
    assert lines == info.value.problems
    expected = {
        "bogus": "unknown key",
        "derp.server.colour": "unknown key",
        "derp.server.region_id": "integer",
        "log.level": "debug",
        "prefixes.v4": "outside",
        "control.max_streams_unregistered": "between 1 and control.max_streams",
    }
    assert len(lines) == len(expected) + 1, lines
    for key, words in expected.items():
        (line,) = [line for line in lines if f": {key}: " in line]
        assert line.startswith(f"{path}: ") and words in line, line
    (env_line,) = [line for line in lines if "TRIOSCALE_NODE_EXPIRY" in line]
    assert env_line.startswith("environment TRIOSCALE_NODE_EXPIRY (node.expiry): ")


def test_a_bad_value_is_not_reported_again_by_the_rules_that_read_it() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"presence": {"heartbeat": "soon", "lease": "5s"}})
    assert info.value.problems == [
        "config: presence.heartbeat: expected a duration like 30s, 5m, 1h or 90d, got 'soon'"
    ]
    with pytest.raises(ConfigError) as info:
        config_from_dict({"presence": {"heartbeat": "50ms", "lease": "20ms"}})
    assert len(info.value.problems) == 1 and "presence.heartbeat: must be at least 100ms" in str(info.value)


def test_validation_problems_name_the_variable_that_set_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"TRIOSCALE_PREFIXES_V4": "10.0.0.0/8", "TRIOSCALE_LOG_FORMAT": "xml"}, cwd=tmp_path)
    assert sorted(info.value.problems) == [
        "environment TRIOSCALE_LOG_FORMAT (log.format): expected one of text, json, got 'xml'",
        "environment TRIOSCALE_PREFIXES_V4 (prefixes.v4): 10.0.0.0/8 is outside 100.64.0.0/10 (the only range Tailscale clients accept)",
    ]


def test_every_bad_item_of_a_list_is_reported() -> None:
    records = [
        {"name": "a.tailnet.internal", "type": "A", "value": "100.64.0.1"},
        {"name": "b.tailnet.internal", "type": "MX", "value": "x"},
        {"name": "c.tailnet.internal", "type": "AAAA", "value": "100.64.0.3"},
    ]
    with pytest.raises(ConfigError) as info:
        config_from_dict({"dns": {"extra_records": records, "search_domains": ["ok.example", "no good", "-x"]}})
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert sum("dns.extra_records: item" in p for p in problems) == 2
    assert sum("dns.search_domains: not a domain name" in p for p in problems) == 2


def test_configtest_prints_every_problem(tmp_path: Path) -> None:
    import os

    path = tmp_path / "bad.yaml"
    path.write_text("derp:\n  server:\n    region_id: many\nlog:\n  format: xml\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOSCALE_")}
    proc = subprocess.run(
        [*TRIOSCALE, "configtest", "-c", str(path)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
    assert "derp.server.region_id" in proc.stderr and "log.format" in proc.stderr


# -- replace_keys ----------------------------------------------------------------------------


def test_replace_keys_validates() -> None:
    cfg = config_from_dict({})
    with pytest.raises(ConfigError) as info:
        replace_keys(cfg, {"derp.server.listen_addr": "nowhere", "presence.lease": "1s", "colour": "red"})
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert any("derp.server.listen_addr: expected host:port" in p for p in problems)
    assert any("presence.lease: must be longer than presence.heartbeat" in p for p in problems)
    assert any("colour: unknown key" in p for p in problems)
    with pytest.raises(ConfigError, match="dns.base_domain"):
        replace_keys(config_from_dict({"server_url": "https://hs.example.com"}), {"dns.base_domain": "example.com"})


def test_replace_keys_converts_like_the_file() -> None:
    cfg = config_from_dict({})
    changed = replace_keys(cfg, {"node.expiry": "7d", "log.level": "DEBUG", "dns.nameservers.global": ["9.9.9.9"]})
    assert changed.node.expiry == timedelta(days=7) and changed.log.level == "debug"
    assert changed.dns.nameservers.global_ == ("9.9.9.9",)
    assert replace_keys(cfg, {"dns.nameservers.global_": ("1.1.1.1",)}).dns.nameservers.global_ == ("1.1.1.1",)


def test_replace_keys_takes_a_whole_section() -> None:
    cfg = config_from_dict({})
    other = config_from_dict({"dns": {"magic_dns": False, "search_domains": ["corp.example"]}})
    changed = replace_keys(cfg, {"dns": other.dns})
    assert changed.dns == other.dns and changed.derp == cfg.derp
    with pytest.raises(ConfigError, match="dns"):
        replace_keys(cfg, {"dns": other.derp})
    bad = dataclasses.replace(other.dns, base_domain="not a domain")
    with pytest.raises(ConfigError, match="dns.base_domain: not a domain name"):
        replace_keys(cfg, {"dns": bad})


# -- the doc ---------------------------------------------------------------------------------


def test_the_doc_table_is_the_schema() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert doc_with_table(text) == text, "docs/configuration.md is out of date: python -m trioscale.config --markdown docs/configuration.md"
    for key in KNOWN_KEYS:
        assert f"| `{key}` |" in text and f"`{env_name(key)}`" in text, key


def test_markdown_command_prints_the_table() -> None:
    proc = subprocess.run([sys.executable, "-m", "trioscale.config", "--markdown"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == SCHEMA.markdown()
