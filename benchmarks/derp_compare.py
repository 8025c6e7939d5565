#!/usr/bin/env python3
"""DERP relay throughput: our relay against Tailscale's Go derper, same machine, same run.

Run by hand (not a test), as root (it makes a private network namespace):

    make clients                             # builds Tailscale's derper among the clients
    .venv/bin/python benchmarks/derp_compare.py [--pairs 1,4,16] [--ours-procs 1,2] [--seconds 5]

What it does, all inside ``unshare --net`` (only 127.0.0.1 of a namespace nobody else uses):

* starts Tailscale's ``derper`` binary (the one ``make clients`` builds, at the newest client
  version; ``--derper PATH``) with its default settings, TLS with the self-signed certificate it
  makes for an IP hostname (``-certmode manual -hostname 127.0.0.1``), ``-stun=false``;
* starts our relay (services/derp) with client verification off, once as one process and, with
  ``--ours-procs 2``, as two processes sharing one port (SO_REUSEPORT) that mesh with a shared
  mesh key, like two relays of a region (each has its own server key; a packet between clients
  that landed on different processes crosses the mesh as a ForwardPacket);
* drives every relay with ../shared/bench/derp_bench.py (1280-byte packets, TLS), first
  ``--validate`` (exact bytes and source keys), then for each pair count:
  - paced runs on a rising ladder of total rates, relays alternating at every step
    (A B A B: each relay twice per rate); a run passes when the relay delivered >= 99 % of what
    was sent and the senders achieved >= 90 % of the target rate (a relay that pushes back on
    its senders does not pass by sending less; 90 % and not 100 % because the generator itself
    slips on a busy 2-core machine, for every relay alike). A relay's "loss-free" figure is the received
    packets/s of the highest rate at which both of its runs passed; it leaves the ladder after
    a rate where both failed;
  - flood runs (no pacing), alternating, twice each.
* prints a Markdown table and appends every run's JSON record to ``--json-out``.

Relay processes are stopped by their PIDs. CPU figures come from derp_bench.py (--relay-pid).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BENCH = (REPO / ".." / "shared" / "bench" / "derp_bench.py").resolve()
NETNS_ENV = "DERP_COMPARE_IN_NETNS"
#: a paced run counts only if the senders got at least this share of the target rate out: below
#: it the relay (or a busy machine) held them back and the run says nothing about loss
SENT_SHARE = 0.90

LADDERS = {
    1: [10000, 20000, 25000, 30000, 35000, 40000, 50000, 60000, 70000, 80000],
    4: [30000, 40000, 50000, 60000, 70000, 80000, 100000],
    16: [30000, 40000, 50000, 60000, 70000, 80000, 100000],
}


# ------------------------------------------------------------------------------------ relays
def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def find_derper(explicit: str | None) -> str:
    """Tailscale's derper binary: --derper, else the one `make clients` built at the newest
    version of tests/tailscaled/versions.txt."""
    if explicit:
        return explicit
    for line in (REPO / "tests" / "tailscaled" / "versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            path = Path.home() / ".cache" / "trioscale" / "clients" / f"v{line.strip()}" / "derper"
            if path.exists():
                return str(path)
            break
    raise SystemExit("derper not found: run `make clients` (it builds Tailscale's derper) or pass --derper PATH")


class Relay:
    def __init__(self, name: str, url: str, procs: list[subprocess.Popen]):
        self.name, self.url, self.procs = name, url, procs

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


def start_go(derper: str, work: Path, port: int) -> Relay:
    """Tailscale's derper with default settings on 127.0.0.1:port: TLS with the self-signed
    certificate it makes for an IP hostname (-certmode manual), no STUN, no plain-HTTP port; its
    key file (-c) and certificate in the work directory."""
    home = work / "go"
    (home / "certs").mkdir(parents=True, exist_ok=True)
    log = open(home / "derper.log", "wb")
    args = [derper, "-a", f"127.0.0.1:{port}", "-c", str(home / "derper.json"), "-certmode", "manual",
            "-certdir", str(home / "certs"), "-hostname", "127.0.0.1", "-stun=false", "-http-port", "-1",
            "-home", "blank"]
    proc = subprocess.Popen(args, env={"PATH": "/usr/bin:/bin", "HOME": str(home)}, stdout=log,
                            stderr=subprocess.STDOUT, cwd=home)
    _wait_port(port)
    if proc.poll() is not None:
        raise SystemExit("derper exited:\n" + (home / "derper.log").read_text(errors="replace")[-2000:])
    return Relay("go-derper", f"https://127.0.0.1:{port}/derp", [proc])


def start_ours(python: str, work: Path, nprocs: int, port: int, checkout: Path | None = None,
               name: str = "ours") -> Relay:
    """`nprocs` processes of our relay on one port; two or more share it and mesh. With `checkout`,
    the relay is that checkout's code, started by its own copy of this script (for before/after)."""
    data = work / f"{name}{nprocs}"
    data.mkdir(parents=True, exist_ok=True)
    mesh_key = os.urandom(32).hex() if nprocs > 1 else ""
    procs = []
    for i in range(nprocs):
        log = open(data / f"relay{i}.log", "wb")
        script = (checkout / "benchmarks" / "derp_compare.py") if checkout else Path(__file__).resolve()
        args = [python, str(script), "--run-relay", "--data", str(data), "--port", str(port),
                "--index", str(i), "--mesh-key", mesh_key, "--reuse-port", "1" if nprocs > 1 else "0"]
        procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=checkout or REPO))
        if i == 0:
            _wait_port(port)  # the first one writes the shared self-signed certificate
    relay = Relay(f"{name}-{nprocs}p", f"https://127.0.0.1:{port}/derp", procs)
    if nprocs > 1:
        _wait_mesh(data, nprocs)
    return relay


