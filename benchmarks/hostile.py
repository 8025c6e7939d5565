#!/usr/bin/env python3
"""Hostile traffic (issue #10): floods against a `trioscale serve` process on loopback, with the
server's memory and a well-behaved client watched while each flood runs.

Run by hand (not a test), on a machine you own, under `nice` (the floods use the CPU):

    nice -n 10 .venv/bin/python benchmarks/hostile.py                      # every flood, 30 s each
    nice -n 10 .venv/bin/python benchmarks/hostile.py --seconds 5 --floods noise-h2 dns-amp
    # another checkout (an interpreter that imports that checkout's trioscale):
    nice -n 10 .venv/bin/python benchmarks/hostile.py --python /tmp/hostile-venv/bin/python \
        --label "before (f5cb61d)" --json-out before.json --md-out before.md

Each flood gets a fresh server (temp data dir, free 127.0.0.1 ports, killed by PID at the end),
a reusable pre-auth key, and two real nodes registered through our own Noise client
(shared/testing/noiseclient.py): `watcher` holds a map stream and `mover` is renamed through the admin API
every second. While the flood runs the benchmark measures, once a second:

* map: each rename should reach the watcher's map stream as a delta (delivered / renames, latency);
* `GET /key?v=113` on a new connection from 127.0.0.3 (`--good-source`; the floods come from
  127.0.0.1, so a per-source cap may refuse them and not it) (answers / tries, latency);
* a DNS A query for the watcher's MagicDNS name (answers / tries);
* a DERP upgrade + handshake with the watcher's node key (relay accepts / tries);
* the admin API (the rename itself: 200s / tries).

Server memory is VmRSS from /proc/PID/status, sampled every 0.25 s (before / peak / after, where
"after" is `--settle` seconds after the flood stopped and its connections closed), plus VmHWM.

Floods (each bounded in count and time, and only ever aimed at loopback):

  noise-h2        Noise handshakes with random machine keys, then many HTTP/2 streams per connection
                  whose request bodies never end (default 4 connections x 250 streams x 1 MiB).
  derp-slowloris  TLS connections to the DERP listener sending one byte of the HTTP upgrade every
                  20 s (default 2,000).
  derp-idle       idle DERP clients that completed the handshake (default 2,000; the flood's server
                  runs with derp.server.verify_clients: false so random keys are admitted).
  fd-exhaust      idle TCP connections to the control listener from 127.0.0.1 until the server stops
                  taking them (at most 20,000, opened by two child processes).
  dns-amp         recursive TXT queries (EDNS 4096) from 127.0.0.2 for names the server forwards to
                  a fake upstream inside this process that answers ~4 KB; bytes out / bytes in.
  pending-reg     unauthenticated RegisterRequests with ~1 MB Hostinfo each; database growth and
                  whether a real interactive login made before the flood can still be approved.
  pending-reg-count  the same with small (2 KB) Hostinfo: many registrations, against the count cap.

`--fd-server-nofile N` starts the fd-exhaust flood's server with RLIMIT_NOFILE N (a common service
limit such as 4096) so that exhaustion is reached within the flood on a slow machine.

Config keys that only newer code knows (connection caps, recursion allow lists, ...) go in
`--extra-config FILE.yaml`, deep-merged into every server's config.

Output: progress on stderr, one markdown table on stdout (and `--md-out`), all figures in
`--json-out`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import h2.exceptions
import trio
import yaml

from trioscale.shared.testing.derpclient import connect_derp
from trioscale.shared.testing.noiseclient import (
    ControlClientError,
    _ClientStream,
    fetch_server_key,
    http_request,
    open_noise_client,
)
from trioscale.shared.proto import keys, mapframe
from trioscale.shared.net.addr import split_host_port
from trioscale.shared.net.tls import client_context

READY_TEXT = "trioscale is running"
BASE_DOMAIN = "tailnet.internal"
FLOODS = ("noise-h2", "derp-slowloris", "derp-idle", "fd-exhaust", "dns-amp", "pending-reg", "pending-reg-count")


# -- small helpers ---------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_udp_port() -> int:
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP")


def require_loopback(host: str) -> str:
    # The floods are attacks: never aim them anywhere but this machine.
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing to flood {host}: only loopback targets are allowed")
    return host


def split_hostport(addr: str) -> tuple[str, int]:
    host, port = split_host_port(addr)
    return require_loopback(host), port


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def proc_status(pid: int, field_name: str) -> float:
    """A kB field of /proc/PID/status in MiB (nan once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


# -- the server under test -------------------------------------------------------------------------


class Server:
    """`<python> -m trioscale.cli serve` on free loopback ports, stopped by PID."""

    def __init__(self, workdir: Path, python: str, upstream: tuple[str, int], overrides: Mapping[str, Any],
                 nofile: int = 0) -> None:
        self.workdir = workdir
        self.python = python
        self.nofile = nofile  # RLIMIT_NOFILE for the server (0: inherit ours)
        control = free_port()
        self.control = ("127.0.0.1", control)
        self.cfg: dict[str, Any] = {
            "server_url": f"http://127.0.0.1:{control}",
            "listen_addr": f"127.0.0.1:{control}",
            "data_dir": str(workdir / "data"),
            "admin": {"listen_addr": f"127.0.0.1:{free_port()}"},
            "derp": {"server": {"listen_addr": f"127.0.0.1:{free_port()}",
                                "stun_listen_addr": f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"}},
            "dns": {"listen_addr": f"127.0.0.1:{free_tcp_udp_port()}", "base_domain": BASE_DOMAIN,
                    "nameservers": {"global": [f"{upstream[0]}:{upstream[1]}"]}},
            "log": {"level": "info"},
        }
        deep_merge(self.cfg, overrides)
        self.admin = split_hostport(self.cfg["admin"]["listen_addr"])
        self.derp = split_hostport(self.cfg["derp"]["server"]["listen_addr"])
        self.dns = split_hostport(self.cfg["dns"]["listen_addr"])
        self.config_path = workdir / "trioscale.yaml"
        self.config_path.write_text(yaml.safe_dump(self.cfg))
        self.log_path = workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_key = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def data_dir(self) -> Path:
        return Path(self.cfg["data_dir"])

    def db_bytes(self) -> int:
        total = 0
        for p in self.data_dir.glob("db.sqlite*"):
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def log_text(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOSCALE_")}
        with open(self.log_path, "wb") as out:
            limit = self.nofile

            def set_limit() -> None:
                if limit:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

            self.proc = subprocess.Popen([self.python, "-m", "trioscale.cli", "-c", str(self.config_path), "serve"],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                                         preexec_fn=set_limit)
        with trio.fail_after(60):
            while READY_TEXT not in self.log_text():
                if self.proc.poll() is not None:
                    raise SystemExit(f"trioscale exited with {self.proc.returncode}; see {self.log_path}:\n"
                                     + self.log_text()[-3000:])
                await trio.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    async def cli(self, *args: str) -> str:
        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run([self.python, "-m", "trioscale.cli", "-c", str(self.config_path), *args],
                                  capture_output=True, text=True, timeout=120, cwd=self.workdir)
        proc = await trio.to_thread.run_sync(run)
        if proc.returncode != 0:
            raise SystemExit(f"trioscale {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    async def api(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        headers = [("Authorization", f"Bearer {self.api_key}")]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        resp = await http_request(*self.admin, method, path, headers=headers, body=data, timeout=timeout)
        try:
            return resp.status, json.loads(resp.body or b"null")
        except ValueError:
            return resp.status, resp.body[:200]


# -- the well-behaved client -----------------------------------------------------------------------


@dataclass
class Probe:
    ok: int = 0
    tries: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, ok: bool, latency: float | None = None, error: str = "") -> None:
        self.tries += 1
        if ok:
            self.ok += 1
            if latency is not None:
                self.latencies.append(latency)
        elif error:
            self.errors[error] = self.errors.get(error, 0) + 1

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "tries": self.tries, "p50_ms": ms(pct(self.latencies, 0.5)),
                "max_ms": ms(max(self.latencies) if self.latencies else None),
                "errors": dict(sorted(self.errors.items(), key=lambda kv: -kv[1])[:3])}


def err_name(exc: BaseException) -> str:
    text = str(exc).split("\n")[0][:60]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Node:
    """A real node: registered with the pre-auth key over Noise, optionally streaming its map."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.machine_key = keys.generate_private_key()
        self.node_key = keys.generate_private_key()
        self.disco = keys.public_key(keys.generate_private_key())
        self.id = 0

    def node_key_text(self) -> str:
        return keys.NODE.format(keys.public_key(self.node_key))

    async def register(self, server: Server, authkey: str) -> None:
        async with open_noise_client(*server.control, machine_private_key=self.machine_key, timeout=30) as c:
            resp = await c.post_json("/machine/register", {
                "Version": 130, "NodeKey": self.node_key_text(), "Auth": {"AuthKey": authkey},
                "Hostinfo": {"Hostname": self.name}})
            if resp.status != 200 or resp.json().get("Error"):
                raise SystemExit(f"register {self.name} failed: {resp.status} {resp.body[:200]!r}")
            # Peers are announced once they have a disco key: send one (non-streaming) map request.
            resp = await c.post_json("/machine/map", {**self.map_request(), "Stream": False, "OmitPeers": True})
            if resp.status != 200:
                raise SystemExit(f"map request of {self.name} failed: {resp.status} {resp.body[:200]!r}")

    def map_request(self) -> dict[str, Any]:
        return {"Version": 130, "NodeKey": self.node_key_text(), "DiscoKey": keys.DISCO.format(self.disco),
                "Stream": True, "Compress": "zstd", "KeepAlive": True, "Hostinfo": {"Hostname": self.name}}


class WellBehaved:
    """The concurrent well-behaved client: map deltas, /key, DNS, DERP and the admin API."""

    def __init__(self, server: Server, watcher: Node, mover: Node, good_source: str) -> None:
        self.server = server
        self.good_source = good_source
        self.watcher = watcher
        self.mover = mover
        self.map_ready = trio.Event()
        self.map_closed = ""
        self.waiting: dict[bytes, float] = {}  # new name -> time of the rename
        self.rename_seq = 0
        self.reset_probes()

    def reset_probes(self) -> None:
        self.map = Probe()        # tries = renames the admin API accepted, ok = deltas that carried them
        self.deltas = 0           # non-keepalive map messages received
        self.key = Probe()
        self.dns = Probe()
        self.derp = Probe()
        self.admin = Probe()

    async def map_stream(self) -> None:
        """The watcher's map stream, for the whole life of the server."""
        try:
            async with open_noise_client(*self.server.control, machine_private_key=self.watcher.machine_key,
                                         timeout=30) as client:
                decoder = mapframe.MapStreamDecoder("zstd")
                body = json.dumps(self.watcher.map_request()).encode()
                async with client.stream("POST", "/machine/map", body) as rs:
                    if rs.status != 200:
                        raise ControlClientError(f"map: HTTP {rs.status}")
                    async for chunk in rs:
                        for raw in decoder.receive_data(chunk):
                            if raw == mapframe.KEEPALIVE_JSON:
                                continue
                            self.map_ready.set()
                            self.deltas += 1
                            now = time.monotonic()
                            for name, sent in list(self.waiting.items()):
                                if name in raw:
                                    del self.waiting[name]
                                    self.map.ok += 1
                                    self.map.latencies.append(now - sent)
            self.map_closed = "map stream ended"
        except (ControlClientError, OSError, trio.BrokenResourceError) as exc:
            self.map_closed = err_name(exc)
            log(f"watcher's map stream closed: {self.map_closed}")

    async def renamer(self) -> None:
        while True:
            self.rename_seq += 1
            name = f"mv{self.rename_seq:05d}"
            t0 = time.monotonic()
            try:
                status, _ = await self.server.api("POST", f"/api/v1/node/{self.mover.id}/rename/{name}", timeout=5)
                ok = status == 200
                self.admin.record(ok, time.monotonic() - t0, "" if ok else f"HTTP {status}")
                if ok:
                    self.map.tries += 1
                    self.waiting[(name + "." + BASE_DOMAIN).encode()] = t0
            except (OSError, trio.TooSlowError, ControlClientError, trio.BrokenResourceError) as exc:
                self.admin.record(False, error=err_name(exc))
            await trio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))

    async def probe_key(self) -> None:
        """`GET /key?v=113` from `good_source`, not the floods' 127.0.0.1: per-source caps should
        stop the flood without stopping other clients."""
        host, port = self.server.control
        t0 = time.monotonic()
        try:
            with trio.fail_after(3):
                stream = await trio.open_tcp_stream(host, port, local_address=self.good_source)
                async with stream:
                    await stream.send_all(f"GET /key?v=113 HTTP/1.1\r\nHost: {host}:{port}\r\n"
                                          "Connection: close\r\n\r\n".encode())
                    data = b""
                    while len(data) < 65536:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        data += chunk
            status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else b"?"
            ok = status == b"200" and b"publicKey" in data
            self.key.record(ok, time.monotonic() - t0, "" if ok else f"HTTP {status.decode(errors='replace')}")
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.key.record(False, error=err_name(exc))

    async def probe_dns(self) -> None:
        query = dns.message.make_query(f"{self.watcher.name}.{BASE_DOMAIN}.", "A")
        t0 = time.monotonic()
        try:
            with trio.fail_after(2):
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                with sock:
                    await sock.sendto(query.to_wire(), self.server.dns)
                    while True:
                        data, _ = await sock.recvfrom(4096)
                        reply = dns.message.from_wire(data)
                        if reply.id == query.id:
                            break
            ok = reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)
            self.dns.record(ok, time.monotonic() - t0, "" if ok else dns.rcode.to_text(reply.rcode()))
        except (OSError, trio.TooSlowError, dns.exception.DNSException) as exc:
            self.dns.record(False, error=err_name(exc))

    async def probe_derp(self) -> None:
        t0 = time.monotonic()
        try:
            client = await connect_derp(*self.server.derp, self.watcher.node_key, verify=False, timeout=3)
            self.derp.record(True, time.monotonic() - t0)
            await client.aclose()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, EOFError, Exception) as exc:  # noqa: BLE001
            self.derp.record(False, error=err_name(exc))

    async def probes(self) -> None:
        """Once a second each, as long as the scope runs (the renamer runs beside)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.renamer)
            while True:
                t0 = time.monotonic()
                nursery.start_soon(self.probe_key)
                nursery.start_soon(self.probe_dns)
                nursery.start_soon(self.probe_derp)
                await trio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))

    def summary(self) -> dict[str, Any]:
        lost = len(self.waiting)
        return {"map": {**self.map.summary(), "deltas": self.deltas, "undelivered": lost,
                        "stream_closed": self.map_closed},
                "key": self.key.summary(), "dns": self.dns.summary(), "derp": self.derp.summary(),
                "admin": self.admin.summary()}


# -- sampling --------------------------------------------------------------------------------------


class Sampler:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.rss: list[float] = []
        self.fds: list[int] = []
        self.db: list[int] = []

    def take(self) -> None:
        self.rss.append(proc_status(self.server.pid, "VmRSS"))
        self.fds.append(open_fds(self.server.pid))
        self.db.append(self.server.db_bytes())

    async def run(self) -> None:
        while True:
            self.take()
            await trio.sleep(0.25)


# -- the floods ------------------------------------------------------------------------------------


@dataclass
class FloodCtx:
    server: Server
    seconds: float
    args: argparse.Namespace
    out: dict[str, Any]
    server_key: bytes = b""
    name: str = ""


async def flood_noise_h2(ctx: FloodCtx) -> None:
    """Unfinished HTTP/2 request bodies inside Noise (finding 1)."""
    a, out = ctx.args, ctx.out
    out.update(connections=a.h2_connections, streams_per_conn=a.h2_streams, bytes_per_stream=a.h2_stream_bytes,
               handshakes=0, handshake_failures=0, streams_opened=0, streams_over_limit=0, streams_reset=0,
               bytes_sent=0, connections_closed_by_server=0)
    chunk = b"\x00" * 16384
    path = "/machine/register"

    async def one(i: int) -> None:
        try:
            async with open_noise_client(*ctx.server.control, server_public_key=ctx.server_key, timeout=15) as c:
                out["handshakes"] += 1
                sids: list[int] = []
                async with c._lock:
                    for _ in range(a.h2_streams):
                        sid = c._h2.get_next_available_stream_id()
                        try:
                            c._h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                                     (":authority", "unused"), (":path", path),
                                                     ("content-type", "application/json")], end_stream=False)
                        except h2.exceptions.TooManyStreamsError:
                            out["streams_over_limit"] += a.h2_streams - len(sids)
                            break
                        c._streams[sid] = _ClientStream(sid)
                        sids.append(sid)
                    await c._flush_locked()
                out["streams_opened"] += len(sids)
                sent = dict.fromkeys(sids, 0)
                reset: set[int] = set()
                while not c.closed:
                    progressed = False
                    async with c._lock:
                        for sid in sids:
                            st = c._streams.get(sid)
                            room = a.h2_stream_bytes - sent[sid]
                            if st is not None and st.closed and sid not in reset and not c.closed:
                                reset.add(sid)  # the server reset (or answered) it
                                out["streams_reset"] += 1
                            if st is None or st.closed or room <= 0:
                                continue
                            try:
                                n = min(c._h2.local_flow_control_window(sid), c._h2.max_outbound_frame_size,
                                        room, len(chunk))
                                if n > 0:
                                    c._h2.send_data(sid, chunk[:n])
                                    sent[sid] += n
                                    out["bytes_sent"] += n
                                    progressed = True
                            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                                st.closed = True
                        await c._flush_locked()
                    await trio.sleep(0 if progressed else 0.05)
                raise ControlClientError("closed")
        except ControlClientError as exc:
            if "closed" in str(exc) or "GOAWAY" in str(exc) or "lost" in str(exc):
                out["connections_closed_by_server"] += 1
            else:
                out["handshake_failures"] += 1
        except (OSError, trio.TooSlowError, trio.BrokenResourceError):
            out["handshake_failures"] += 1

    async with trio.open_nursery() as nursery:
        for i in range(a.h2_connections):
            nursery.start_soon(one, i)


async def _tls_connect(host: str, port: int, timeout: float) -> trio.SSLStream:
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream(host, port)
        try:
            stream = trio.SSLStream(tcp, client_context(verify=False), server_hostname=host,
                                    https_compatible=True)
            await stream.do_handshake()
            return stream
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise


async def flood_derp_slowloris(ctx: FloodCtx) -> None:
    """TLS connections that send the DERP upgrade one byte every `interval` seconds (finding 3)."""
    a, out = ctx.args, ctx.out
    out.update(connections=a.derp_conns, interval_s=a.slowloris_interval, tls_ok=0, tls_failed=0,
               bytes_sent=0, closed_by_server=0, open_at_end=0)
    upgrade = f"GET /derp HTTP/1.1\r\nHost: {ctx.server.derp[0]}\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n".encode()
    limiter = trio.CapacityLimiter(64)
    open_now = [0]

    async def one() -> None:
        async with limiter:
            try:
                stream = await _tls_connect(*ctx.server.derp, 30)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError):
                out["tls_failed"] += 1
                return
        out["tls_ok"] += 1
        open_now[0] += 1
        try:
            async with trio.open_nursery() as nursery:
                async def reader() -> None:
                    try:
                        while await stream.receive_some(4096):
                            pass
                    except (trio.BrokenResourceError, OSError):
                        pass
                    out["closed_by_server"] += 1
                    open_now[0] -= 1
                    nursery.cancel_scope.cancel()

                nursery.start_soon(reader)
                for pos in range(len(upgrade)):
                    try:
                        await stream.send_all(upgrade[pos:pos + 1])
                    except (trio.BrokenResourceError, OSError):
                        break
                    out["bytes_sent"] += 1
                    await trio.sleep(a.slowloris_interval)
                await trio.sleep_forever()
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(a.derp_conns):
                nursery.start_soon(one)
    finally:
        out["open_at_end"] = open_now[0]


async def flood_derp_idle(ctx: FloodCtx) -> None:
    """Idle DERP clients that completed the handshake (finding 3)."""
    a, out = ctx.args, ctx.out
    out.update(connections=a.derp_conns, handshakes=0, failed=0, closed_by_server=0, open_at_end=0)
    limiter = trio.CapacityLimiter(64)
    open_now = [0]

    async def one() -> None:
        async with limiter:
            try:
                client = await connect_derp(*ctx.server.derp, keys.generate_private_key(), verify=False, timeout=30)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, Exception):  # noqa: BLE001
                out["failed"] += 1
                return
        out["handshakes"] += 1
        open_now[0] += 1
        try:
            while True:
                await client.recv()
        except (EOFError, OSError, trio.BrokenResourceError, Exception):  # noqa: BLE001
            out["closed_by_server"] += 1
            open_now[0] -= 1
        finally:
            await client.aclose()

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(a.derp_conns):
                nursery.start_soon(one)
    finally:
        out["open_at_end"] = open_now[0]


def fd_worker(host: str, port: int, count: int, deadline: float) -> None:
    """Child process: open up to `count` idle TCP connections, hold them until the wall-clock time
    `deadline`, print one JSON line. (A child has its own RLIMIT_NOFILE.)"""
    require_loopback(host)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    end = time.monotonic() + (deadline - time.time())
    socks: list[socket.socket] = []
    failures = consecutive = 0
    errors: dict[str, int] = {}
    first_failure_at = None
    while len(socks) < count and time.monotonic() < end and consecutive < 20:
        s = socket.socket()
        s.settimeout(1.0)
        try:
            s.connect((host, port))
        except OSError as exc:
            s.close()
            failures += 1
            consecutive += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if first_failure_at is None:
                first_failure_at = len(socks)
            if isinstance(exc, OSError) and exc.errno in (24, 23):  # our own limit
                break
            continue
        consecutive = 0
        socks.append(s)
    opened = len(socks)
    while time.monotonic() < end:
        time.sleep(0.2)
    # Which of ours did the server close? (readable with EOF, or reset)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    for s in socks:
        s.close()
    print(json.dumps({"opened": opened, "connect_failures": failures, "errors": errors,
                      "closed_by_server": closed, "opened_before_first_failure": first_failure_at}), flush=True)


async def flood_fd_exhaust(ctx: FloodCtx) -> None:
    """Idle TCP connections to the control listener from one source (finding 4)."""
    a, out = ctx.args, ctx.out
    workers = 2
    per = (a.fd_max + workers - 1) // workers
    out.update(max_connections=a.fd_max, workers=workers)
    host, port = ctx.server.control
    deadline = time.time() + ctx.seconds - 1.5
    out["server_rlimit_nofile"] = ctx.server.nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    results: list[dict[str, Any]] = []

    async def worker() -> None:
        # The child stops by itself a second before the flood's end; a cancel here kills it.
        proc = await trio.run_process([sys.executable, __file__, "--fd-worker", host, str(port), str(per),
                                       str(deadline)], capture_stdout=True, capture_stderr=True, check=False)
        try:
            results.append(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
        except (ValueError, IndexError):
            results.append({"error": proc.stderr.decode(errors="replace")[-300:]})

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
    out["opened"] = sum(r.get("opened", 0) for r in results)
    out["connect_failures"] = sum(r.get("connect_failures", 0) for r in results)
    out["closed_by_server"] = sum(r.get("closed_by_server", 0) for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    out["connect_errors"] = errors
    if any("error" in r for r in results):
        out["worker_errors"] = [r["error"] for r in results if "error" in r]


class FakeUpstream:
    """A UDP nameserver on loopback that answers every query with ~4 KB of TXT (the large upstream
    answer an amplification attack looks for)."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.answered = 0

    async def bind(self) -> tuple[str, int]:
        await self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()

    @staticmethod
    def answer(q: dns.message.Message) -> bytes:
        r = dns.message.make_response(q)
        r.use_edns(0, payload=4096)
        if q.question:
            # distinct strings: an rrset is a set, equal records would collapse into one
            strings = [f'"{i:03d}' + "a" * 247 + '"' for i in range(13)]
            r.answer.append(dns.rrset.from_text_list(q.question[0].name, 60, dns.rdataclass.IN,
                                                     dns.rdatatype.TXT, strings))
        return r.to_wire(max_size=65535)

    async def run(self) -> None:
        # The flood's queries all look like "xxxx.a. TXT": answer them from one template (id and
        # label patched; the answers point at the question by compression), so that this process
        # keeps up; anything else is answered the slow way.
        template_q = dns.message.make_query("0000.a.", "TXT", use_edns=0, payload=4096)
        template_wire = template_q.to_wire()
        template_a = self.answer(template_q)
        while True:
            data, addr = await self.sock.recvfrom(4096)
            if len(data) == len(template_wire) and data[12] == 4 and data[17:] == template_wire[17:]:
                reply = data[:2] + template_a[2:13] + data[13:17] + template_a[17:]
            else:
                try:
                    reply = self.answer(dns.message.from_wire(data))
                except dns.exception.DNSException:
                    continue
            try:
                await self.sock.sendto(reply, addr)
                self.answered += 1
            except OSError:
                pass


