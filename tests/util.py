"""Small helpers shared by the test suite: free ports, and a real `trioscale serve` subprocess.

    from util import free_port, TrioscaleServer     # tests/ is on sys.path (rootdir conftest)
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

#: how to run the CLI (works without the console script on PATH)
TRIOSCALE = [sys.executable, "-m", "trioscale.cli"]
READY_TEXT = "trioscale is running"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


#: Ports handed to a subprocess are picked below the kernel's ephemeral range: a port the OS
#: picked with bind(0) comes from that range, and in the second or two before the server binds
#: it any outgoing connection on the machine may take it as its local end (CI lost a run to this:
#: the DNS port, free when picked, was in use when `trioscale serve` bound it). Below the range
#: only another explicit bind can take a port.
_PICK_LOW = 15000
_PICK_HIGH = _ephemeral_range()[0]
_recently_picked: dict[int, None] = {}
_RECENT_KEEP = 2048
#: ports tests bind by number rather than asking for one: the Caddy clients' local proxy ports
#: (e2e.harness.client_caddyfile, 18080 and 18081). Handed to a server's DNS listener, 18080 made
#: a Caddy client fail to start (its config could not bind) and its test time out.
RESERVED_PORTS = frozenset({18080, 18081})
#: its own generator: hypothesis seeds the module-level one inside its tests
_random = random.Random()


def _bind_free(port: int, kinds: Sequence[int], host: str) -> bool:
    socks: list[socket.socket] = []
    try:
        for kind in kinds:
            s = socket.socket(socket.AF_INET, kind)
            socks.append(s)
            s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _pick(kinds: Sequence[int], host: str) -> int:
    if _PICK_HIGH - _PICK_LOW >= 4096:
        for _ in range(500):
            port = _random.randrange(_PICK_LOW, _PICK_HIGH)
            # not one handed out moments ago that its server has not bound yet
            if port in _recently_picked or port in RESERVED_PORTS or not _bind_free(port, kinds, host):
                continue
            _recently_picked[port] = None
            if len(_recently_picked) > _RECENT_KEEP:
                del _recently_picked[next(iter(_recently_picked))]
            return port
    # no room below the ephemeral range on this machine: let the OS choose
    for _ in range(100):
        with socket.socket(socket.AF_INET, kinds[0]) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS and _bind_free(port, kinds, host):
            return port
    raise RuntimeError(f"no free port for {len(kinds)} socket kind(s) on {host}")


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (TCP by default; socket.SOCK_DGRAM for UDP)."""
    return _pick((kind,), host)


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_DGRAM, host)


def free_tcp_udp_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP right now (the DNS service binds both on one port)."""
    return _pick((socket.SOCK_STREAM, socket.SOCK_DGRAM), host)


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL when it has not exited after 10 s; nothing for a process already gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


class ServerCli:
    """`trioscale` CLI helpers for a test server: a class that has `config_path` and `cli_cwd`
    (the server's folder) gets `cli`, `cli_json` and the look-ups the tests use."""

    config_path: Path
    cli_cwd: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "trioscale.cli", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=60, cwd=self.cli_cwd)
        if check and proc.returncode != 0:
            raise AssertionError(f"trioscale {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def create_user(self, name: str) -> dict:
        return self.cli_json("users", "create", name)

    def create_key(self, user: str, *flags: str) -> str:
        return self.cli_json("preauthkeys", "create", "--user", user, *flags)["key"]

    def nodes(self) -> list[dict]:
        return self.cli_json("nodes", "list")

    def node_named(self, name: str) -> dict | None:
        for node in self.nodes():
            if name in (node.get("givenName"), node.get("name")):
                return node
        return None


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def free_ports_config(data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A config dict with every listen address on 127.0.0.1:<free port> and `data_dir`."""
    control = free_port()
    cfg: dict[str, Any] = {
        "server_url": f"http://127.0.0.1:{control}",
        "listen_addr": f"127.0.0.1:{control}",
        "data_dir": str(data_dir),
        "admin": {"listen_addr": f"127.0.0.1:{free_port()}"},
        "derp": {
            "server": {
                "listen_addr": f"127.0.0.1:{free_port()}",
                "stun_listen_addr": f"127.0.0.1:{free_udp_port()}",
            }
        },
        "dns": {"listen_addr": f"127.0.0.1:{free_tcp_udp_port()}"},
        "metrics_listen_addr": f"127.0.0.1:{free_port()}",
        "log": {"level": "debug"},
    }
    return deep_merge(cfg, overrides)


class TrioscaleServer:
    """`trioscale [-c FILE] <command>` as a subprocess with captured stdout/stderr; stopped by PID."""

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        *,
        command: Sequence[str] = ("serve",),
        env: Mapping[str, str] | None = None,
        use_config_file: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config) if config is not None else free_ports_config(self.workdir / "data")
        self.config_path: Path | None = None
        if use_config_file:
            self.config_path = self.workdir / "trioscale.yaml"
            self.config_path.write_text(yaml.safe_dump(self.config))
        self.command = list(command)
        self.env = dict(os.environ)
        for name in [n for n in self.env if n.startswith("TRIOSCALE_")]:
            del self.env[name]
        self.env.update(env or {})
        self.stdout_path = self.workdir / "stdout.txt"
        self.stderr_path = self.workdir / "stderr.txt"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- derived ---------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.config["data_dir"])

    @property
    def admin_url(self) -> str:
        return "http://" + self.config["admin"]["listen_addr"]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "db.sqlite"

    def _base_args(self) -> list[str]:
        return [*TRIOSCALE, *(["-c", str(self.config_path)] if self.config_path else [])]

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "TrioscaleServer":
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [*self._base_args(), *self.command],
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env=self.env,
            )
        finally:
            out.close()
            err.close()
        wait_for(self._ready, timeout, f"`trioscale {' '.join(self.command)}` to start")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"trioscale exited early with {self.proc.returncode}:\n{self.stdout()}\n{self.stderr()}"
            )
        return READY_TEXT in self.stdout()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by PID, wait; SIGKILL if it hangs. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    # -- CLI -------------------------------------------------------------------------------------
    def cli(self, *args: str, env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
        full_env = dict(self.env)
        full_env.update(env or {})
        return subprocess.run(
            [*self._base_args(), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.workdir,
            env=full_env,
            input=input,
        )

    def cli_ok(self, *args: str) -> str:
        proc = self.cli(*args)
        if proc.returncode != 0:
            raise AssertionError(f"trioscale {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli_ok(*args, "-o", "json"))
