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

Bulk mode, for sizes where joining one by one cannot be set up (every join is news to every
connected node, and every first map lists every peer):

    .venv/bin/python benchmarks/replica_fanout.py --bulk --visible 100 --nodes 10000 --rounds 20

writes the N nodes straight into PostgreSQL with the Store API before the replicas start (N/K users
of K nodes each, with the keys, addresses, disco key and Hostinfo each simulated node will then
present, so its map request changes nothing), and a policy under which every node sees only its
own user's nodes (`autogroup:member` -> `autogroup:self:*`). The replicas then load it all once at
start; the simulated nodes only open their map streams (no /machine/register), alternating
replicas. Each round moves a node of a different user and waits for its K-1 peers (on both
replicas).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from map_fanout import SimNode, bench, bench_tsp, cpu_s, free_port, rss_mib, run_cli, store_operations, wait_healthy  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

TRIOSCALE = [sys.executable, "-m", "trioscale.cli"]


class Replica:
    def __init__(self, workdir: Path, name: str, pg: PgCluster, noise_key: Path, port: int | None = None) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_port = free_port()
        cfg = {
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{port}",
            "data_dir": str(self.dir / "data"),
            "noise": {"private_key_path": str(noise_key)},
            "database": {"type": "postgres", "postgres": {"host": pg.host, "port": pg.port,
                                                          "name": pg.database, "user": pg.user}},
            "dns": {"listen_addr": ""},
            # on a port of its own: two replicas on one host would fight over the fixed default
            "metrics_listen_addr": f"127.0.0.1:{self.metrics_port}",
            # every simulated node comes from 127.0.0.1: one source may hold them all
            "limits": {"control": {"max_connections": 12000, "max_connections_per_source": 12000}},
            "log": {"level": "warning"},
        }
        self.config = self.dir / "trioscale.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = open(self.dir / "coord.log", "wb")
        self.proc = subprocess.Popen([*TRIOSCALE, "--config", str(self.config), "coord"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.proc, 300, f"coordinator {name} did not start; see {self.dir / 'coord.log'}")

    def cli(self, *args: str) -> str:
        return run_cli(self.config, *args)

    def store_operations(self) -> dict[str, int]:
        """How many times each store operation ran (trioscale_store_operation_seconds_count)."""
        ops = store_operations(f"http://127.0.0.1:{self.metrics_port}/metrics")
        return {op: int(n) for op, n in ops.items()}

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


BULK_POLICY = json.dumps({"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]})


def make_bulk_nodes(n: int, visible: int, controls: list[tuple[str, int]], server_key: bytes) -> list[SimNode]:
    from trioscale.shared.proto import keys

    return [SimNode(i, controls[i % len(controls)], machine_key=keys.generate_private_key(), server_key=server_key)
            for i in range(n)]


async def write_bulk(dsn: str, sims: list[SimNode], visible: int) -> None:
    """Users u0..u{N/K-1} with K nodes each, and the policy, straight into the store."""
    from trioscale.shared.model import Node
    from trioscale.shared.proto import keys
    from trioscale.shared.store import open_postgres

    async with open_postgres(dsn) as store:
        users = []
        for u in range((len(sims) + visible - 1) // visible):
            users.append(await store.create_user(f"u{u}"))
        await store.set_policy(BULK_POLICY)

        async def worker(chunk: list[SimNode]) -> None:
            for sim in chunk:
                i = sim.index
                await store.create_node(Node(
                    id=0, machine_key=keys.public_key(sim.machine_key), node_key=keys.public_key(sim.node_key),
                    user_id=users[i // visible].id, hostname=f"sim{i}", given_name=f"sim{i}",
                    ipv4=f"100.64.{(i + 1) >> 8}.{(i + 1) & 0xFF}", ipv6=f"fd7a:115c:a1e0::{i + 1:x}",
                    disco_key=sim.disco, hostinfo={"Hostname": f"sim{i}"}, register_method="authkey"))

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(worker, sims[w::8])


def run_one(n: int, rounds: int, bulk: bool = False, visible: int = 100, concurrency: int = 64,
            fleet: str = "python", round_gap: float = 0.5) -> dict:
    with tempfile.TemporaryDirectory(prefix="replica-fanout-") as tmp, PgCluster() as pg:
        workdir = Path(tmp)
        noise_key = workdir / "noise_private.key"
        from trioscale.shared.proto import keys

        server_private = keys.load_or_create_private_key(noise_key)
        extra: dict = {}
        sims = None
        if bulk:
            # the replicas' ports are chosen here so the sims can be made (and written) first
            ports = [free_port(), free_port()]
            controls = [("127.0.0.1", p) for p in ports]
            sims = make_bulk_nodes(n, visible, controls, keys.public_key(server_private))
            t0 = time.monotonic()
            trio.run(write_bulk, pg.dsn, sims, visible)
            extra["bulk_write_s"] = round(time.monotonic() - t0, 1)
            print(f"wrote {n} nodes in {extra['bulk_write_s']} s", file=sys.stderr, flush=True)
        else:
            ports = [None, None]
        t0 = time.monotonic()
        replicas = [Replica(workdir, "A", pg, noise_key, ports[0]), Replica(workdir, "B", pg, noise_key, ports[1])]
        extra["replicas_start_s"] = round(time.monotonic() - t0, 1)
        try:
            controls = []
            for r in replicas:
                host, port = r.url.split("://", 1)[1].rsplit(":", 1)
                controls.append((host, int(port)))
            sampler = RssSampler({"A": replicas[0].proc.pid, "B": replicas[1].proc.pid})
            sampler.start()
            if bulk:
                # round r moves node j = r % K of user (r * 37) % U: different users, both replicas
                users = (n + visible - 1) // visible
                movers = [sims[min(n - 1, ((r * 37) % users) * visible + r % visible)] for r in range(rounds)]

                def peers_of(m: SimNode) -> list[SimNode]:
                    first = m.index // visible * visible
                    return [p for p in sims[first:first + visible] if p is not m]

                res = trio.run(functools.partial(bench, n, rounds, controls, None, None, nodes=sims, movers=movers,
                                                 peers_of=peers_of, concurrency=concurrency))
                res.update(mode="bulk", visible_peers=visible - 1)
            else:
                replicas[0].cli("users", "create", "bench")
                authkey = json.loads(replicas[0].cli("preauthkeys", "create", "--user", "bench", "--reusable",
                                                     "-o", "json"))["key"]
                cpu0 = {name: cpu_s(r.proc.pid) for name, r in zip("AB", replicas)}
                if fleet == "tsp":
                    res = trio.run(functools.partial(bench_tsp, n, rounds, controls, authkey,
                                                     [r.proc.pid for r in replicas], concurrency=concurrency,
                                                     round_gap=round_gap))
                else:
                    res = trio.run(functools.partial(bench, n, rounds, controls, authkey, None, concurrency=concurrency,
                                                     round_gap=round_gap))
                res.update(mode="join", visible_peers=n - 1)
                # storm, drain and rounds: what each replica's CPU did for them
                res["replica_cpu_s"] = {name: round(cpu_s(r.proc.pid) - cpu0[name], 1)
                                        for name, r in zip("AB", replicas)}
            res.update(extra)
            # per node of the run: which store operations a replica's work took (both alike)
            res["replica_a_store_ops_per_node"] = {op: round(count / n, 2) for op, count in
                                                  sorted(replicas[0].store_operations().items()) if count}
            sampler.stopped.set()
            sampler.join()
            res["replica_rss_peak_mib"] = {k: round(v, 1) for k, v in sampler.peak.items()}
            res["replica_rss_end_mib"] = {name: round(rss_mib(r.proc.pid), 1)
                                          for name, r in zip("AB", replicas)}
            # What is left in the change log, by kind: the log is trimmed once every replica has
            # applied it, and this is read after the fleet disconnected (each node's last stream
            # closing logs a presence.offline). With --bulk, node.updated should be one per round.
            rows = pg.sql("SELECT kind, count(*) FROM changes GROUP BY kind ORDER BY kind").split()
            res["change_log_tail"] = {k: int(v) for k, v in (r.split("|") for r in rows)}
        finally:
            for r in replicas:
                r.stop()
    res["date"] = time.strftime("%Y-%m-%d")
    res["cpus"] = os.cpu_count()
    return res


def main() -> None:
    gc.set_threshold(100_000, 50, 100)  # the load generator's heap (map_fanout.main says why)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bulk", action="store_true",
                    help="write the nodes straight into the store (no joins); each sees only its user's nodes")
    ap.add_argument("--visible", type=int, default=100, help="with --bulk: nodes per user (K)")
    ap.add_argument("--concurrency", type=int, default=64, help="simulated nodes connecting at once")
    ap.add_argument("--fleet", choices=("python", "tsp"), default="python",
                    help="without --bulk: the joining nodes are this process's, or `tspload fleet`'s (Tailscale's "
                         "control/ts2021 client in Go, built by `make tspload`)")
    ap.add_argument("--round-gap", type=float, default=0.5, help="seconds between a round's end and the next change")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if args.bulk and args.fleet != "python":
        ap.error("--bulk runs our own simulated nodes only")
    for n in args.nodes:
        res = run_one(n, args.rounds, args.bulk, args.visible, args.concurrency, args.fleet, args.round_gap)
        res["round_gap_s"] = args.round_gap
        print(json.dumps(res), flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