async def flood_dns_amp(ctx: FloodCtx) -> None:
    """Recursive queries from a source outside the tailnet (finding 5)."""
    a, out = ctx.args, ctx.out
    src = require_loopback(a.dns_source)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((src, 0))
    out.update(source=src, rate_qps=a.dns_rate, queries=0, bytes_in=0, replies=0, bytes_out=0, rcodes={})

    async def receiver() -> None:
        while True:
            data, _ = await sock.recvfrom(65535)
            out["replies"] += 1
            out["bytes_out"] += len(data)
            # the header's rcode is enough (parsing every ~4 KB answer would slow the flood down)
            rc = dns.rcode.to_text(data[3] & 0xF) if len(data) >= 12 else "short"
            out["rcodes"][rc] = out["rcodes"].get(rc, 0) + 1

    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            # short names: a small query, as an amplification attack would send; built from one
            # template (id and the 4-character first label patched) to keep the sender cheap
            template = dns.message.make_query("0000.a.", "TXT", use_edns=0, payload=4096).to_wire()
            i = 0
            start = time.monotonic()
            try:
                while True:
                    due = int((time.monotonic() - start) * a.dns_rate)
                    while i < due:
                        i += 1
                        tag = i & 0xFFFF
                        q = struct.pack("!H", tag) + template[2:13] + b"%04x" % tag + template[17:]
                        await sock.sendto(q, ctx.server.dns)
                        out["queries"] += 1
                        out["bytes_in"] += len(q)
                    await trio.sleep(0.02)
            finally:
                out["amplification"] = round(out["bytes_out"] / out["bytes_in"], 1) if out["bytes_in"] else None
                if out["replies"]:
                    # per answered query (the server's rate limit leaves some unanswered)
                    out["amplification_per_reply"] = round(
                        (out["bytes_out"] / out["replies"]) / (out["bytes_in"] / out["queries"]), 1)


