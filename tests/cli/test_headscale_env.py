"""Headscale's environment variables (viper: HEADSCALE_ + the key, `.` -> `_`) set our keys as its
file does, over the file; TRIOSCALE_ keeps working; a HEADSCALE_ variable for a key we do not
implement is reported with the file's, one naming no key is warned about; the CLI reads
HEADSCALE_CONFIG and HEADSCALE_CLI_ADDRESS / _API_KEY / _INSECURE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from trioscale.cli.root import headscale_address
from trioscale.config import ConfigError, load_config
from util import TrioscaleServer, free_ports_config

HEADSCALE_EXAMPLE = Path("/work/shared/reference/headscale/v0.29.2-config-example.yaml")


def test_headscale_variables_set_keys_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server_url": "https://file.example.com", "dns": {"base_domain": "file.net"}}))
    env = {
        "HEADSCALE_SERVER_URL": "https://hs.example.com",
        "HEADSCALE_LISTEN_ADDR": "127.0.0.1:18080",
        "HEADSCALE_DATABASE_TYPE": "sqlite",
        "HEADSCALE_DATABASE_SQLITE_PATH": str(tmp_path / "db.sqlite"),
        "HEADSCALE_DNS_BASE_DOMAIN": "env.net",
        "HEADSCALE_DNS_NAMESERVERS_GLOBAL": "1.1.1.1 8.8.8.8",  # viper splits a list at spaces
        "HEADSCALE_PREFIXES_V4": "100.70.0.0/16",
        "HEADSCALE_LOG_LEVEL": "debug",
        "HEADSCALE_EPHEMERAL_NODE_INACTIVITY_TIMEOUT": "45m",  # an older spelling of ours
    }
    cfg = load_config(path, env)
    assert cfg.server_url == "https://hs.example.com"
    assert cfg.listen_addr == "127.0.0.1:18080"
    assert cfg.database.type == "sqlite" and cfg.database.sqlite.path == tmp_path / "db.sqlite"
    assert cfg.dns.base_domain == "env.net"
    assert cfg.dns.nameservers.global_ == ("1.1.1.1", "8.8.8.8")
    assert cfg.prefixes.v4 == "100.70.0.0/16"
    assert cfg.log.level == "debug"
    assert cfg.node.ephemeral.inactivity_timeout.total_seconds() == 45 * 60
    assert cfg.unsupported == () and cfg.unknown_env == ()


def test_trioscale_variables_still_work_and_a_clash_is_an_error(tmp_path: Path) -> None:
    cfg = load_config(None, {"TRIOSCALE_SERVER_URL": "https://t.example.com"}, cwd=tmp_path)
    assert cfg.server_url == "https://t.example.com"
    same = {"TRIOSCALE_SERVER_URL": "https://t.example.com", "HEADSCALE_SERVER_URL": "https://t.example.com"}
    assert load_config(None, same, cwd=tmp_path).server_url == "https://t.example.com"
    with pytest.raises(ConfigError) as err:
        load_config(None, {"TRIOSCALE_SERVER_URL": "https://a.example.com",
                           "HEADSCALE_SERVER_URL": "https://b.example.com"}, cwd=tmp_path)
    assert "HEADSCALE_SERVER_URL" in str(err.value) and "TRIOSCALE_SERVER_URL" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a bad value names the variable
        load_config(None, {"HEADSCALE_PREFIXES_V4": "not-a-prefix"}, cwd=tmp_path)
    assert "HEADSCALE_PREFIXES_V4" in str(err.value)


def test_unimplemented_and_unknown_variables(tmp_path: Path) -> None:
    env = {"HEADSCALE_GRPC_LISTEN_ADDR": "0.0.0.0:50443", "HEADSCALE_GRPC_ALLOW_INSECURE": "false",
           "HEADSCALE_NO_SUCH_THING": "1", "HEADSCALE_CLI_ADDRESS": "hs.example.com:443",
           "HEADSCALE_CLI_API_KEY": "x", "HEADSCALE_CLI_INSECURE": "true"}
    cfg = load_config(None, env, cwd=tmp_path)
    # grpc_allow_insecure false asks for nothing; the CLI's variables are the CLI's
    assert cfg.unsupported == ("grpc_listen_addr",)
    assert cfg.unknown_env == ("HEADSCALE_NO_SUCH_THING",)
    with pytest.raises(ConfigError) as err:
        load_config(None, env, cwd=tmp_path, strict=True)
    assert "grpc_listen_addr" in str(err.value) and "HEADSCALE_NO_SUCH_THING" in str(err.value)
    assert "HEADSCALE_CLI" not in str(err.value)


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TRIOSCALE_", "HEADSCALE_"))}
    return subprocess.run([sys.executable, "-m", "trioscale.cli", *args], capture_output=True, text=True,
                          env={**clean, **env}, cwd=cwd, timeout=60)


def test_configtest_reads_headscale_config_and_warns_once(tmp_path: Path) -> None:
    env = {"HEADSCALE_CONFIG": str(HEADSCALE_EXAMPLE), "HEADSCALE_NO_SUCH_THING": "1",
           "HEADSCALE_NOISE_PRIVATE_KEY_PATH": str(tmp_path / "noise.key")}
    proc = _cli("configtest", "-o", "json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["source"] == str(HEADSCALE_EXAMPLE) and report["unknownEnv"] == ["HEADSCALE_NO_SUCH_THING"]
    proc = _cli("configtest", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr.count("HEADSCALE_NO_SUCH_THING") == 1, proc.stderr
    proc = _cli("configtest", "--strict", env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "HEADSCALE_NO_SUCH_THING" in proc.stderr


def test_the_headscale_address_speaks_tls() -> None:
    assert headscale_address("hs.example.com:443") == "https://hs.example.com:443"
    assert headscale_address("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert headscale_address("") == ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrioscaleServer]:
    workdir = tmp_path_factory.mktemp("hsenv")
    srv = TrioscaleServer(workdir, free_ports_config(workdir / "data"))
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.stderr()[-4000:]


def test_the_cli_with_headscales_variables(server: TrioscaleServer, tmp_path: Path) -> None:
    server.cli_ok("users", "create", "hanna")
    key = server.cli_ok("apikeys", "create").strip()
    # Headscale's CLI variables, pointed at server_url (the API is there, as on Headscale)
    env = {"HEADSCALE_CLI_ADDRESS": server.config["server_url"], "HEADSCALE_CLI_API_KEY": key}
    proc = _cli("users", "list", "-o", "json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [u["name"] for u in json.loads(proc.stdout)] == ["hanna"]
    proc = _cli("users", "list", "-o", "json", env={**env, "HEADSCALE_CLI_API_KEY": "hskey-api-nope"}, cwd=tmp_path)
    assert proc.returncode == 1 and "error" in json.loads(proc.stderr)
    proc = _cli("users", "list", env={"HEADSCALE_CLI_ADDRESS": server.config["server_url"]}, cwd=tmp_path)
    assert proc.returncode == 1 and "HEADSCALE_CLI_API_KEY" in proc.stderr
