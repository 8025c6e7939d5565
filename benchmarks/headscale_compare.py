#!/usr/bin/env python3
"""trioscale against Headscale, same machine, same load generator, one run (issue #16).

For each size, the two servers run one after the other (trioscale first at one size, Headscale
first at the next, so neither always gets the quieter minute), each on an empty SQLite database,
no policy (full mesh). The simulated nodes are map_fanout.py's (our Noise client, all in this
process): each registers with a reusable pre-auth key and streams its map; then `--rounds` times
one node sends new endpoints and every other node waits for them.

Measured per server and size: the join storm's wall time (setup), the server's CPU seconds for it
(`/proc/<pid>/stat`, what a loaded machine does not inflate), one change's p50/p99 to all peers,
and the server's RSS. Headscale v0.29.2 comes from `make headscale`
(~/.cache/trioscale/clients/headscale-0.29.2/headscale).

    .venv/bin/python benchmarks/headscale_compare.py --nodes 500 1000 2000 --json-out /tmp/cmp.jsonl

Prints one markdown table with ratios (Headscale / trioscale: above 1 means trioscale is ahead).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import trio
import yaml

import map_fanout
from map_fanout import Server, bench, free_port, wait_healthy

HEADSCALE = Path(os.environ.get("TRIOSCALE_CLIENTS_DIR", Path.home() / ".cache" / "trioscale" / "clients")) \
    / "headscale-0.29.2" / "headscale"


class Headscale:
    """Headscale on loopback ports with an empty SQLite database, no policy, DERP off."""

    def __init__(self, workdir: Path) -> None:
        if not HEADSCALE.exists():
            raise SystemExit(f"{HEADSCALE} is missing: run `make headscale`")
        self.dir = workdir
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        derp_map = workdir / "derp.yaml"
        derp_map.write_text(yaml.safe_dump({"regions": {950: {
            "regionid": 950, "regioncode": "none", "regionname": "unserved",
            "nodes": [{"name": "950a", "regionid": 950, "hostname": "127.0.0.9", "stunport": -1, "derpport": 443}]}}}))
        self.config = workdir / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{port}",
            "metrics_listen_addr": f"127.0.0.1:{free_port()}",
            "grpc_listen_addr": f"127.0.0.1:{free_port()}",
            "noise": {"private_key_path": str(workdir / "noise_private.key")},
            "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48", "allocation": "sequential"},
            "derp": {"server": {"enabled": False}, "urls": [], "paths": [str(derp_map)], "auto_update_enabled": False},
            "database": {"type": "sqlite", "sqlite": {"path": str(workdir / "db.sqlite"), "write_ahead_log": True}},
            "dns": {"magic_dns": True, "base_domain": "ts.test", "override_local_dns": False},
            "unix_socket": str(workdir / "headscale.sock"),
            "unix_socket_permission": "0770",
            "policy": {"mode": "database"},
            "logtail": {"enabled": False},
            "log": {"level": "warn"},
        }))
        self.proc = subprocess.Popen([str(HEADSCALE), "-c", str(self.config), "serve"], cwd=workdir,
                                     stdout=open(workdir / "headscale.log", "wb"), stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.proc, 30, f"Headscale did not start; see {workdir / 'headscale.log'}")

    def cli(self, *args: str) -> str:
        return subprocess.run([str(HEADSCALE), "-c", str(self.config), *args], check=True, capture_output=True,
                              text=True, cwd=self.dir, timeout=60).stdout

    def authkey(self) -> str:
        self.cli("users", "create", "bench")
        user = next(u for u in json.loads(self.cli("users", "list", "-o", "json")) if u["name"] == "bench")
        return json.loads(self.cli("preauthkeys", "create", "--user", str(user["id"]), "--reusable",
                                   "--expiration", "24h", "-o", "json"))["key"]

    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def trioscale_authkey(server: Server) -> str:
    server.cli("users", "create", "bench")
    return json.loads(server.cli("preauthkeys", "create", "--user", "bench", "--reusable", "-o", "json"))["key"]


def run_one(kind: str, n: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = Server(workdir) if kind == "trioscale" else Headscale(workdir)
        try:
            authkey = trioscale_authkey(server) if kind == "trioscale" else server.authkey()
            host, port = server.url.split("://", 1)[1].rsplit(":", 1)
            res = trio.run(functools.partial(bench, n, rounds, [(host, int(port))], authkey, server.pid()))
        finally:
            server.stop()
    res["server"] = kind
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return res


ROWS = [("join storm (s)", "setup_s"), ("server CPU for it (s)", "server_cpu_s"),
        ("quiet after the storm (s)", "drain_s"),
        ("one change p50 (ms)", "p50_ms"), ("one change p99 (ms)", "p99_ms"),
        ("receivers missed after 60 s", "missed_after_60s"), ("server RSS (MiB)", "server_rss_mib")]


def table(results: list[dict]) -> str:
    sizes = sorted({r["nodes"] for r in results})
    lines = ["| nodes | measure | trioscale | Headscale | Headscale / trioscale |", "|---|---|---|---|---|"]
    for n in sizes:
        ours = next((r for r in results if r["nodes"] == n and r["server"] == "trioscale"), None)
        theirs = next((r for r in results if r["nodes"] == n and r["server"] == "headscale"), None)
        if ours is None or theirs is None:
            continue
        for label, key in ROWS:
            a, b = ours.get(key), theirs.get(key)
            ratio = f"{b / a:.2f}" if a and b else "n/a"
            lines.append(f"| {n:,} | {label} | {a} | {b} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[500, 1000, 2000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    gc.set_threshold(100_000, 50, 100)  # the load generator's heap (map_fanout.main says why)
    results = []
    for i, n in enumerate(args.nodes):
        order = ["trioscale", "headscale"] if i % 2 == 0 else ["headscale", "trioscale"]
        for kind in order:
            res = run_one(kind, n, args.rounds)
            res["load_after"] = os.getloadavg()
            print(json.dumps(res), flush=True)
            results.append(res)
            if args.json_out:
                with open(args.json_out, "a") as f:
                    f.write(json.dumps(res) + "\n")
    print(table(results))


if __name__ == "__main__":
    map_fanout.QUIET_S = 3.0
    main()