async def flood_pending_reg(ctx: FloodCtx) -> None:
    """Unauthenticated registrations with large Hostinfo (finding 6)."""
    a, out = ctx.args, ctx.out
    size = a.reg_hostinfo_bytes if ctx.name == "pending-reg" else a.reg_small_bytes
    out.update(connections=a.reg_connections, hostinfo_bytes=size, sent=0, pending_created=0,
               rejected=0, errors={}, bytes_sent=0)
    pad = "x" * size

    async def one() -> None:
        try:
            async with open_noise_client(*ctx.server.control, server_public_key=ctx.server_key, timeout=15) as c:
                async def loop() -> None:
                    while True:
                        body = json.dumps({"Version": 130,
                                           "NodeKey": keys.NODE.format(keys.public_key(keys.generate_private_key())),
                                           "Hostinfo": {"Hostname": "flood", "OSVersion": pad}}).encode()
                        out["sent"] += 1
                        out["bytes_sent"] += len(body)
                        try:
                            resp = await c.request("POST", "/machine/register", body)
                        except ControlClientError as exc:
                            key = err_name(exc)
                            out["errors"][key] = out["errors"].get(key, 0) + 1
                            if c.closed:
                                return
                            continue
                        if resp.status == 200 and b"AuthURL" in resp.body and b"/register/" in resp.body:
                            out["pending_created"] += 1
                        else:
                            out["rejected"] += 1
                            key = f"HTTP {resp.status}: {resp.body[:60]!r}"
                            out["errors"][key] = out["errors"].get(key, 0) + 1

                async with trio.open_nursery() as nursery:
                    for _ in range(a.reg_inflight):
                        nursery.start_soon(loop)
        except (ControlClientError, OSError, trio.TooSlowError) as exc:
            key = err_name(exc)
            out["errors"][key] = out["errors"].get(key, 0) + 1

    async with trio.open_nursery() as nursery:
        for _ in range(a.reg_connections):
            nursery.start_soon(one)


