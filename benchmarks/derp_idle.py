#!/usr/bin/env python3
"""What an idle DERP client costs the relay: N registered clients, the relay's RSS before/after.

Run by hand (not a test); the machine is shared, so it runs niced:

    .venv/bin/python benchmarks/derp_idle.py [--clients 10000] [--procs 4] [--settle 5]

What it does:

* starts one relay process (services/derp, TLS on 127.0.0.1, client verification off so the
  clients need no store rows; connection caps raised above N, RLIMIT_NOFILE raised);
* starts ``--procs`` client processes that together open N DERP connections (TLS, HTTP upgrade,
  ClientInfo, ServerInfo: each is a registered client of the relay) and then hold them idle;
  the client side is cheap on purpose (the relay's own lean stream, no per-client task);
* reads the relay's VmRSS (/proc/PID/status) before the first connection and after the last one
  plus ``--settle`` seconds, and the relay's own buffer accounting (``/debug/stats`` ->
  ``buffers``), and prints one Markdown table row for docs/benchmarks.md.

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


def _debug_stats(port: int) -> dict:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), 10) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /debug/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data.partition(b"\r\n\r\n")[2])


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
    import trio
    from nacl.public import PrivateKey

    from trioscale.shared.net.rawstream import RawStream, open_tcp_raw
    from trioscale.shared.net.derpdial import derp_upgrade
    from trioscale.shared.net.tls import client_context

    _raise_nofile(a.clients + 1024)
    tls = client_context(verify=False)
    held: list = []
    failures = 0

    async def one(limit: trio.CapacityLimiter) -> None:
        nonlocal failures
        async with limit:
            for _attempt in range(3):
                sock = None
                try:
                    with trio.fail_after(60):
                        sock = await open_tcp_raw("127.0.0.1", a.port)
                        stream = RawStream(sock, tls, server_side=False, server_hostname="127.0.0.1")
                        await stream.do_handshake()
                        client = await derp_upgrade(stream, bytes(PrivateKey.generate()), host="127.0.0.1")
                    held.append(client)
                    return
                except (OSError, trio.TooSlowError, trio.BrokenResourceError, Exception):
                    if sock is not None:
                        sock.close()
                    await trio.sleep(0.5)
            failures += 1

    async def main() -> None:
        limit = trio.CapacityLimiter(a.concurrency)
        async with trio.open_nursery() as nursery:
            for _ in range(a.clients):
                nursery.start_soon(one, limit)
        print(f"clients ready {len(held)} failed {failures}", flush=True)
        # hold them (idle) until stopped; stdin closing also ends us
        await trio.to_thread.run_sync(sys.stdin.read)

    trio.run(main)


# ------------------------------------------------------------------------------------ parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000)
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

    py = sys.executable
    nice = lambda: os.nice(10)  # noqa: E731 (shared machine)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="derp-idle-") as work:
        port = _free_port()
        try:
            relay = subprocess.Popen([py, __file__, "--run-relay", "--data", work, "--port", str(port),
                                      "--clients", str(a.clients)], cwd=REPO, preexec_fn=nice,
                                     stdout=subprocess.PIPE, text=True)
            procs.append(relay)
            relay.stdout.readline()  # "relay ready"
            _wait_port(port)
            time.sleep(1.0)
            before = _rss_kib(relay.pid)
            t0 = time.monotonic()
            per = [a.clients // a.procs + (1 if i < a.clients % a.procs else 0) for i in range(a.procs)]
            clients = []
            for n in per:
                p = subprocess.Popen([py, __file__, "--run-clients", "--port", str(port), "--clients", str(n),
                                      "--concurrency", str(a.concurrency)], cwd=REPO, preexec_fn=nice,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                procs.append(p)
                clients.append(p)
            connected = failed = 0
            for p in clients:
                words = p.stdout.readline().split()  # "clients ready N failed M"
                connected += int(words[2])
                failed += int(words[4])
            took = time.monotonic() - t0
            time.sleep(a.settle)
            after = _rss_kib(relay.pid)
            stats = _debug_stats(port)
            buffers = stats.get("buffers", {})
            per_client = (after - before) / max(1, connected)
            print(f"clients connected: {connected} (failed {failed}) in {took:.1f} s; "
                  f"relay clients_current={stats.get('clients_current')}")
            print(f"relay RSS before: {before / 1024:.1f} MiB, after: {after / 1024:.1f} MiB, "
                  f"per client: {per_client:.1f} KiB")
            print(f"relay buffer accounting: {json.dumps(buffers)}")
            load = os.getloadavg()
            print()
            print("| date | machine | clients | RSS before | RSS after | per client | buffered (relay's count) |")
            print("|---|---|---|---|---|---|---|")
            print(f"| {time.strftime('%Y-%m-%d')} | {os.cpu_count()} cores, {platform.machine()}, load {load[0]:.1f} "
                  f"| {connected} | {before / 1024:.0f} MiB | {after / 1024:.0f} MiB | {per_client:.1f} KiB "
                  f"| {buffers.get('total', 0) / 1024:.0f} KiB |")
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    try:
                        if p.stdin:
                            p.stdin.close()
                    except OSError:
                        pass
                    os.kill(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()


if __name__ == "__main__":
    main()
