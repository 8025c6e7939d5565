#!/usr/bin/env python3
"""Map fan-out: N simulated nodes hold map streams; one node changes its endpoints; how long until
every other node has the delta?

Run by hand (not a test). It starts `trioscale serve` (SQLite, the embedded default) in a temp
directory on free loopback ports, or uses --control URLs of running coordinators (several URLs
spread the nodes over replicas: then pass --authkey too). The simulated nodes are our own Noise
client (shared/testing/noiseclient.py), all in this process.

    .venv/bin/python benchmarks/map_fanout.py --nodes 100 1000 --rounds 5

Output: per N, setup time and the p50/p99/max latency from the lite update being sent to each
peer decoding the PeersChangedPatch, over all rounds; `--json-out FILE` appends a record.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import trio
import yaml
import zstandard

from trioscale.shared.testing.noiseclient import ControlClientError, SinkReader, fetch_server_key, open_noise_client
from trioscale.shared.proto import keys, mapframe

#: Tailscale's protocol client as a load generator (benchmarks/tspload, built by `make tspload`)
TSPLOAD = Path(os.environ.get("TRIOSCALE_TSPLOAD", Path.home() / ".cache" / "trioscale" / "tspload" / "tspload"))

TRIOSCALE = [sys.executable, "-m", "trioscale.cli"]
QUIET_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, failure: str) -> None:
    """Wait until `url`/health answers; SystemExit(`failure`) if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(failure)
            time.sleep(0.1)


def run_cli(config: Path, *args: str) -> str:
    return subprocess.run([*TRIOSCALE, "--config", str(config), *args], check=True,
                          capture_output=True, text=True).stdout


class Server:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cfg = {
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{port}",
            "data_dir": str(workdir / "data"),
            "derp": {"server": {"listen_addr": f"127.0.0.1:{free_port()}", "stun_listen_addr": f"127.0.0.1:{free_port()}"}},
            "dns": {"listen_addr": ""},  # not needed here
            # a free port (two servers at once would fight over the fixed default): the rounds read
            # the server's own fan-out histogram there
            "metrics_listen_addr": f"127.0.0.1:{self.metrics_port}",
            # every simulated node comes from 127.0.0.1: one source may hold them all
            "limits": {"control": {"max_connections": 12000, "max_connections_per_source": 12000},
                       "derp": {"max_connections": 64, "max_connections_per_source": 64}},
            "log": {"level": "warning"},
        }
        self.config = workdir / "trioscale.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        # the environment overrides the file (the test suite sets this one): the rounds need ours
        env = {**os.environ, "TRIOSCALE_METRICS_LISTEN_ADDR": f"127.0.0.1:{self.metrics_port}"}
        self.proc = subprocess.Popen([*TRIOSCALE, "--config", str(self.config), "serve"], env=env,
                                     stdout=open(workdir / "serve.log", "wb"), stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.proc, 30, f"trioscale did not start; see {workdir / 'serve.log'}")

    def cli(self, *args: str) -> str:
        return run_cli(self.config, *args)

    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


FANOUT_BUCKET = "trioscale_coord_change_fanout_seconds_bucket"


def metrics_lines(metrics_url: str) -> list[str]:
    """The server's /metrics exposition, line by line."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        return resp.read().decode().splitlines()


def store_operations(metrics_url: str | None) -> dict[str, float]:
    """How many times each store operation ran (trioscale_store_operation_seconds_count); {}
    without a metrics URL."""
    if not metrics_url:
        return {}
    prefix = 'trioscale_store_operation_seconds_count{operation="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics_lines(metrics_url) if line.startswith(prefix)}


def fanout_buckets(metrics_url: str | None) -> dict[float, float]:
    """The server's change fan-out histogram (commit -> written to the last session), cumulative
    counts by upper bound; {} without a metrics URL."""
    if not metrics_url:
        return {}
    out = {}
    for line in metrics_lines(metrics_url):
        if line.startswith(FANOUT_BUCKET + "{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


FLUSH_COUNTERS = ("trioscale_coord_flush_cpu_seconds_total", "trioscale_coord_flush_sent_bytes_total",
                  "trioscale_coord_flush_passes_total")


def flush_counters(metrics_url: str | None) -> dict[str, float]:
    """The server's flusher counters (its passes' own CPU, the bytes they wrote, how many); {}
    without a metrics URL."""
    if not metrics_url:
        return {}
    return {name: float(line.rsplit(" ", 1)[1]) for line in metrics_lines(metrics_url)
            for name in FLUSH_COUNTERS if line.startswith(name + " ")}


def slowest_wave_bound(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The smallest bucket bound that holds every wave observed between two readings."""
    if not after:
        return None
    total = after[float("inf")] - before.get(float("inf"), 0)
    if total <= 0:
        return None
    return min(le for le, n in after.items() if n - before.get(le, 0) >= total)