FLOOD_FUNCS = {
    "noise-h2": flood_noise_h2,
    "derp-slowloris": flood_derp_slowloris,
    "derp-idle": flood_derp_idle,
    "fd-exhaust": flood_fd_exhaust,
    "dns-amp": flood_dns_amp,
    "pending-reg": flood_pending_reg,
    "pending-reg-count": flood_pending_reg,
}

#: per-flood server settings both old and new code know
FLOOD_CONFIG: dict[str, dict[str, Any]] = {
    "derp-idle": {"derp": {"server": {"verify_clients": False}}},
}


# -- one flood, start to finish --------------------------------------------------------------------


async def real_pending_login(server: Server) -> tuple[str, Node]:
    """An interactive login started before the flood (finding 6: is it still there afterwards?)."""
    node = Node("interactive")
    async with open_noise_client(*server.control, machine_private_key=node.machine_key, timeout=30) as c:
        resp = await c.post_json("/machine/register", {"Version": 130, "NodeKey": node.node_key_text(),
                                                       "Hostinfo": {"Hostname": node.name}})
        url = resp.json().get("AuthURL", "")
    if "/register/" not in url:
        raise SystemExit(f"interactive register gave no AuthURL: {resp.body[:200]!r}")
    return url.rsplit("/register/", 1)[1].strip("/"), node


