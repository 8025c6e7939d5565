"""Standalone service processes, secret masking in logs, and the key helpers."""

from __future__ import annotations

import logging
import os
import signal
import urllib.request
from io import StringIO
from pathlib import Path

import pytest

from trioscale.log import setup_logging
from trioscale.shared.domain import secrets
from util import TrioscaleServer, free_port, free_ports_config, wait_for


def test_standalone_stun_with_health_endpoint(tmp_path: Path) -> None:
    health = free_port()
    srv = TrioscaleServer(tmp_path, free_ports_config(tmp_path / "data", health_listen_addr=f"127.0.0.1:{health}"),
                          command=("stun",))
    srv.start()
    try:
        assert "stun=" in srv.stdout() and f"health=127.0.0.1:{health}" in srv.stdout()
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/health", timeout=5) as resp:
            assert resp.status == 200
        assert not (tmp_path / "data" / "trioscale.sock").exists()  # no admin API in a stun process
    finally:
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGINT)  # Ctrl-C is a clean exit too
        wait_for(lambda: srv.proc.poll() is not None, 15, "stun process to exit")
    assert srv.proc.returncode == 0, srv.stderr()
    assert "Traceback" not in srv.stderr()


def test_serve_without_the_embedded_relay_opens_no_stun_port(tmp_path: Path) -> None:
    cfg = free_ports_config(tmp_path / "data", derp={"server": {"enabled": False}})
    srv = TrioscaleServer(tmp_path, cfg)
    srv.start()
    try:
        assert "STUN not started with the embedded DERP relay disabled" in srv.stderr() + srv.stdout()
        assert "stun=" not in srv.stdout() and "derp=" not in srv.stdout()
        assert "control=" in srv.stdout() or "Control server URL" in srv.stdout()
    finally:
        srv.stop()


def test_standalone_coord_has_admin_api(tmp_path: Path) -> None:
    srv = TrioscaleServer(tmp_path, free_ports_config(tmp_path / "data"), command=("coord",))
    srv.start()
    try:
        assert "users create alice" in srv.stdout()
        assert srv.cli_json("users", "create", "zoe")["name"] == "zoe"
    finally:
        assert srv.stop() == 0, srv.stderr()


def test_second_server_on_same_socket_fails_cleanly(tmp_path: Path) -> None:
    cfg = free_ports_config(tmp_path / "data")
    first = TrioscaleServer(tmp_path / "a", cfg, command=("coord",)).start()
    try:
        other = dict(cfg, listen_addr=f"127.0.0.1:{free_port()}", admin={"listen_addr": ""}, log={"level": "info"},
                     metrics_listen_addr=f"127.0.0.1:{free_port()}")
        second = TrioscaleServer(tmp_path / "b", other, command=("coord",))
        with pytest.raises(AssertionError, match="exited early with 1"):
            second.start()
        assert "Traceback" not in second.stderr()
        assert second.stderr().strip().splitlines()[-1].startswith("Error: ")
        assert first.cli_ok("users", "list")  # the first one still serves
    finally:
        assert first.stop() == 0


def test_keys_roundtrip_and_errors() -> None:
    new = secrets.generate_preauth_key()
    kind, prefix, secret = secrets.split_key(new.text)
    assert (kind, prefix, secret) == ("auth", new.prefix, new.secret)
    assert len(prefix) == 12 and len(secret) >= 43
    assert secrets.verify(secret, new.key_hash) and not secrets.verify(secret + "x", new.key_hash)
    assert secrets.hash_secret(secret) == new.key_hash
    api = secrets.generate_api_key()
    assert api.text.startswith(f"tskey-api-{api.prefix}-")
    assert secrets.generate_api_key().prefix != api.prefix
    for bad in ("", "hskey-api-x-y", "tskey-auth-short-" + "a" * 43, "tskey-foo-" + "a" * 12 + "-" + "b" * 43,
                "tskey-api-" + "a" * 12 + "-short", "tskey-api"):
        with pytest.raises(secrets.KeyFormatError) as info:
            secrets.split_key(bad)
        assert "b" * 43 not in str(info.value)


def test_logs_mask_secrets() -> None:
    key = secrets.generate_api_key().text
    for fmt in ("text", "json"):
        out = StringIO()
        setup_logging("debug", fmt, stream=out)
        log = logging.getLogger("trioscale.test")
        log.info("plain %s", key)
        log.info("Authorization: Bearer " + key)
        try:
            raise ValueError(key)
        except ValueError:
            log.exception("boom")
        text = out.getvalue()
        secret = key.split("-", 3)[3]
        assert secret not in text
        assert f"tskey-api-{key.split('-')[2]}-****" in text
    setup_logging("info", "text")


def test_trioscale_server_fixture(trioscale_server) -> None:
    srv = trioscale_server(dns={"base_domain": "fixture.test"})
    assert srv.config["dns"]["base_domain"] == "fixture.test"
    assert srv.cli_json("users", "create", "yara")["name"] == "yara"
