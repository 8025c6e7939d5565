#!/usr/bin/env python3
"""What an idle DERP client costs a relay: N registered clients, the relay's RSS before/after,
for our relay and for Tailscale's own derper, side by side in one run.

Run by hand (not a test); the machine is shared, so it runs niced:

    .venv/bin/python benchmarks/derp_idle.py [--clients 10000] [--server ours,derper] [--rounds 2]

What it does:

* starts ``--procs`` client processes once; they serve every relay of the run (the same client
  code, the same N, so the relays differ only in themselves);
* for each round, for each relay of ``--server`` in turn (alternating, so that the load of a shared
  machine hits both alike):
  - ``ours``: one relay process (services/derp, TLS on 127.0.0.1, client verification off so the
    clients need no store rows; connection caps raised above N, RLIMIT_NOFILE raised);
  - ``derper``: Tailscale's ``derper`` binary (``make clients`` builds it; ``--derper PATH``)
    with ``-certmode manual`` and an IP hostname (it makes its own self-signed certificate),
    ``-stun=false``, ``-http-port -1``, its key and certificate in a temporary directory;
  - the client processes open N DERP connections to it (TLS, HTTP upgrade, ClientInfo,
    ServerInfo: each is a registered client of the relay) and hold them idle;
  - reads the relay's VmRSS (/proc/PID/status) before the first connection and after the last
    one plus ``--settle`` seconds, and how many clients the relay counts (ours: ``/debug/stats``,
    with its buffer accounting; derper: ``/debug/vars``); then the clients close and the relay
    is stopped;
* prints one Markdown table (a row per relay and round) for docs/benchmarks.md.

Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _debug_get(port: int, path: str) -> dict:
    """GET a JSON debug page of the relay (both relays answer them to loopback peers)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), 10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if b"chunked" in head.lower():
            body = _unchunk(body)
        return json.loads(body)
    except (OSError, ValueError) as exc:
        return {"error": repr(exc)}


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out


# ------------------------------------------------------------------------------------ relay child
def run_relay(a: argparse.Namespace) -> None:
    import logging

    import trio

    from trioscale.config import config_from_dict
    from trioscale.options import derp_options
    from trioscale.serve import connection_limiters
    from trioscale.services.derp import service as derp_service
    from trioscale.shared.store import open_store

    _raise_nofile(a.clients + 4096)
    data = Path(a.data)
    cap = a.clients + 1024
    cfg = config_from_dict({
        "data_dir": str(data),
        "database": {"type": "sqlite", "sqlite": {"path": str(data / "db.sqlite")}},
        "derp": {"server": {
            "listen_addr": f"127.0.0.1:{a.port}",
            "stun_listen_addr": "",
            "verify_clients": False,
            "private_key_path": str(data / "derp_private.key"),
        }},
        "limits": {"derp": {"max_connections": cap, "max_connections_per_source": cap}},
        "log": {"level": "warning"},
    })
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

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
                await nursery.start(lambda task_status: derp_service.serve(
                    derp_options(cfg), store, limiter=limiter, task_status=task_status))
                print("relay ready", flush=True)

    trio.run(main)



# ------------------------------------------------------------------------------------ client child
def run_clients(a: argparse.Namespace) -> None:
    """Holds DERP connections for the parent: reads ``connect PORT N`` / ``close`` lines on stdin,
    answers ``ready CONNECTED FAILED`` / ``closed``; ends at EOF."""
    import trio
    from nacl.public import PrivateKey

    from trioscale.shared.net.derpdial import derp_upgrade
    from trioscale.shared.net.rawstream import RawStream, open_tcp_raw
    from trioscale.shared.net.tls import client_context

    _raise_nofile(a.clients + 1024)
    tls = client_context(verify=False)
    keys = [bytes(PrivateKey.generate()) for _ in range(a.clients)]

    async def connect(port: int, n: int) -> tuple[list, int]:
        held: list = []
        failures = 0
        limit = trio.CapacityLimiter(a.concurrency)

        async def one(key: bytes) -> None:
            nonlocal failures
            async with limit:
                for _attempt in range(3):
                    stream = None
                    try:
                        with trio.fail_after(60):
                            sock = await open_tcp_raw("127.0.0.1", port)
                            stream = RawStream(sock, tls, server_side=False, server_hostname="127.0.0.1")
                            await stream.do_handshake()
                            held.append(await derp_upgrade(stream, key, host="127.0.0.1"))
                        return
                    except Exception:  # noqa: BLE001 (a refused or slow connection: try again)
                        if stream is not None:
                            stream.close()
                        await trio.sleep(0.5)
                failures += 1

        async with trio.open_nursery() as nursery:
            for key in keys[:n]:
                nursery.start_soon(one, key)
        return held, failures

    async def main() -> None:
        held: list = []
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            words = line.split()
            if words[:1] == ["connect"]:
                held, failed = await connect(int(words[1]), int(words[2]))
                print(f"ready {len(held)} {failed}", flush=True)
            elif words[:1] == ["close"]:
                for c in held:
                    c.stream.close()
                held = []
                print("closed", flush=True)
        for c in held:
            c.stream.close()

    trio.run(main)


