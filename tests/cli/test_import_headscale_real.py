"""`trioscale import headscale` from databases a real Headscale wrote (`make headscale`), on SQLite
and on PostgreSQL: its own time, key, JSON and bcrypt forms, its own migrations. The keys it handed
out keep working here."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from pgfixtures import pg_cluster  # noqa: F401  (the session cluster fixture)
from trioscale.importer.apply import ImportReport, import_tailnet
from trioscale.importer.headscale_db import read_postgres, read_sqlite
from trioscale.importer.headscale_records import convert
from trioscale.services.coord.admin.api import api_key_accepted
from trioscale.services.coord.register import check_auth_key
from trioscale.shared.store import open_sqlite
from util import free_port, wait_for

HEADSCALE_VERSION = "0.29.2"
POLICY = '{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}]}'


def headscale_binary() -> Path:
    base = Path(os.environ.get("TRIOSCALE_CLIENTS_DIR", Path.home() / ".cache" / "trioscale" / "clients"))
    return base / f"headscale-{HEADSCALE_VERSION}" / "headscale"


class RealHeadscale:
    """Headscale on loopback ports, driven by its own CLI, to fill a database the way it does."""

    def __init__(self, workdir: Path, database: dict) -> None:
        if not headscale_binary().exists():
            pytest.skip(f"{headscale_binary()} is missing: run `make headscale` (needs Go and the Go module proxy)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        derp_map = self.dir / "derp.yaml"
        derp_map.write_text(yaml.safe_dump({"regions": {950: {
            "regionid": 950, "regioncode": "none", "regionname": "unserved",
            "nodes": [{"name": "950a", "regionid": 950, "hostname": "127.0.0.9", "stunport": -1, "derpport": 443}]}}}))
        self.config = self.dir / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{port}",
            "metrics_listen_addr": f"127.0.0.1:{free_port()}",
            "grpc_listen_addr": f"127.0.0.1:{free_port()}",
            "noise": {"private_key_path": str(self.dir / "noise_private.key")},
            "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48", "allocation": "sequential"},
            "derp": {"server": {"enabled": False}, "urls": [], "paths": [str(derp_map)], "auto_update_enabled": False},
            "database": database,
            "dns": {"magic_dns": True, "base_domain": "ts.test", "override_local_dns": False},
            "unix_socket": str(self.dir / "headscale.sock"),
            "unix_socket_permission": "0770",
            "policy": {"mode": "database"},
            "logtail": {"enabled": False},
        }))
        self.log_path = self.dir / "headscale.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(headscale_binary()), "-c", str(self.config), "serve"],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        wait_for(self._healthy, 30, "Headscale to answer /health")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Headscale exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def cli(self, *args: str) -> str:
        proc = subprocess.run([str(headscale_binary()), "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=30, cwd=self.dir)
        assert proc.returncode == 0, f"headscale {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "-o", "json"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def fill(self) -> dict:
        """Users, keys, one node registered through a pending login, a policy: what it handed out."""
        self.cli("users", "create", "alice", "--email", "alice@example.com", "--display-name", "Alice")
        self.cli("users", "create", "bob")
        alice = next(u for u in self.cli_json("users", "list") if u["name"] == "alice")
        reusable = self.cli_json("preauthkeys", "create", "--user", str(alice["id"]), "--reusable")["key"]
        once = self.cli_json("preauthkeys", "create", "--user", str(alice["id"]))["key"]
        api_key = self.cli_json("apikeys", "create")
        auth_id = "hskey-authreq-" + "A1b2C3d4E5f6G7h8I9j0K1l2"
        self.cli("debug", "create-node", "--name", "box", "--user", "alice", "--key", auth_id, "--route", "10.9.0.0/24")
        self.cli("auth", "register", "--user", "alice", "--auth-id", auth_id)
        policy = self.dir / "policy.json"
        policy.write_text(POLICY)
        self.cli("policy", "set", "-f", str(policy))
        node = next(n for n in self.cli_json("nodes", "list") if n["name"] == "box")
        self.stop()
        return {"reusable": reusable, "once": once, "api_key": api_key, "node": node}


async def _check_imported(store, data, handed: dict) -> None:
    report = await import_tailnet(store, convert(data), ImportReport())
    # a release build records its version; one built from the module in place says "dev" and records none
    assert data.version in (f"v{HEADSCALE_VERSION}", ""), data.version
    assert {o.result for o in report.outcomes} == {"brought"}, report.outcomes
    users = {u.name: u for u in await store.list_users()}
    assert {"alice", "bob"} <= set(users) and users["alice"].email == "alice@example.com"
    nodes = await store.list_nodes()
    assert [n.given_name for n in nodes] == ["box"]
    box = nodes[0]
    assert [box.ipv4, box.ipv6] == handed["node"].get("ipAddresses", handed["node"].get("ip_addresses"))
    assert box.user_id == users["alice"].id and box.expiry is None
    assert box.created_at.year == datetime.now(timezone.utc).year
    assert await api_key_accepted(store, f"Bearer {handed['api_key']}")
    assert (await check_auth_key(store, handed["reusable"], datetime.now(timezone.utc))).reusable
    assert not (await check_auth_key(store, handed["once"], datetime.now(timezone.utc))).used
    assert (await store.get_policy()).text.strip() == POLICY
    again = await import_tailnet(store, convert(data), ImportReport())
    assert {o.result for o in again.outcomes} == {"already here"}


async def test_from_headscale_on_sqlite(tmp_path: Path) -> None:
    hs = RealHeadscale(tmp_path / "hs", {"type": "sqlite", "sqlite": {"path": str(tmp_path / "hs" / "db.sqlite")}})
    handed = hs.fill()
    async with open_sqlite(tmp_path / "trioscale.db") as store:
        await _check_imported(store, read_sqlite(tmp_path / "hs" / "db.sqlite"), handed)


@pytest.mark.postgres
async def test_from_headscale_on_postgres(tmp_path: Path, pg_cluster) -> None:  # noqa: F811
    name = f"headscale{os.getpid()}"
    pg_cluster.create_database(name)
    try:
        hs = RealHeadscale(tmp_path / "hs", {"type": "postgres", "postgres": {
            "host": pg_cluster.host, "port": pg_cluster.port, "name": name, "user": pg_cluster.user,
            "pass": "", "ssl": "false"}})
        handed = hs.fill()
        data = await _read_in_thread(pg_cluster.dsn_for(name))
        async with open_sqlite(tmp_path / "trioscale.db") as store:
            await _check_imported(store, data, handed)
    finally:
        pg_cluster.drop_database(name)


async def _read_in_thread(dsn: str):
    import trio

    # read_postgres runs its own asyncio loop, as the CLI calls it before Trio starts
    return await trio.to_thread.run_sync(read_postgres, dsn)