async def run_flood(name: str, args: argparse.Namespace, upstream: FakeUpstream, upstream_addr: tuple[str, int],
                    extra: Mapping[str, Any], root: Path) -> dict[str, Any]:
    workdir = root / name
    workdir.mkdir()
    overrides = deep_merge(json.loads(json.dumps(FLOOD_CONFIG.get(name, {}))), extra)
    server = Server(workdir, args.python, upstream_addr, overrides,
                    nofile=args.fd_server_nofile if name == "fd-exhaust" else 0)
    result: dict[str, Any] = {"flood": name, "seconds": args.seconds}
    await server.start()
    try:
        await server.cli("users", "create", "bench")
        server.api_key = (await server.cli("apikeys", "create")).strip().splitlines()[-1]
        authkey = json.loads(await server.cli("preauthkeys", "create", "--user", "bench", "--reusable",
                                              "-o", "json"))["key"]
        watcher, mover = Node("watcher"), Node("mover")
        await watcher.register(server, authkey)
        await mover.register(server, authkey)
        status, listing = await server.api("GET", "/api/v1/node")
        for n in listing["nodes"]:
            for node in (watcher, mover):
                if n["nodeKey"] == "nodekey:" + keys.public_key(node.node_key).hex():
                    node.id = n["id"]
        assert watcher.id and mover.id, listing
        pending_id = ""
        if name.startswith("pending-reg"):
            pending_id, _ = await real_pending_login(server)
        server_key = await fetch_server_key(*server.control, 113)
        good = WellBehaved(server, watcher, mover, require_loopback(args.good_source))
        sampler = Sampler(server)
        async with trio.open_nursery() as outer:
            outer.start_soon(good.map_stream)
            with trio.fail_after(30):
                await good.map_ready.wait()
            outer.start_soon(sampler.run)
            # baseline: the well-behaved client on a quiet server
            with trio.move_on_after(args.baseline):
                await good.probes()
            result["baseline"] = good.summary()
            rss_before = proc_status(server.pid, "VmRSS")
            db_before = server.db_bytes()
            fds_before = open_fds(server.pid)
            n_before = len(sampler.rss)
            log_start = server.log_size()
            good.reset_probes()
            good.waiting.clear()
            result["flood_stats"] = flood_out = {}
            ctx = FloodCtx(server, args.seconds, args, flood_out, server_key, name)
            log(f"{name}: flooding for {args.seconds:g} s (server pid {server.pid}, RSS {rss_before:.0f} MiB)")
            t0 = time.monotonic()
            async with trio.open_nursery() as during:
                during.start_soon(good.probes)
                # fd-exhaust's child processes stop by themselves at the end and then report
                with trio.move_on_after(args.seconds + (20 if name == "fd-exhaust" else 0)):
                    await FLOOD_FUNCS[name](ctx)
                during.cancel_scope.cancel()
            result["flood_ran_s"] = round(time.monotonic() - t0, 1)
            # renames still in flight when the flood stopped get a moment to arrive
            with trio.move_on_after(3):
                while good.waiting:
                    await trio.sleep(0.1)
            result["during"] = good.summary()
            window = sampler.rss[n_before:]
            result["server"] = {
                "rss_before_mib": round(rss_before, 1),
                "rss_peak_mib": round(max(window), 1) if window else None,
                "vmhwm_mib": round(proc_status(server.pid, "VmHWM"), 1),
                "fds_before": fds_before,
                "fds_peak": max(sampler.fds[n_before:], default=None),
                "db_before_bytes": db_before,
                "db_peak_bytes": max(sampler.db[n_before:], default=None),
            }
            log_text = server.log_text(log_start)
            result["server"]["log_bytes_during"] = len(log_text.encode())
            result["server"]["log_tracebacks_during"] = log_text.count("Traceback (most recent call last)")
            result["server"]["log_error_lines_during"] = sum(1 for ln in log_text.splitlines() if " ERROR " in ln
                                                             or ln.startswith("ERROR"))
            # after: the flood's connections are closed; let the server settle, then probe once more
            await trio.sleep(args.settle)
            result["server"]["rss_after_mib"] = round(proc_status(server.pid, "VmRSS"), 1)
            result["server"]["fds_after"] = open_fds(server.pid)
            result["server"]["db_after_bytes"] = server.db_bytes()
            good.reset_probes()
            good.waiting.clear()
            with trio.move_on_after(6):
                await good.probes()
            result["after"] = good.summary()
            if pending_id:
                try:
                    status, body = await server.api("POST", f"/api/v1/node/register?user=bench&key={pending_id}",
                                                    timeout=10)
                    result["flood_stats"]["real_pending_login_approved"] = status == 200
                    if status != 200:
                        result["flood_stats"]["real_pending_login_answer"] = f"HTTP {status}: {str(body)[:100]}"
                except (OSError, trio.TooSlowError, ControlClientError) as exc:
                    result["flood_stats"]["real_pending_login_approved"] = False
                    result["flood_stats"]["real_pending_login_answer"] = err_name(exc)
            outer.cancel_scope.cancel()
        result["server"]["alive_at_end"] = server.alive()
        if name == "dns-amp":
            result["flood_stats"]["upstream_answers"] = upstream.answered
    finally:
        code = server.stop()
        result.setdefault("server", {})["exit_code"] = code
    log(f"{name}: done: {json.dumps(result['server'])}")
    return result