def _wait_mesh(data: Path, nprocs: int, timeout: float = 30.0) -> None:
    """Every process reports (in its log) links to all the others."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = 0
        for i in range(nprocs):
            text = (data / f"relay{i}.log").read_text(errors="replace")
            links = re.findall(r"mesh peers up: (\d+)", text)
            if links and int(links[-1]) >= nprocs - 1:
                ok += 1
        if ok == nprocs:
            return
        time.sleep(0.2)
    raise SystemExit(f"our relays did not mesh within {timeout}s; see {data}/relay*.log")


def run_relay_process(a: argparse.Namespace) -> None:
    """Child mode: one relay process (config from code, SQLite store shared by the processes)."""
    import logging

    import trio

    from trioscale.config import config_from_dict
    from trioscale.options import derp_options
    from trioscale.serve import connection_limiters
    from trioscale.services.derp import service as derp_service
    from trioscale.shared.store import open_store

    data = Path(a.data)
    cfg = config_from_dict({
        "data_dir": str(data),
        "database": {"type": "sqlite", "sqlite": {"path": str(data / "db.sqlite")}},
        "derp": {"server": {
            "listen_addr": f"127.0.0.1:{a.port}",
            "stun_listen_addr": "",
            "verify_clients": False,
            "private_key_path": str(data / f"derp_private_{a.index}.key"),
            "mesh_key": a.mesh_key,
        }},
        "log": {"level": "warning"},
    })
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("trioscale.derp.mesh").setLevel(logging.INFO)

    async def main() -> None:
        async with open_store(cfg) as store:
            limiter = connection_limiters(cfg, ["derp"])["derp"]
            async with trio.open_nursery() as nursery:
                async def on_signal() -> None:
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                        async for _ in sigs:
                            nursery.cancel_scope.cancel()
                            return

                nursery.start_soon(on_signal)
                svc = await nursery.start(lambda task_status: derp_service.serve(
                    derp_options(cfg), store, limiter=limiter, task_status=task_status,
                    reuse_port=bool(int(a.reuse_port)), heartbeat_interval=2.0))
                print(f"relay {a.index} ready on port {a.port}", flush=True)
                try:
                    await trio.sleep_forever()
                finally:  # the counters (drops by reason, mesh traffic) for the run's log
                    print("stats " + json.dumps(svc.stats.as_dict()), flush=True)

    trio.run(main)


# ------------------------------------------------------------------------------------ runs
def bench(python: str, relay: Relay, pairs: int, rate: float, seconds: float, json_out: Path,
          label: str) -> dict:
    args = [python, str(BENCH), "--url", relay.url, "--insecure", "--pairs", str(pairs), "--size", "1280",
            "--seconds", str(seconds), "--label", label, "--json-out", str(json_out)]
    if rate:
        args += ["--rate", str(int(rate))]
    for pid in relay.pids:
        args += ["--relay-pid", str(pid)]
    before = json_out.read_text().count("\n") if json_out.exists() else 0
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 90)
    summary = [ln for ln in out.stdout.splitlines() if ln.startswith("SUMMARY")]
    lines = json_out.read_text().splitlines() if json_out.exists() else []
    if out.returncode not in (0, 1) or len(lines) <= before:
        print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        return {"label": label, "failed": True, "recv_pps": 0, "sent_pps": 0, "ratio": 0, "rate_target": rate}
    rec = json.loads(lines[-1])
    print("   ", summary[-1] if summary else rec, flush=True)
    return rec


def passes(rec: dict, rate: float) -> bool:
    if rec.get("failed") or rec.get("badlen") or rec.get("src_bad") or rec.get("conn_errors"):
        return False
    return rec["ratio"] >= 0.99 and rec["sent_pps"] >= SENT_SHARE * rate


def compare(a: argparse.Namespace) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix="derp_compare_"))
    json_out = Path(a.json_out).resolve()
    py = a.python or sys.executable
    relays: list[Relay] = []
    try:
        if not a.no_derper:
            relays.append(start_go(find_derper(a.derper), work, 18442))
        for i, n in enumerate(int(x) for x in a.ours_procs.split(",")):
            relays.append(start_ours(py, work, n, 18443 + i))
        if a.baseline:
            base = Path(a.baseline).resolve()
            relays.append(start_ours(str(base / ".venv" / "bin" / "python"), work, 1, 18440, checkout=base,
                                     name="baseline"))
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "python": platform.python_version(),
            "relays": {r.name: r.url for r in relays},
        }
        print("# derp_compare", json.dumps(meta), flush=True)
        for r in relays:
            out = subprocess.run([py, str(BENCH), "--url", r.url, "--insecure", "--validate", "--pairs", "3"],
                                 capture_output=True, text=True, timeout=60)
            print(f"  validate {r.name}: {out.stdout.strip().splitlines()[-1]}", flush=True)
            if out.returncode != 0:
                print(out.stdout, out.stderr)
                return 1
        results: dict = {}
        for pairs in [int(x) for x in a.pairs.split(",")]:
            ladder = LADDERS.get(pairs) or LADDERS[16]
            if a.ladder:
                ladder = [float(x) for x in a.ladder.get(pairs, a.ladder.get(0, ladder))]
            if a.min_rate:
                ladder = [r for r in ladder if r >= a.min_rate]
            active = {r.name for r in relays}
            best: dict[str, tuple[float, float, dict]] = {}
            paced_runs: dict[str, list[dict]] = {}
            if a.flood_only:
                ladder = []
            print(f"## {pairs} pairs: paced ladder {ladder}", flush=True)
            for rate in ladder:
                if not active:
                    break
                got: dict[str, list[dict]] = {}
                for rep in range(a.reps):
                    for r in relays:
                        if r.name not in active:
                            continue
                        if not r.alive():
                            raise SystemExit(f"{r.name} died")
                        rec = bench(py, r, pairs, rate, a.seconds, json_out, f"{r.name} p{pairs} r{rate} #{rep}")
                        got.setdefault(r.name, []).append(rec)
                        paced_runs.setdefault(r.name, []).append(rec)
                for name, recs in got.items():
                    ok = [passes(x, rate) for x in recs]
                    if all(ok):
                        best[name] = (rate, min(x["recv_pps"] for x in recs), recs[-1])
                    elif not any(ok):
                        active.discard(name)
            flood: dict[str, list[dict]] = {}
            for rep in range(a.reps):
                for r in relays:
                    rec = bench(py, r, pairs, 0, a.seconds, json_out, f"{r.name} p{pairs} flood #{rep}")
                    flood.setdefault(r.name, []).append(rec)
            results[pairs] = (best, flood, paced_runs)
        print()
        print(f"Results ({meta['date']}, {meta['cpus']} cores, {meta['cpu_model']}; TLS, 1280-byte packets, "
              f"{a.seconds:g} s windows, {a.reps} runs each, alternating)")
        print()
        print("| pairs | relay | ladder: highest rate with every run passing (min recv pkt/s) | "
              "best loss-free paced run (recv pkt/s, ≤ 1 % lost) | relay CPU per 10k pkt/s (paced, median) | "
              "flood relayed pkt/s (runs) | flood: delivered / senders got out |")
        print("|---|---|---|---|---|---|---|")
        for pairs, (best, flood, paced_runs) in results.items():
            for r in relays:
                b = best.get(r.name)
                ladder = f"{b[0]:,.0f} → {b[1]:,.0f}" if b else "none"
                runs = paced_runs.get(r.name, [])
                ok = [x for x in runs if not x.get("failed") and x["ratio"] >= 0.99]
                top = max(ok, key=lambda x: x["recv_pps"]) if ok else None
                best_run = f"{top['recv_pps']:,.0f} (target {top['rate_target']:,.0f}, lost " \
                           f"{(1 - top['ratio']) * 100:.2f} %)" if top else "-"
                eff = sorted(x["relay_cpu_pct"] / x["recv_pps"] * 1e4 for x in runs
                             if x.get("relay_cpu_pct") and x.get("recv_pps"))
                eff_s = f"{eff[len(eff) // 2]:.1f} %" if eff else "-"
                fl = flood.get(r.name, [])
                fl_pps = " / ".join(f"{x['recv_pps']:,.0f}" for x in fl)
                fl_ratio = " / ".join(f"{x['ratio'] * 100:.0f} % of {x['sent_pps']:,.0f}" for x in fl)
                print(f"| {pairs} | {r.name} | {ladder} | {best_run} | {eff_s} | {fl_pps} | {fl_ratio} |")
        return 0
    finally:
        for r in relays:
            r.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _ladder_arg(text: str) -> dict[int, list[str]]:
    """'R1,R2' (key 0: every pair count) or 'P:R1,R2;P2:R3' → {pairs: [rates]}."""
    out: dict[int, list[str]] = {}
    for part in text.split(";"):
        pairs, _, rates = part.rpartition(":")
        out[int(pairs) if pairs else 0] = [r for r in rates.split(",") if r]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="1,4,16")
    ap.add_argument("--ours-procs", default="1,2", help="our relay as 1 process, 2 meshed processes, ...")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=2, help="runs per relay and rate (alternating)")
    ap.add_argument("--min-rate", type=float, default=0, help="skip ladder rates below this")
    ap.add_argument("--ladder", type=_ladder_arg, default={},
                    help="paced rates instead of the built-in ladders: '30000,40000' for every pair count, "
                    "or per pair count '16:30000,40000;1:20000'")
    ap.add_argument("--flood-only", action="store_true", help="no paced ladder, only the flood runs")
    ap.add_argument("--no-derper", action="store_true", help="only our relays (e.g. to compare 1 and 2 processes)")
    ap.add_argument("--derper", help="path of Tailscale's derper binary (default: the one `make clients` built)")
    ap.add_argument("--python", help="python with PyNaCl and trioscale (default: this one)")
    ap.add_argument("--json-out", default="derp_compare.jsonl")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--baseline", help="a checkout of other relay code with its own .venv (e.g. a git worktree "
                    "of an older commit): its one-process relay runs too, alternating with the others")
    ap.add_argument("--no-netns", action="store_true", help="already in a private namespace")
    # child mode
    ap.add_argument("--run-relay", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=18443, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mesh-key", default="", help=argparse.SUPPRESS)
    ap.add_argument("--reuse-port", default="0", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run_relay:
        run_relay_process(a)
        return 0
    if not BENCH.exists():
        raise SystemExit(f"{BENCH} not found")
    if not a.no_netns and os.environ.get(NETNS_ENV) != "1":
        env = dict(os.environ, **{NETNS_ENV: "1"})
        return subprocess.call(["unshare", "--net", sys.executable, *sys.argv], env=env)
    return compare(a)


if __name__ == "__main__":
    sys.exit(main())