# ------------------------------------------------------------------------------------ relays
def start_ours(a: argparse.Namespace, work: Path, port: int, nice) -> tuple[subprocess.Popen, Path]:
    data = work / f"ours-{port}"
    data.mkdir()
    proc = subprocess.Popen([sys.executable, __file__, "--run-relay", "--data", str(data), "--port", str(port),
                             "--clients", str(a.clients)], cwd=REPO, preexec_fn=nice,
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "relay ready"
    return proc, data


def start_derper(a: argparse.Namespace, work: Path, port: int, nice) -> tuple[subprocess.Popen, Path]:
    """Tailscale's derper on 127.0.0.1:port, TLS with its own self-signed certificate for the IP;
    its key file (-c) and certificate in the work directory, nothing written elsewhere."""
    data = work / f"derper-{port}"
    (data / "certs").mkdir(parents=True)
    log = open(data / "derper.log", "wb")

    def prepare() -> None:
        nice()
        _raise_nofile(a.clients + 4096)

    args = [a.derper, "-a", f"127.0.0.1:{port}", "-c", str(data / "derper.json"),
            "-certmode", "manual", "-certdir", str(data / "certs"), "-hostname", "127.0.0.1",
            "-stun=false", "-http-port", "-1", "-home", "blank"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(data)}
    proc = subprocess.Popen(args, env=env, cwd=data, stdout=log, stderr=subprocess.STDOUT, preexec_fn=prepare)
    return proc, data


def find_derper(explicit: str | None) -> str:
    if explicit:
        return explicit
    versions = REPO / "tests" / "tailscaled" / "versions.txt"
    for line in versions.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            path = Path.home() / ".cache" / "trioscale" / "clients" / f"v{line.strip()}" / "derper"
            if path.exists():
                return str(path)
            break
    raise SystemExit("derper not found: run `make clients` (it builds Tailscale's derper) or pass --derper PATH")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _relay_counts(kind: str, port: int) -> tuple[object, str]:
    """(clients the relay counts, its buffer accounting or '-')."""
    if kind == "ours":
        stats = _debug_get(port, "/debug/stats")
        buffers = stats.get("buffers", {})
        return stats.get("clients_current"), f"{buffers.get('total', 0) / 1024:.0f} KiB"
    derp = _debug_get(port, "/debug/vars").get("derp", {})
    return derp.get("gauge_current_connections", derp.get("gauge_clients_total")), "-"


# ------------------------------------------------------------------------------------ parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--server", default="ours", help="relays to measure, in turn: ours, derper (comma-separated)")
    ap.add_argument("--rounds", type=int, default=1, help="times through the --server list (alternating)")
    ap.add_argument("--derper", help="path of Tailscale's derper binary (default: the one `make clients` built)")
    ap.add_argument("--procs", type=int, default=4, help="client processes")
    ap.add_argument("--concurrency", type=int, default=64, help="handshakes in flight per client process")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--run-relay", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-clients", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run_relay:
        return run_relay(a)
    if a.run_clients:
        return run_clients(a)
    servers = [s.strip() for s in a.server.split(",") if s.strip()]
    for s in servers:
        if s not in ("ours", "derper"):
            raise SystemExit(f"--server: unknown relay {s!r} (ours, derper)")
    if "derper" in servers:
        a.derper = find_derper(a.derper)

    py = sys.executable
    nice = lambda: os.nice(10)  # noqa: E731 (shared machine)
    per = [a.clients // a.procs + (1 if i < a.clients % a.procs else 0) for i in range(a.procs)]
    clients: list[subprocess.Popen] = []
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="derp-idle-") as tmp:
        work = Path(tmp)
        try:
            for n in per:
                clients.append(subprocess.Popen([py, __file__, "--run-clients", "--clients", str(n),
                                                 "--concurrency", str(a.concurrency)], cwd=REPO, preexec_fn=nice,
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for rnd in range(a.rounds):
                for kind in servers:
                    port = _free_port()
                    start = start_ours if kind == "ours" else start_derper
                    relay, _data = start(a, work, port, nice)
                    try:
                        _wait_port(port)
                        time.sleep(1.0)
                        before = _rss_kib(relay.pid)
                        t0 = time.monotonic()
                        for p, n in zip(clients, per):
                            p.stdin.write(f"connect {port} {n}\n")
                            p.stdin.flush()
                        connected = failed = 0
                        for p in clients:
                            words = p.stdout.readline().split()  # "ready CONNECTED FAILED"
                            connected += int(words[1])
                            failed += int(words[2])
                        took = time.monotonic() - t0
                        time.sleep(a.settle)
                        after = _rss_kib(relay.pid)
                        counted, buffered = _relay_counts(kind, port)
                        for p in clients:
                            p.stdin.write("close\n")
                            p.stdin.flush()
                        for p in clients:
                            p.stdout.readline()  # "closed"
                    finally:
                        _stop(relay)
                    per_client = (after - before) / max(1, connected)
                    print(f"round {rnd + 1} {kind}: {connected} connected (failed {failed}) in {took:.1f} s, "
                          f"relay counts {counted}; RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, "
                          f"{per_client:.1f} KiB per client; buffered {buffered}", flush=True)
                    load = os.getloadavg()
                    rows.append(f"| {time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} cores, {platform.machine()}, "
                                f"load {load[0]:.1f} | {kind} | {connected} | {before / 1024:.0f} MiB "
                                f"| {after / 1024:.0f} MiB | {per_client:.1f} KiB | {buffered} |")
            print()
            print("| date | machine | relay | clients | RSS before | RSS after | per client | buffered (relay's count) |")
            print("|---|---|---|---|---|---|---|---|")
            print("\n".join(rows))
        finally:
            for p in clients:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            for p in clients:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()


if __name__ == "__main__":
    main()
