#!/usr/bin/env python3
"""Map fan-out across coordinator replicas: N simulated nodes spread over two `trioscale coord`
processes sharing one PostgreSQL; one node (on replica A) changes its endpoints; how long until
every other node, on either replica, has the delta? And the RSS of each replica.

Run by hand (not a test), as root or as a user who may run PostgreSQL (see tests/pgcluster.py):

    .venv/bin/python benchmarks/replica_fanout.py --nodes 1000 --rounds 5

It starts a throwaway PostgreSQL cluster and two coordinators (one shared Noise key) on free
loopback ports, creates a user and a reusable key, then runs the simulated nodes of
benchmarks/map_fanout.py (our own Noise client, all in this process), alternating replicas. The
change travels: lite map request on A -> PostgreSQL (change log + NOTIFY) -> both replicas apply it
-> each fans out to its own sessions. RSS is sampled every 0.5 s; the peak per replica is reported.
Output: one JSON line per N (`--json-out FILE` appends it too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import trio
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from map_fanout import bench, free_port, rss_mib  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

TRIOSCALE = [sys.executable, "-m", "trioscale.cli"]


class Replica:
    def __init__(self, workdir: Path, name: str, pg: PgCluster, noise_key: Path) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cfg = {
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{port}",
            "data_dir": str(self.dir / "data"),
            "noise": {"private_key_path": str(noise_key)},
            "database": {"type": "postgres", "postgres": {"host": pg.host, "port": pg.port,
                                                          "name": pg.database, "user": pg.user}},
            "dns": {"listen_addr": ""},
            "log": {"level": "warning"},
        }
        self.config = self.dir / "trioscale.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = open(self.dir / "coord.log", "wb")
        self.proc = subprocess.Popen([*TRIOSCALE, "--config", str(self.config), "coord"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"coordinator {name} did not start; see {self.dir / 'coord.log'}")
                time.sleep(0.1)

    def cli(self, *args: str) -> str:
        return subprocess.run([*TRIOSCALE, "--config", str(self.config), *args], check=True,
                              capture_output=True, text=True).stdout

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class RssSampler(threading.Thread):
    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {name: 0.0 for name in pids}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            for name, pid in self.pids.items():
                v = rss_mib(pid)
                if v == v:  # not NaN
                    self.peak[name] = max(self.peak[name], v)


def run_one(n: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="replica-fanout-") as tmp, PgCluster() as pg:
        workdir = Path(tmp)
        noise_key = workdir / "noise_private.key"
        from trioscale.shared.proto import keys

        keys.load_or_create_private_key(noise_key)
        replicas = [Replica(workdir, "A", pg, noise_key), Replica(workdir, "B", pg, noise_key)]
        try:
            replicas[0].cli("users", "create", "bench")
            authkey = json.loads(replicas[0].cli("preauthkeys", "create", "--user", "bench", "--reusable",
                                                 "-o", "json"))["key"]
            controls = []
            for r in replicas:
                host, port = r.url.split("://", 1)[1].rsplit(":", 1)
                controls.append((host, int(port)))
            sampler = RssSampler({"A": replicas[0].proc.pid, "B": replicas[1].proc.pid})
            sampler.start()
            res = trio.run(bench, n, rounds, controls, authkey, None)
            sampler.stopped.set()
            sampler.join()
            res["replica_rss_peak_mib"] = {k: round(v, 1) for k, v in sampler.peak.items()}
            res["replica_rss_end_mib"] = {name: round(rss_mib(r.proc.pid), 1)
                                          for name, r in zip("AB", replicas)}
        finally:
            for r in replicas:
                r.stop()
    res["date"] = time.strftime("%Y-%m-%d")
    res["cpus"] = os.cpu_count()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    for n in args.nodes:
        res = run_one(n, args.rounds)
        print(json.dumps(res), flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