# -- report ----------------------------------------------------------------------------------------


def _probe_cell(p: dict[str, Any]) -> str:
    cell = f"{p['ok']}/{p['tries']}"
    if p.get("p50_ms") is not None:
        cell += f" ({p['p50_ms']:g}/{p['max_ms']:g} ms)"
    return cell


def _flood_cell(name: str, f: dict[str, Any]) -> str:
    if name == "noise-h2":
        return (f"{f['handshakes']} handshakes, {f['streams_opened']} streams, {f['bytes_sent'] / 2**20:.0f} MiB "
                f"sent, {f['connections_closed_by_server']} conns closed by server")
    if name == "derp-slowloris":
        return (f"{f['tls_ok']} TLS ok ({f['tls_failed']} failed), {f['closed_by_server']} closed by server, "
                f"{f['open_at_end']} open at end")
    if name == "derp-idle":
        return (f"{f['handshakes']} clients ({f['failed']} failed), {f['closed_by_server']} closed by server, "
                f"{f['open_at_end']} open at end")
    if name == "fd-exhaust":
        return (f"{f.get('opened', 0)} opened, {f.get('connect_failures', 0)} connects failed, "
                f"{f.get('closed_by_server', 0)} closed by server")
    if name == "dns-amp":
        rc = ", ".join(f"{k} {v}" for k, v in f["rcodes"].items())
        return (f"{f['queries']} queries / {f['bytes_in']:,} B in, {f['replies']} replies / {f['bytes_out']:,} B out "
                f"(**{f['amplification']}x**, {f.get('amplification_per_reply')}x per reply; {rc})")
    if name.startswith("pending-reg"):
        ok = f.get("real_pending_login_approved")
        return (f"{f['sent']} sent ({f['bytes_sent'] / 2**20:.0f} MiB), {f['pending_created']} pending created, "
                f"{f['rejected']} rejected; real login approvable after: {'yes' if ok else 'no'}")
    return json.dumps(f)


