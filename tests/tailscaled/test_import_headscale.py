"""Moving a tailnet from a real Headscale (`make headscale`) to trioscale without logging anyone in
again: clients join Headscale (one with a pre-auth key, one with a web login approved on Headscale's
CLI), Headscale stops, `trioscale import headscale` brings its database and Noise key over, and
trioscale starts on the same URL. The same clients come back on their own with their addresses
and names and reach each other; an API key made on Headscale works on our API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from tsclients import NEWEST, OLDEST, clients_dir, missing
from tslab import BASE_DOMAIN, CONTROL_PORT, TRIOSCALE, Tailnet, tools_missing, wait_for

HEADSCALE_VERSION = "0.29.2"


def skip_unless_ready() -> None:
    """As the other tailscaled tests: skip where the machine cannot run this; in CI, where Go
    exists and so the clients and Headscale can be built, a missing program is a failure."""
    reason = tools_missing() or missing(NEWEST) or missing(OLDEST)
    if reason is None and not headscale_binary().exists():
        reason = f"{headscale_binary()} is missing: run `make headscale` (needs Go and the Go module proxy)"
    if reason is None:
        return
    if os.environ.get("CI") and shutil.which("go") and "missing" in reason:
        pytest.fail(reason)
    pytest.skip(reason)


def headscale_binary() -> Path:
    return clients_dir() / f"headscale-{HEADSCALE_VERSION}" / "headscale"


class Headscale:
    """Headscale on lab host "ctl", serving the URL trioscale will take over."""

    def __init__(self, net: Tailnet) -> None:
        self.net = net
        self.dir = net.workdir / "headscale"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ip = net.lab.add_host("ctl")
        self.url = f"http://{self.ip}:{CONTROL_PORT}"
        self.db = self.dir / "db.sqlite"
        self.noise_key = self.dir / "noise_private.key"
        self.config = self.dir / "config.yaml"
        # Headscale refuses to start without a DERP region; nobody serves this one, and the lab's
        # hosts share a segment, so peers meet directly
        derp_map = self.dir / "derp.yaml"
        derp_map.write_text(yaml.safe_dump({"regions": {950: {
            "regionid": 950, "regioncode": "none", "regionname": "unserved",
            "nodes": [{"name": "950a", "regionid": 950, "hostname": "10.77.0.250", "ipv4": "10.77.0.250",
                       "stunport": -1, "derpport": 443}]}}}))
        self.config.write_text(yaml.safe_dump({
            "server_url": self.url,
            "listen_addr": f"0.0.0.0:{CONTROL_PORT}",
            "metrics_listen_addr": "127.0.0.1:19090",
            "grpc_listen_addr": "127.0.0.1:50443",
            "noise": {"private_key_path": str(self.noise_key)},
            "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48", "allocation": "sequential"},
            "derp": {"server": {"enabled": False}, "urls": [], "paths": [str(derp_map)],
                     "auto_update_enabled": False},
            "database": {"type": "sqlite", "sqlite": {"path": str(self.db)}},
            "dns": {"magic_dns": True, "base_domain": BASE_DOMAIN, "override_local_dns": False},
            "unix_socket": str(self.dir / "headscale.sock"),
            "unix_socket_permission": "0770",
            "policy": {"mode": "database"},
            "logtail": {"enabled": False},
            "log": {"level": "debug"},
        }))
        self.log_path = self.dir / "headscale.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Headscale":
        with open(self.log_path, "ab") as log:
            self.proc = self.net.lab.popen("ctl", [str(headscale_binary()), "-c", str(self.config), "serve"],
                                           stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        wait_for(self._healthy, 30, "Headscale to answer /health")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Headscale exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        with self.net.lab.inside("ctl"), urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
            return resp.status == 200

    def stop(self) -> None:
        if self.proc is not None:
            self.net.lab.stop(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> str:
        proc = subprocess.run([str(headscale_binary()), "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=30, cwd=self.dir)
        if proc.returncode != 0:
            raise AssertionError(f"headscale {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "-o", "json"))


def _self(node) -> dict:
    st = node.status()
    assert st.get("BackendState") == "Running", st.get("BackendState")
    return {"ips": sorted(st["Self"]["TailscaleIPs"]), "dns": st["Self"]["DNSName"], "host": st["Self"]["HostName"]}


def _online(srv) -> set[str]:
    """The nodes with a map session open on trioscale (whichever JSON shape `nodes list` has)."""
    return {n.get("given_name") or n.get("givenName") for n in srv.nodes() if n.get("online")}


def _reaches(node, ip: str) -> bool:
    return node.run("ping", "-c", "1", "-W", "2", ip).returncode == 0


@pytest.mark.scenario("moved from Headscale: import, same URL and Noise key, no new login")
def test_clients_move_from_headscale(tmp_path: Path) -> None:
    skip_unless_ready()
    net = Tailnet(tmp_path)
    hs = Headscale(net)
    try:
        hs.start()
        hs.cli("users", "create", "alice")
        alice = next(u for u in hs.cli_json("users", "list") if u["name"] == "alice")
        key = hs.cli_json("preauthkeys", "create", "--user", str(alice["id"]), "--reusable")["key"]
        api_key = hs.cli_json("apikeys", "create")
        assert api_key.startswith("hskey-api-"), api_key

        net.server = hs  # tslab's nodes log in to net.server.url: Headscale's, then trioscale's
        a = net.add_node("a", NEWEST)
        a.up(key)
        b = net.add_node("b", OLDEST)
        proc, auth_id = b.up_interactive()
        hs.cli("auth", "register", "--user", "alice", "--auth-id", auth_id)
        assert proc.wait(60) == 0, proc.stdout.read()
        wait_for(lambda: _reaches(a, b.ipv4()) and _reaches(b, a.ipv4()), 60, "a and b to reach each other on Headscale")
        before = {n.name: _self(n) for n in (a, b)}
        assert before["a"]["dns"] == f"a.{BASE_DOMAIN}." and before["b"]["dns"] == f"b.{BASE_DOMAIN}."

        hs.stop()
        log_marks = {n.name: len(n.log()) for n in (a, b)}
        srv = net.start_server(start=False)
        assert srv.url == hs.url
        imported = subprocess.run(
            [*TRIOSCALE, "-c", str(srv.config_path), "import", "headscale", "--db", str(hs.db),
             "--noise-key", str(hs.noise_key), "-o", "json"],
            capture_output=True, text=True, timeout=60, cwd=srv.dir,
        )
        assert imported.returncode == 0, imported.stderr
        counts = json.loads(imported.stdout)["counts"]
        assert counts["node"]["brought"] == 2 and counts["apikey"]["brought"] == 1, counts
        srv.start()

        # no `tailscale up` from here on: the clients find the server again by themselves (a
        # client keeps its last netmap while control is away, so the server's side says when)
        wait_for(lambda: _online(srv) == {"a", "b"}, 120, "a and b to open map sessions on trioscale")
        for n in (a, b):
            assert _self(n) == before[n.name]
            since = n.log()[log_marks[n.name]:]
            assert "NeedsLogin" not in since and "authURL=true" not in since, since[-3000:]
        wait_for(lambda: _reaches(a, b.ipv4()) and _reaches(b, a.ipv4()), 60, "a and b to reach each other on trioscale")
        assert sorted(n["given_name"] if "given_name" in n else n["givenName"] for n in srv.nodes()) == ["a", "b"]

        # Headscale's API key, on Headscale's URL (server_url/api/v1, as Headplane and scripts call it)
        request = urllib.request.Request(f"{srv.url}/api/v1/user", headers={"Authorization": f"Bearer {api_key}"})
        with net.lab.inside("ctl"), urllib.request.urlopen(request, timeout=10) as resp:
            users = json.loads(resp.read())["users"]
        assert "alice" in {u["name"] for u in users}
    except BaseException:
        print(f"--- headscale ---\n{hs.log()[-5000:]}")
        print(net.diagnostics())
        raise
    finally:
        net.close()