def start_py_spy(pid: int, out: str) -> subprocess.Popen:
    """py-spy sampling the server during the join storm (the profile the scale work goes by)."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        raise SystemExit(f"--py-spy: {exe} not found (install it with {Path(sys.executable).with_name('pip')} install py-spy)")
    return subprocess.Popen([str(exe), "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                             "--output", out, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(spy: subprocess.Popen) -> None:
    spy.send_signal(2)  # py-spy writes its output on SIGINT
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()


def _cpu_times(pid: int, stat: str | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds `pid` (or the thread whose `stat` file is given) has used; NaNs
    once it is gone."""
    try:
        fields = Path(stat or f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main_thread_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid`'s main thread: the event loop, where a Python server
    that holds the GIL for most of its work meets its ceiling first."""
    return sum(_cpu_times(pid, f"/proc/{pid}/task/{pid}/stat"))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds `pid` has used (what a loaded machine does not inflate)."""
    return sum(_cpu_times(pid))


def system_cpu_s(pid: int) -> float:
    """The kernel's share of cpu_s: on loopback it includes waking the reader of every send."""
    return _cpu_times(pid)[1]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


KEEPALIVE_FRAME = mapframe.keepalive("zstd")[4:]


def is_keepalive(frame: bytes) -> bool:
    """Ours by its bytes; another server's (Headscale compresses its own) by its small JSON."""
    if frame == KEEPALIVE_FRAME:
        return True
    return len(frame) < 64 and zstandard.ZstdDecompressor().decompress(frame) == mapframe.KEEPALIVE_JSON


def trim_heap() -> None:
    """Hand freed heap back to the system (glibc only; elsewhere nothing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class FrameSplitter:
    """The map stream's frames (u32 little-endian length + zstd frame), not decompressed."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def receive(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        out, pos = [], 0
        while len(buf) - pos >= 4:
            n = int.from_bytes(buf[pos:pos + 4], "little")
            if len(buf) - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        del buf[:pos]
        return out


class SimNode:
    """One simulated node. By default it registers with `authkey` and then streams its map. With
    `machine_key` given and `authkey=None` in `run`, the node is expected to exist already (written
    straight into the store, as replica_fanout.py --bulk does): it only opens its map stream.
    `server_key` skips the GET /key each node would otherwise make."""

    def __init__(self, index: int, control: tuple[str, int], *, machine_key: bytes | None = None,
                 server_key: bytes | None = None) -> None:
        self.index = index
        self.control = control
        self.machine_key = machine_key
        self.server_key = server_key
        self.node_key = keys.generate_private_key()
        self.disco = keys.public_key(keys.generate_private_key())
        self.first = trio.Event()
        self.expect: str | None = None
        self.got: dict[str, float] = {}
        self.waiters: dict[str, trio.Event] = {}
        self.last_rx = 0.0
        self.retries = 0
        self.cuts = 0
        self.registered_at = self.first_map_at = 0.0
        self.register_only = False
        #: the map stream read by NoiseClient.sink (no h2 past its headers), unless the node is to
        #: send requests on its connection later (a mover)
        self.sink = True
        #: the one task that reads every sink's connection (None: a task per connection)
        self.reader: SinkReader | None = None
        #: bytes on the stream of the first map
        self.first_map_bytes = 0
        #: map stream bytes received (messages as sent: compressed, framed, before Noise)
        self.rx_bytes = 0

    def body(self, **extra):
        b = {"Version": 130, "NodeKey": keys.NODE.format(keys.public_key(self.node_key)),
             "DiscoKey": keys.DISCO.format(self.disco), "Stream": True, "Compress": "zstd",
             "KeepAlive": True, "Hostinfo": {"Hostname": f"sim{self.index}"}}
        b.update(extra)
        return b

    async def run(self, authkey: str | None, ready: trio.CapacityLimiter, task_status=trio.TASK_STATUS_IGNORED):
        """Register (if asked) and stream; a connection lost before the first map is tried again,
        as a client would (on a machine starved of CPU the server's slow-client deadlines can cut
        a simulated node that did not get to run)."""
        if self.machine_key is None:
            self.machine_key = keys.generate_private_key()  # the same machine on a retry
        for attempt in range(10):
            try:
                return await self._run(authkey if not self.registered_at else None, ready, task_status)
            except (ControlClientError, trio.TooSlowError, OSError) as exc:
                if attempt == 9:
                    raise
                if self.first.is_set():
                    self.cuts += 1  # a stream the server cut: a real client comes back for a full map
                else:
                    self.retries += 1
                print(f"node {self.index}: {exc!r}; trying again", file=sys.stderr, flush=True)

    async def _run(self, authkey: str | None, ready: trio.CapacityLimiter, task_status):
        host, port = self.control
        async with ready:
            client_cm = open_noise_client(host, port, timeout=120, machine_private_key=self.machine_key,
                                          server_public_key=self.server_key)
            client = await client_cm.__aenter__()
            try:
                if authkey is not None:
                    reg = await client.post_json("/machine/register", {
                        "Version": 130, "NodeKey": keys.NODE.format(keys.public_key(self.node_key)),
                        "Auth": {"AuthKey": authkey}, "Hostinfo": {"Hostname": f"sim{self.index}"}})
                    if reg.json().get("Error"):
                        raise SystemExit(f"register failed: {reg.json()['Error']}")
                    self.registered_at = time.monotonic()
            except BaseException:
                await client_cm.__aexit__(None, None, None)
                raise
        if self.register_only:
            await client_cm.__aexit__(None, None, None)
            task_status.started()
            return
        self.client = client
        self._frames = FrameSplitter()
        # one context per node: making one per message cost the fleet more than a round takes
        self._decompress = zstandard.ZstdDecompressor().decompress  # deltas are one zstd frame each
        self._task_status = task_status
        try:
            body = json.dumps(self.body()).encode()
            if self.sink:
                await client.sink("POST", "/machine/map", body, self._on_bytes, self.reader)
            else:
                async with client.stream("POST", "/machine/map", body) as rs:
                    async for chunk in rs:
                        self._on_bytes(chunk)
        finally:
            await client_cm.__aexit__(None, None, None)

    def _on_bytes(self, chunk: bytes) -> None:
        """A piece of the map stream. Kept light so that the simulated fleet is not what we
        measure: frames are only split (the keepalive is known by its bytes), and decompressed
        and searched as bytes, never parsed, only while a round waits for something."""
        self.rx_bytes += len(chunk)
        messages = self._frames.receive(chunk)
        if not messages:
            return
        if any(not is_keepalive(m) for m in messages):
            self.last_rx = time.monotonic()
        if not self.first.is_set():
            self.first_map_at = time.monotonic()
            self.first_map_bytes = len(messages[0])
            self.first.set()
            self._task_status.started()
        if self.waiters:
            now = time.monotonic()
            for raw in messages:
                raw = self._decompress(raw)
                for ep, ev in list(self.waiters.items()):
                    if ep not in self.got and ep.encode() in raw:
                        self.got[ep] = now
                        ev.set()

    async def full_map_json_bytes(self) -> int | None:
        """The size of this node's full map now, as JSON: a one-shot map request on a connection
        of its own (its stream's connection is a sink, and decompressing every node's first map
        as it comes would load the fleet)."""
        host, port = self.control
        async with open_noise_client(host, port, timeout=120, machine_private_key=self.machine_key,
                                     server_public_key=self.server_key) as client:
            resp = await client.post_json("/machine/map", self.body(Stream=False))
        assert resp.status == 200, resp.status
        if not resp.body:
            return None  # Headscale answers a map request that does not stream with nothing
        # a map may be several zstd frames (mapframe.frame_compressed)
        return len(mapframe.decompress(resp.body[4:]))


async def wait_quiet(nodes: list[SimNode], limit: float = 300) -> None:
    """Until no node has received anything but keepalives for QUIET_S (at most `limit` s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await trio.sleep(0.5)
        if time.monotonic() - max(n.last_rx for n in nodes) > QUIET_S:
            break


async def join_more(nursery, nodes: list[SimNode], count: int, authkey: str | None, limiter, server_pid,
                    *, register_only: bool = False, metrics_url: str | None = None, idle_seconds: float = 10.0) -> dict:
    """`count` more nodes join the quiet tailnet of `nodes` as fast as `limiter` lets them: how many
    registrations per second the server sustains, and joins (first map received) per second. With
    `register_only` they only register (POST /machine/register, as `tailscale up` does before its
    first map request): the registration rate alone."""
    first = nodes[0]
    more = [SimNode(len(nodes) + i, first.control, server_key=first.server_key) for i in range(count)]
    for node in more:
        node.register_only = register_only
        node.reader = first.reader
    idle_cpu_per_s = None
    if server_pid and not register_only:
        # what the quiet tailnet costs by itself (keepalives, timers): paid with or without joins,
        # so it is taken out of the joins' CPU below
        idle0, started = cpu_s(server_pid), time.monotonic()
        await trio.sleep(idle_seconds)
        idle_cpu_per_s = (cpu_s(server_pid) - idle0) / (time.monotonic() - started)
    cpu0 = cpu_s(server_pid) if server_pid else float("nan")
    rx0 = sum(node.rx_bytes for node in nodes)
    flush0 = await trio.to_thread.run_sync(flush_counters, metrics_url)
    client0 = cpu_s(os.getpid())
    t0 = time.monotonic()
    async with trio.open_nursery() as starting:
        for node in more:
            starting.start_soon(nursery.start, node.run, authkey, limiter)
    took = time.monotonic() - t0

    def kib_per_join() -> float:
        rx = sum(node.rx_bytes for node in nodes) + sum(node.rx_bytes for node in more) - rx0
        return round(rx / count / 1024, 1)

    def cpu_per_join_ms() -> float:
        return round(1000 * (cpu_s(server_pid) - cpu0) / count, 1)

    reg = sorted(node.registered_at - t0 for node in more)
    res = {"count": count, "into": len(nodes), "concurrency": limiter.total_tokens, "register_only": register_only,
           "register_per_s": round(count / reg[-1], 1), "joins_per_s": round(count / took, 1),
           "took_s": round(took, 2),
           # the bytes a join costs the server to send (every message compressed, as clients get
           # them): its first map, and the peers' news of it (what reached them by the last join)
           "map_kib_per_join": kib_per_join()}
    if server_pid:
        res["server_cpu_per_join_ms"] = cpu_per_join_ms()
    # the load generator's, likewise: near a core's worth, the rate is the load generator's
    res["client_cpu_per_join_ms"] = round(1000 * (cpu_s(os.getpid()) - client0) / count, 1)
    res["client_cores_busy"] = round((cpu_s(os.getpid()) - client0) / took, 2)
    if not register_only:
        # and once every peer has had its news of every join (the flush window's last deltas):
        # all the bytes the joins cost, and all the CPU
        await wait_quiet(nodes + more)
        res["drained_map_kib_per_join"] = kib_per_join()
        if server_pid:
            res["drained_server_cpu_per_join_ms"] = cpu_per_join_ms()
            res["idle_server_cpu_ms_per_s"] = round(1000 * idle_cpu_per_s, 1)
            res["drained_beyond_idle_cpu_per_join_ms"] = round(
                res["drained_server_cpu_per_join_ms"] - 1000 * idle_cpu_per_s * (time.monotonic() - t0) / count, 2)
        flush = await trio.to_thread.run_sync(flush_counters, metrics_url)
        if flush and flush0:
            # what the flusher's passes (the peers' news of the joins) cost of that, and what they
            # wrote: the price of a byte where it is paid, and the CPU left for everything else
            cpu, sent, passes = (flush[k] - flush0[k] for k in FLUSH_COUNTERS)
            res["flush_passes"] = int(passes)
            res["drained_flush_cpu_per_join_ms"] = round(1000 * cpu / count, 2)
            res["drained_flush_kib_per_join"] = round(sent / count / 1024, 1)
            res["flush_ns_per_byte"] = round(1e9 * cpu / sent, 2) if sent else None
            res["first_map_kib_per_join"] = round(sum(node.first_map_bytes for node in more) / count / 1024, 1)
            if server_pid:
                res["drained_other_cpu_per_join_ms"] = round(res["drained_server_cpu_per_join_ms"]
                                                              - res["drained_flush_cpu_per_join_ms"], 2)
    print(f"{count} more nodes into {len(nodes)}: {res}", file=sys.stderr, flush=True)
    return res


def need_tspload() -> None:
    if not TSPLOAD.exists():
        raise SystemExit(f"{TSPLOAD} is missing: run `make tspload`")


async def register_with_tsp(nodes: list[SimNode], count: int, authkey: str, concurrency: int,
                            server_pid: int | None, metrics_url: str | None = None) -> dict:
    """`count` more nodes register into the quiet tailnet of `nodes`, made by tspload: Tailscale's
    own client code (control/tsp) in a Go process, which spends a fraction of the CPU per
    registration the Python fleet does, so that on two cores the rate is the server's."""
    need_tspload()
    host, port = nodes[0].control
    cpu0 = cpu_s(server_pid) if server_pid else float("nan")
    main0 = main_thread_cpu_s(server_pid) if server_pid else float("nan")
    ops0 = await trio.to_thread.run_sync(store_operations, metrics_url)
    done = await trio.run_process([str(TSPLOAD), "register", "-server", f"http://{host}:{port}", "-authkey", authkey,
                                   "-n", str(count), "-concurrency", str(concurrency), "-prefix", f"tsp{len(nodes)}-"],
                                  capture_stdout=True, check=False)
    out = done.stdout.decode().strip()
    if done.returncode or not out:
        raise SystemExit(f"tspload failed ({done.returncode}): {out[-500:]}")
    res = json.loads(out)
    res.update({"into": len(nodes), "register_only": True, "register_client": "tspload"})
    ops = await trio.to_thread.run_sync(store_operations, metrics_url)
    if ops:
        res["store_ops_per_registration"] = {op: round((n - ops0.get(op, 0)) / count, 2) for op, n in sorted(ops.items())
                                             if n - ops0.get(op, 0) > 0}
    if server_pid:
        res["server_cpu_per_join_ms"] = round(1000 * (cpu_s(server_pid) - cpu0) / count, 2)
        res["server_main_thread_cpu_per_join_ms"] = round(1000 * (main_thread_cpu_s(server_pid) - main0) / count, 2)
        res["server_main_thread_busy"] = round((main_thread_cpu_s(server_pid) - main0) / res["took_s"], 2)
    print(f"{count} more nodes into {len(nodes)}: {res}", file=sys.stderr, flush=True)
    return res


class TspFleet:
    """`tspload fleet`: nodes made by Tailscale's own client code (control/ts2021) in a Go process,
    joined and holding their map streams, driven over its stdin and stdout (benchmarks/tspload/
    fleet.go). Python's simulated nodes cost the load generator about what they cost the server;
    these a fraction of it, so on two cores the setup time is the server's."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buf = b""

    @classmethod
    async def open(cls, nursery, urls: list[str], authkey: str, n: int, concurrency: int, prefix: str) -> "TspFleet":
        need_tspload()
        args = [str(TSPLOAD), "fleet", "-authkey", authkey, "-n", str(n), "-concurrency", str(concurrency),
                "-prefix", prefix, "-quiet", f"{QUIET_S}s"]
        for url in urls:
            args += ["-server", url]
        process = await nursery.start(functools.partial(trio.run_process, args, stdin=subprocess.PIPE,
                                                        stdout=subprocess.PIPE, check=False))
        return cls(process)

    async def event(self, name: str) -> dict:
        """The next line it prints, which must be event `name`."""
        while b"\n" not in self._buf:
            chunk = await self.process.stdout.receive_some(1 << 20)
            if not chunk:
                raise SystemExit(f"tspload fleet ended (exit {self.process.returncode}) before {name!r}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        event = json.loads(line)
        if event.get("event") != name:
            raise SystemExit(f"tspload fleet: expected {name!r}, got {event}")
        return event

    async def send(self, line: str) -> None:
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def close(self) -> dict:
        await self.send("quit")
        done = await self.event("done")
        await self.process.stdin.aclose()
        await self.process.wait()
        return done


async def bench_tsp(n: int, rounds: int, controls: list[tuple[str, int]], authkey: str, server_pids: list[int],
                    *, concurrency: int = 64, metrics_url: str | None = None, round_gap: float = 0.5,
                    profile: str | None = None) -> dict:
    """As `bench`, for a full mesh, with the joining nodes made by `tspload fleet`: node 0 (the one
    that moves) is ours and joins first; the other n - 1 are the fleet's. `server_pids`: whose CPU
    to count (the coordinators on this machine); `profile`: py-spy samples the first during setup."""
    host, port = controls[0]
    mover = SimNode(0, controls[0], server_key=await fetch_server_key(host, port))
    mover.sink = False
    limiter = trio.CapacityLimiter(concurrency)
    result: dict = {"nodes": n, "controls": len(controls), "fleet": "tspload"}
    cpu0 = sum(cpu_s(pid) for pid in server_pids)
    sys0 = sum(system_cpu_s(pid) for pid in server_pids)
    main0 = sum(main_thread_cpu_s(pid) for pid in server_pids)
    client0 = cpu_s(os.getpid())
    spy = start_py_spy(server_pids[0], profile) if profile and server_pids else None
    async with trio.open_nursery() as nursery:
        t0 = time.monotonic()
        await nursery.start(mover.run, authkey, limiter)
        fleet = await TspFleet.open(nursery, [f"http://{h}:{p}" for h, p in controls], authkey, n - 1, concurrency,
                                    "tsp")
        joined = await fleet.event("joined")
        result["setup_s"] = round(time.monotonic() - t0, 2)
        if spy is not None:
            stop_py_spy(spy)
        result["retries"] = mover.retries + joined["retries"]
        print(f"setup of {n} nodes took {result['setup_s']} s", file=sys.stderr, flush=True)
        quiet = await fleet.event("quiet")
        result["drain_s"] = round(quiet["drain_s"], 1)
        result["map_kib_per_join"] = round((quiet["rx_bytes"] + mover.rx_bytes) / n / 1024, 1)
        result["cut_streams"] = quiet["cuts"]
        if server_pids:
            result["server_cpu_s"] = round(sum(cpu_s(pid) for pid in server_pids) - cpu0, 1)
            result["server_cpu_per_join_ms"] = round(1000 * result["server_cpu_s"] / n, 1)
            result["server_system_cpu_s"] = round(sum(system_cpu_s(pid) for pid in server_pids) - sys0, 1)
            result["server_main_thread_cpu_s"] = round(sum(main_thread_cpu_s(pid) for pid in server_pids) - main0, 1)
        result["client_cpu_s"] = round(cpu_s(os.getpid()) - client0 + quiet["client_cpu_s"], 1)
        result["fleet_cpu_s"] = round(quiet["client_cpu_s"], 1)
        latencies: list[float] = []
        server_bounds: list[float] = []
        missed = 0
        rounds_cpu0 = sum(cpu_s(pid) for pid in server_pids)
        fleet_cpu0 = quiet["client_cpu_s"]
        for r in range(rounds):
            endpoint = f"127.0.0.{r % 200 + 10}:{40000 + r}"
            await fleet.send(f"expect {endpoint}")
            await fleet.event("armed")
            buckets = await trio.to_thread.run_sync(fanout_buckets, metrics_url)
            sent = time.monotonic()
            resp = await mover.client.post_json("/machine/map", mover.body(Stream=False, OmitPeers=True,
                                                                            Endpoints=[endpoint]))
            assert resp.status == 200, resp.status
            seen = await fleet.event("seen")
            bound = slowest_wave_bound(buckets, await trio.to_thread.run_sync(fanout_buckets, metrics_url))
            if bound is not None:
                server_bounds.append(bound)
            lat = sorted((t - sent for t in seen["times"] if t), reverse=True)
            missed += len(seen["times"]) - len(lat)
            print(f"round {r}: node 0 -> {len(seen['times'])} peers; slowest {[round(t, 3) for t in lat[:3]]}, "
                  f"fastest {[round(t, 3) for t in lat[-3:]]}; server wrote all within {bound} s",
                  file=sys.stderr, flush=True)
            fleet_cpu1 = seen["client_cpu_s"]
            latencies.extend(lat)
            await trio.sleep(round_gap)
        latencies.sort()
        if server_pids and rounds:
            result["server_cpu_per_round_ms"] = round(1000 * (sum(cpu_s(pid) for pid in server_pids) - rounds_cpu0)
                                                      / rounds, 1)
            result["client_cpu_per_round_ms"] = round(1000 * (fleet_cpu1 - fleet_cpu0) / rounds, 1)
        if server_pids:
            result["server_rss_mib"] = round(max(rss_mib(pid) for pid in server_pids), 1)
        done = await fleet.close()
        result.update({
            "rounds": rounds,
            "samples": len(latencies),
            "missed_after_60s": missed,
            "cut_streams_by_end": done["cuts"],
        })
        if latencies:
            result.update({
                "p50_ms": round(1000 * statistics.median(latencies), 1),
                "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
                "max_ms": round(1000 * latencies[-1], 1),
            })
        result["fleet_cpu_total_s"] = round(done["client_cpu_s"], 1)
        # the server's own view: each round's change written to its last receiver within this
        # bound (histogram bucket)
        result["server_written_to_all_within_s"] = max(server_bounds) if server_bounds else None
        nursery.cancel_scope.cancel()
    return result


async def bench(n: int, rounds: int, controls: list[tuple[str, int]], authkey: str | None, server_pid: int | None,
                *, nodes: list[SimNode] | None = None, movers: list[SimNode] | None = None,
                peers_of: Callable[[SimNode], list[SimNode]] | None = None, concurrency: int = 64,
                profile: str | None = None, join_after: int = 0, register_after: int = 0, register_client: str = "python",
                metrics_url: str | None = None, sink: bool = True, idle_seconds: float = 10.0,
                shared_reader: bool = True, round_gap: float = 0.5) -> dict:
    """`nodes` defaults to n fresh SimNodes (alternating over `controls`) that register with
    `authkey`; round r moves `movers[r % len(movers)]` (default: node 0) and waits for every node in
    `peers_of(mover)` (default: all the others). With `sink`, the nodes' map streams are read by
    one SinkReader task (`shared_reader`) or by a task each."""
    if nodes is None:
        # one GET /key per control, not per node (thousands of them would only load the server)
        server_keys = [await fetch_server_key(host, port) for host, port in controls]
        nodes = [SimNode(i, controls[i % len(controls)], server_key=server_keys[i % len(controls)])
                 for i in range(n)]
    movers = movers or [nodes[0]]
    for node in nodes:
        node.sink = sink
    for mover in movers:
        mover.sink = False  # its connection carries the rounds' lite map requests
    peers_of = peers_of or (lambda m: [p for p in nodes if p is not m])
    limiter = trio.CapacityLimiter(concurrency)
    result: dict = {"nodes": n, "controls": len(controls)}
    spy = start_py_spy(server_pid, profile) if profile and server_pid else None
    cpu0 = cpu_s(server_pid) if server_pid else float("nan")
    sys0 = system_cpu_s(server_pid) if server_pid else float("nan")
    client0 = cpu_s(os.getpid())
    async with trio.open_nursery() as nursery:
        if sink and shared_reader:
            reader = SinkReader()
            nursery.start_soon(reader.run)
            for node in nodes:
                node.reader = reader
        t0 = time.monotonic()
        async with trio.open_nursery() as starting:
            for node in nodes:
                starting.start_soon(nursery.start, node.run, authkey, limiter)
        result["setup_s"] = round(time.monotonic() - t0, 2)
        result["retries"] = sum(node.retries for node in nodes)
        if spy is not None:
            stop_py_spy(spy)
        print(f"setup of {n} nodes took {result['setup_s']} s; server pid {server_pid}", file=sys.stderr, flush=True)
        # Measure from a quiet tailnet: wait until the join announcements have drained (no node
        # received anything for QUIET_S), at most 5 minutes.
        await wait_quiet(nodes)
        result["drain_s"] = round(time.monotonic() - t0 - result["setup_s"], 1)
        result["map_kib_per_join"] = round(sum(node.rx_bytes for node in nodes) / n / 1024, 1)
        # ... and from a quiet load generator: the storm's garbage collected and its freed heap
        # returned, or the fleet's own memory churn (worse the faster the server joined it) is
        # part of every round's latency
        gc.collect()
        trim_heap()
        result["cut_streams"] = sum(node.cuts for node in nodes)
        # the node whose first map came last lists (nearly) every other node
        last = max(nodes, key=lambda node: node.first_map_at)
        result["last_first_map_zstd_bytes"] = last.first_map_bytes
        result["last_first_map_json_bytes"] = await last.full_map_json_bytes()
        if server_pid:
            # setup and drain: every join's work, first maps and deltas to every session
            result["server_cpu_s"] = round(cpu_s(server_pid) - cpu0, 1)
            result["server_cpu_per_join_ms"] = round(1000 * result["server_cpu_s"] / n, 1)
            result["server_system_cpu_s"] = round(system_cpu_s(server_pid) - sys0, 1)
        result["client_cpu_s"] = round(cpu_s(os.getpid()) - client0, 1)
        result["load_avg"] = os.getloadavg()[0]
        latencies: list[float] = []
        server_bounds: list[float] = []
        missed = 0
        result["client_rss_before_rounds_mib"] = round(rss_mib(os.getpid()), 1)
        rounds_cpu0 = cpu_s(server_pid) if server_pid else float("nan")
        rounds_client_cpu0 = cpu_s(os.getpid())
        rounds_sys0 = system_cpu_s(server_pid) if server_pid else float("nan")
        rounds_flush0 = await trio.to_thread.run_sync(flush_counters, metrics_url)
        for r in range(rounds):
            mover = movers[r % len(movers)]
            peers = peers_of(mover)
            endpoint = f"127.0.0.{r % 200 + 10}:{40000 + r}"
            events = []
            for peer in peers:
                ev = trio.Event()
                peer.waiters[endpoint] = ev
                events.append(ev)
            buckets = await trio.to_thread.run_sync(fanout_buckets, metrics_url)
            sent = time.monotonic()
            resp = await mover.client.post_json("/machine/map", mover.body(Stream=False, OmitPeers=True,
                                                                            Endpoints=[endpoint]))
            assert resp.status == 200, resp.status
            with trio.move_on_after(60):  # a receiver that has not got it by then is counted as missed
                for ev in events:
                    await ev.wait()
            missed += sum(1 for peer in peers if endpoint not in peer.got)
            bound = slowest_wave_bound(buckets, await trio.to_thread.run_sync(fanout_buckets, metrics_url))
            if bound is not None:
                server_bounds.append(bound)
            lat = [(peer.got[endpoint] - sent, peer.index) for peer in peers if endpoint in peer.got]
            for peer in peers:
                del peer.waiters[endpoint]
            late = sorted(lat, reverse=True)[:5]
            print(f"round {r}: node {mover.index} -> {len(peers)} peers; slowest "
                  f"{[(round(t, 3), i) for t, i in late]}", file=sys.stderr, flush=True)
            latencies.extend(t for t, _ in lat)
            await trio.sleep(round_gap)
        latencies.sort()
        if server_pid:
            # the server's CPU per change, the 0.5 s pauses between rounds included
            result["server_cpu_per_round_ms"] = round(1000 * (cpu_s(server_pid) - rounds_cpu0) / rounds, 1)
            result["server_system_cpu_per_round_ms"] = round(1000 * (system_cpu_s(server_pid) - rounds_sys0) / rounds, 1)
        rounds_flush = await trio.to_thread.run_sync(flush_counters, metrics_url)
        if rounds_flush:
            # the flusher's own share: its passes' CPU, and how many passes a change took
            cpu, passes = (rounds_flush[name] - rounds_flush0[name] for name in (FLUSH_COUNTERS[0], FLUSH_COUNTERS[2]))
            result["flush_cpu_per_round_ms"] = round(1000 * cpu / rounds, 1)
            result["flush_passes_per_round"] = round(passes / rounds, 2)
        # the simulated fleet's, likewise: above a round's p99 it would be what the rounds measure
        result["client_cpu_per_round_ms"] = round(1000 * (cpu_s(os.getpid()) - rounds_client_cpu0) / rounds, 1)
        result.update({
            "rounds": rounds,
            "samples": len(latencies),
            "missed_after_60s": missed,
            "cut_streams_by_end": sum(node.cuts for node in nodes),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
            "max_ms": round(1000 * latencies[-1], 1),
            # the server's own view: the change written to its last receiver within this bound
            # (histogram bucket), every round
            "server_written_to_all_within_s": max(server_bounds) if server_bounds else None,
        })
        if server_pid:
            result["server_rss_mib"] = round(rss_mib(server_pid), 1)
        result["client_rss_mib"] = round(rss_mib(os.getpid()), 1)
        if register_after and register_client == "tsp":
            result["register_after"] = await register_with_tsp(nodes, register_after, authkey, concurrency, server_pid,
                                                               metrics_url)
        elif register_after:
            result["register_after"] = await join_more(nursery, nodes, register_after, authkey, limiter, server_pid,
                                                       register_only=True)
        if join_after:
            result["join_after"] = await join_more(nursery, nodes, join_after, authkey, limiter, server_pid,
                                                   metrics_url=metrics_url, idle_seconds=idle_seconds)
        nursery.cancel_scope.cancel()
    return result


def main() -> None:
    # thousands of simulated nodes are a heap of long-lived objects: at the default thresholds the
    # cyclic collector took a quarter of the load generator's CPU walking it
    gc.set_threshold(100_000, 50, 100)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--control", action="append", help="URL of a running coordinator (repeatable)")
    ap.add_argument("--authkey", help="reusable pre-auth key (with --control)")
    ap.add_argument("--json-out")
    ap.add_argument("--py-spy", metavar="FILE", help="sample the server with py-spy during setup (raw folded stacks)")
    ap.add_argument("--join-after", type=int, default=0, metavar="M",
                    help="after the rounds, M more nodes join as fast as they can (registrations/s into N)")
    ap.add_argument("--register-after", type=int, default=0, metavar="M",
                    help="after the rounds, M more nodes only register, as fast as they can (before --join-after)")
    ap.add_argument("--register-client", choices=("python", "tsp"), default="python",
                    help="who makes the --register-after registrations: this process's simulated nodes, or "
                         "tspload (Tailscale's control/tsp client in Go, built by `make tspload`)")
    ap.add_argument("--concurrency", type=int, default=64, help="nodes registering at once")
    ap.add_argument("--round-gap", type=float, default=0.5,
                    help="seconds between a round's last receiver and the next change: at 0.5 s, changes come "
                         "faster than the flush window's CPU share lets one-change passes go at 5,000 nodes on "
                         "2 slow cores, and some wait for the window; a longer gap measures lone changes")
    ap.add_argument("--fleet", choices=("python", "tsp"), default="python",
                    help="who the joining nodes are: this process's simulated nodes, or `tspload fleet` "
                         "(Tailscale's control/ts2021 client in Go, built by `make tspload`; full mesh, "
                         "setup and rounds only)")
    ap.add_argument("--idle-seconds", type=float, default=10.0,
                    help="before --join-after, how long the quiet tailnet's own CPU is watched (taken out of the joins')")
    ap.add_argument("--no-sink", action="store_true",
                    help="nodes read their map streams through h2 (the load generator before NoiseClient.sink)")
    ap.add_argument("--task-per-stream", action="store_true",
                    help="each sink's connection is read by a task of its own (the load generator before SinkReader)")
    args = ap.parse_args()
    for n in args.nodes:
        server = None
        tmp = tempfile.TemporaryDirectory()
        try:
            if args.control:
                urls, authkey = args.control, args.authkey
            else:
                server = Server(Path(tmp.name))
                server.cli("users", "create", "bench")
                authkey = json.loads(server.cli("preauthkeys", "create", "--user", "bench", "--reusable",
                                                "-o", "json"))["key"]
                urls = [server.url]
            controls = []
            for url in urls:
                hostport = url.split("://", 1)[1].rstrip("/")
                host, port = hostport.rsplit(":", 1)
                controls.append((host, int(port)))
            if args.fleet == "tsp":
                res = trio.run(functools.partial(bench_tsp, n, args.rounds, controls, authkey,
                                                 [server.pid()] if server else [], concurrency=args.concurrency,
                                                 metrics_url=server and f"http://127.0.0.1:{server.metrics_port}/metrics",
                                                 round_gap=args.round_gap,
                                                 profile=args.py_spy and f"{args.py_spy}.{n}"))
            else:
                res = trio.run(functools.partial(bench, n, args.rounds, controls, authkey, server.pid() if server else None,
                                                 profile=args.py_spy and f"{args.py_spy}.{n}",
                                                 join_after=args.join_after, register_after=args.register_after,
                                                 register_client=args.register_client,
                                                 metrics_url=server and f"http://127.0.0.1:{server.metrics_port}/metrics",
                                                 concurrency=args.concurrency, sink=not args.no_sink,
                                                 idle_seconds=args.idle_seconds,
                                                 shared_reader=not args.task_per_stream, round_gap=args.round_gap))
            res["date"] = time.strftime("%Y-%m-%d")
            res["round_gap_s"] = args.round_gap
            res["cpus"] = os.cpu_count()
            if args.fleet == "python":
                res["sink"] = not args.no_sink
                res["reader"] = "task per stream" if args.no_sink or args.task_per_stream else "SinkReader"
            print(json.dumps(res))
            if args.json_out:
                with open(args.json_out, "a") as f:
                    f.write(json.dumps(res) + "\n")
        finally:
            if server:
                server.stop()
            tmp.cleanup()


if __name__ == "__main__":
    main()