def markdown(results: list[dict[str, Any]], label: str) -> str:
    lines = [f"Server: {label}", "",
             "| flood (s) | server RSS MiB before / peak / after (VmHWM) | flood outcome | map deltas delivered "
             "(p50/max) | `/key` ok (p50/max) | DNS ok | DERP ok | admin ok | after flood: key/DNS/DERP/admin "
             "| server log during flood |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, d, af = r["server"], r["during"], r["after"]
        extra = ""
        if r["flood"].startswith("pending-reg"):
            extra = f"; DB {s['db_before_bytes'] / 2**20:.1f} → {s['db_peak_bytes'] / 2**20:.0f} MiB"
        if r["flood"] == "fd-exhaust":
            extra = f"; server fds {s['fds_before']} → {s['fds_peak']}"
        if r["flood"].startswith("derp-"):
            n = r["flood_stats"].get("tls_ok") or r["flood_stats"].get("handshakes") or 0
            if n:
                extra = f"; {(s['rss_peak_mib'] - s['rss_before_mib']) * 1024 / n:.0f} KiB server RSS per connection"
        after = " · ".join(f"{af[k]['ok']}/{af[k]['tries']}" for k in ("key", "dns", "derp", "admin"))
        lines.append(
            f"| {r['flood']} ({r['flood_ran_s']:g}) "
            f"| {s['rss_before_mib']:.0f} / {s['rss_peak_mib']:.0f} / {s['rss_after_mib']:.0f} ({s['vmhwm_mib']:.0f}) "
            f"| {_flood_cell(r['flood'], r['flood_stats'])}{extra} "
            f"| {_probe_cell(d['map'])}{'; stream closed' if d['map']['stream_closed'] else ''} "
            f"| {_probe_cell(d['key'])} | {d['dns']['ok']}/{d['dns']['tries']} | {d['derp']['ok']}/{d['derp']['tries']} "
            f"| {d['admin']['ok']}/{d['admin']['tries']} | {after} "
            f"| {s['log_tracebacks_during']} tracebacks, {s['log_bytes_during'] / 1024:.0f} KiB |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace, extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    upstream = FakeUpstream()
    upstream_addr = await upstream.bind()
    results = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upstream.run)
            for name in args.floods:
                results.append(await run_flood(name, args, upstream, upstream_addr, extra, Path(tmp)))
                if args.json_out:
                    Path(args.json_out).write_text(json.dumps({"label": args.label, "results": results}, indent=1))
            nursery.cancel_scope.cancel()
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--fd-worker":
        host, port, count, deadline = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        fd_worker(host, port, count, deadline)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floods", nargs="+", choices=FLOODS, default=list(FLOODS))
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each flood")
    ap.add_argument("--baseline", type=float, default=5.0, help="quiet probing before each flood")
    ap.add_argument("--settle", type=float, default=5.0, help="wait after a flood before 'after' figures")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter that runs the server (`-m trioscale.cli`); another checkout's venv")
    ap.add_argument("--label", default="", help="what code runs (for the report)")
    ap.add_argument("--extra-config", help="YAML deep-merged into every server's config (new keys)")
    ap.add_argument("--json-out")
    ap.add_argument("--md-out")
    ap.add_argument("--h2-connections", type=int, default=4)
    ap.add_argument("--h2-streams", type=int, default=250)
    ap.add_argument("--h2-stream-bytes", type=int, default=1 << 20)
    ap.add_argument("--derp-conns", type=int, default=2000)
    ap.add_argument("--slowloris-interval", type=float, default=20.0)
    ap.add_argument("--fd-max", type=int, default=20000)
    ap.add_argument("--fd-server-nofile", type=int, default=0,
                    help="RLIMIT_NOFILE of the fd-exhaust flood's server (default: inherit ours)")
    ap.add_argument("--dns-rate", type=float, default=200.0, help="queries per second from --dns-source")
    ap.add_argument("--dns-source", default="127.0.0.2")
    ap.add_argument("--good-source", default="127.0.0.3",
                    help="source address of the well-behaved /key probe (the floods come from 127.0.0.1)")
    ap.add_argument("--reg-connections", type=int, default=4)
    ap.add_argument("--reg-inflight", type=int, default=4, help="register requests in flight per connection")
    ap.add_argument("--reg-hostinfo-bytes", type=int, default=1_000_000)
    ap.add_argument("--reg-small-bytes", type=int, default=2_000,
                    help="Hostinfo size of pending-reg-count (many small registrations: the count cap)")
    args = ap.parse_args()
    if not args.label:
        args.label = args.python
    extra = yaml.safe_load(Path(args.extra_config).read_text()) if args.extra_config else {}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = os.getloadavg()
    log(f"server: {args.label}; {os.cpu_count()} CPUs, load {load[0]:.1f}; RLIMIT_NOFILE {hard}")
    results = trio.run(main_async, args, extra)
    meta = {"label": args.label, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "load_at_start": round(load[0], 1), "load_at_end": round(os.getloadavg()[0], 1),
            "rlimit_nofile": hard, "seconds": args.seconds}
    table = markdown(results, f"{args.label}; {meta['date']}; {meta['cpus']} CPUs; load average "
                              f"{meta['load_at_start']} → {meta['load_at_end']}")
    print(table)
    if args.md_out:
        Path(args.md_out).write_text(table)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
