"""The multi-host topology of issue 6, built from netlab hosts:

    pg      PostgreSQL (tests/pgcluster.py, started inside the host)
    coordA  `trioscale coord` replica A        coordB  `trioscale coord` replica B
    lb      tcplb.py on :8080 -> coordA:8080, coordB:8080 (round robin, re-dials on failure)
    r1a r1b `trioscale derp` + `trioscale stun`, region 1 (mesh key shared)
    r2      `trioscale derp` + `trioscale stun`, region 2
    r3      empty; a test starts a relay of region 3 there
    c1 c2   real clients (caddy with tsnet)      c3 c4  real clients forced through DERP (mesh test)
    tester  the test process's own sockets (sim Noise clients) go here (Lab.inside("tester"))

Every service shares the one PostgreSQL database. Clients use http://<lb>:8080 as control URL.
Presence leases and relay timeouts are short so the tests do not wait long.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from netlab import Lab  # noqa: E402  (tests/multihost on sys.path, see conftest)

TRIOSCALE = [sys.executable, "-m", "trioscale.cli"]
HERE = Path(__file__).parent

CONTROL_PORT = 8080
DERP_PORT = 8443
STUN_PORT = 3478
LEASE = 4.0  # presence.lease (s)
HEARTBEAT = 1.0  # presence.heartbeat and derp.server.heartbeat_interval (s)
RELAY_TIMEOUT = 3.0  # derp.relay_timeout (s)
BASE_DOMAIN = "mh.test"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


class Service:
    """One trioscale process on one lab host."""

    def __init__(self, cluster: "Cluster", host: str, name: str, command: str, config: dict[str, Any]) -> None:
        self.cluster = cluster
        self.host = host
        self.name = name
        self.command = command
        self.dir = cluster.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "trioscale.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / f"{command}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Service":
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        try:
            self.proc = self.cluster.lab.popen(
                self.host,
                [*TRIOSCALE, "--config", str(self.config_path), self.command],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return "trioscale is running" in self.log()[self._log_from:]

        wait_for(ready, timeout, f"{self.name} ({self.command}) to start", interval=0.05)

    def stop(self, signal_first: int | None = None) -> int | None:
        import signal

        if self.proc is None:
            return None
        code = Lab.stop(self.proc, first=signal_first or signal.SIGTERM)
        return code

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*TRIOSCALE, "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=60, cwd=self.dir,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"trioscale {' '.join(args)} via {self.name} failed: {proc.stderr}")
        return proc

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.lab = Lab()
        self.sockdir = Path(tempfile.mkdtemp(prefix="tsl"))  # short unix socket paths
        self.services: dict[str, Service] = {}
        self.pg = None
        self.lb: subprocess.Popen | None = None
        self.mesh_key = secrets.token_hex(32)

    # -- configuration -------------------------------------------------------------------------
    def base_config(self, name: str) -> dict[str, Any]:
        return {
            "server_url": f"http://{self.lab.ip('lb')}:{CONTROL_PORT}",
            "data_dir": str(self.workdir / name / "data"),
            "unix_socket": str(self.sockdir / f"{name}.sock"),
            "noise": {"private_key_path": str(self.workdir / "noise_private.key")},
            "database": {
                "type": "postgres",
                "postgres": {"host": self.pg.host, "port": self.pg.port, "name": self.pg.database,
                             "user": self.pg.user},
            },
            "dns": {"base_domain": BASE_DOMAIN, "listen_addr": ""},
            "presence": {"lease": f"{LEASE}s", "heartbeat": f"{HEARTBEAT}s"},
            "derp": {"relay_timeout": f"{RELAY_TIMEOUT}s", "server": {"heartbeat_interval": f"{HEARTBEAT}s"}},
            "log": {"level": "debug"},
        }

    def coord(self, name: str, host: str) -> Service:
        cfg = self.base_config(name)
        cfg["listen_addr"] = f"{self.lab.ip(host)}:{CONTROL_PORT}"
        return self._service(host, name, "coord", cfg)

    def relay(self, name: str, host: str, region: int, command: str = "derp") -> Service:
        ip = self.lab.ip(host)
        cfg = self.base_config(name)
        cfg["derp"]["server"].update({
            "region_id": region, "region_code": f"mh{region}", "region_name": f"multihost region {region}",
            # all addresses, so /debug/stats answers on 127.0.0.1 inside the host; published as `ip`
            "listen_addr": f"0.0.0.0:{DERP_PORT}", "stun_listen_addr": f"{ip}:{STUN_PORT}", "hostname": ip,
            "mesh_key": self.mesh_key,
        })
        if command == "stun":
            cfg["health_listen_addr"] = ""
        return self._service(host, f"{name}-{command}", command, cfg)

    def _service(self, host: str, name: str, command: str, cfg: dict[str, Any]) -> Service:
        svc = Service(self, host, name, command, cfg)
        self.services[name] = svc
        return svc

    # -- building ------------------------------------------------------------------------------
    def build(self) -> "Cluster":
        from pgcluster import PgCluster

        for host in ("pg", "coordA", "coordB", "lb", "r1a", "r1b", "r2", "r3", "c1", "c2", "c3", "c4", "tester"):
            self.lab.add_host(host)
        class LabPg(PgCluster):
            def _start_server(self) -> None:  # trust the lab subnet, not only loopback
                hba = self.datadir / "pg_hba.conf"
                line = "host all all 10.77.0.0/24 trust\n"
                if line not in hba.read_text():
                    with open(hba, "a") as f:
                        f.write(line)
                super()._start_server()

        pg = LabPg()
        pg.host = self.lab.ip("pg")
        self.pg = pg
        with self.lab.inside("pg"):  # the server process is forked from this thread: it runs in "pg"
            pg.start()
        from trioscale.shared.proto import keys

        keys.load_or_create_private_key(self.workdir / "noise_private.key")  # one key for all replicas
        self.a = self.coord("coordA", "coordA")
        self.b = self.coord("coordB", "coordB")
        self.a.start(wait=False)
        self.b.start(wait=False)
        self.a.wait_ready()
        self.b.wait_ready()
        self.start_lb()
        for name, host, region in (("r1a", "r1a", 1), ("r1b", "r1b", 1), ("r2", "r2", 2)):
            self.relay(name, host, region, "stun").start(wait=False)
            self.relay(name, host, region, "derp").start(wait=False)
        for svc in self.services.values():
            if svc.command in ("stun", "derp"):
                svc.wait_ready()
        return self

    def start_lb(self) -> None:
        lb = self.lab.ip("lb")
        self.lb_log = self.workdir / "lb.log"
        with open(self.lb_log, "ab") as log:
            self.lb = self.lab.popen(
                "lb",
                [sys.executable, str(HERE / "tcplb.py"), f"{lb}:{CONTROL_PORT}",
                 f"{self.lab.ip('coordA')}:{CONTROL_PORT}", f"{self.lab.ip('coordB')}:{CONTROL_PORT}"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "ready" in self.lb_log.read_text(), 20, "the load balancer")

    def restart_postgres(self) -> None:
        """Stop and start PostgreSQL (same host, port and data): every connection breaks."""
        with self.lab.inside("pg"):
            self.pg.restart()

    @property
    def control_url(self) -> str:
        return f"http://{self.lab.ip('lb')}:{CONTROL_PORT}"

    def control(self, host: str) -> tuple[str, int]:
        return self.lab.ip(host), CONTROL_PORT

    def http_get(self, host: str, url: str, timeout: float = 5.0) -> tuple[int, str]:
        with self.lab.inside(host):
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return resp.status, resp.read().decode(errors="replace")
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode(errors="replace")

    def derp_stats(self, host: str) -> dict:
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with self.lab.inside(host):
            with urllib.request.urlopen(f"https://127.0.0.1:{DERP_PORT}/debug/stats", timeout=3, context=ctx) as r:
                return json.loads(r.read())

    def diagnostics(self) -> str:
        parts = []
        for name, svc in self.services.items():
            parts.append(f"--- {name} ({'alive' if svc.alive() else 'dead'}) ---\n{svc.log()[-2500:]}")
        return "\n".join(parts)

    def close(self) -> None:
        try:
            for svc in reversed(list(self.services.values())):
                if svc.alive():
                    svc.stop()
            if self.lb is not None:
                Lab.stop(self.lb)
            if self.pg is not None:
                self.pg.cleanup()
        finally:
            self.lab.close()
            shutil.rmtree(self.sockdir, ignore_errors=True)
