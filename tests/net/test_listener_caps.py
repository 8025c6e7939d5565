"""Connection caps against a real `trioscale serve` process (issue 10, finding 4: about 20,000 idle
connections from one host exhausted the descriptors and every listener stopped accepting).

Each test floods one listener with idle TCP connections, the way the attack did, and checks what a
well-behaved client on another listener (or from another source address) still gets.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from util import TrioscaleServer, free_port, free_ports_config, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (127.0.0.2, /proc)")

TIMEOUT = 10.0


# --- clients -----------------------------------------------------------------------------------------


def _hostport(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def connect(addr: str, source: str = "127.0.0.1") -> socket.socket | None:
    """A connected TCP socket from `source`, or None if the server reset it during the handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    try:
        sock.connect(_hostport(addr))
    except ConnectionResetError:
        sock.close()
        return None
    return sock


def closed_at_once(sock: socket.socket | None) -> bool:
    """The server closed (reset) this connection without being asked anything."""
    if sock is None:
        return True
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    finally:
        sock.close()


def _http_get(sock: socket.socket | ssl.SSLSocket, path: str = "/") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while len(data) < 12:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _dns_query(name: str) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    msg = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    return struct.pack("!H", len(msg)) + msg


def served(kind: str, addr: str, source: str = "127.0.0.1", sock: socket.socket | None = None) -> bool:
    """A request of `kind` gets an answer (on `sock`, else on a new connection from `source`)."""
    if sock is None:
        sock = connect(addr, source)
        if sock is None:
            return False
    try:
        if kind == "dns":
            sock.sendall(_dns_query("nothing.tailnet.internal"))
            head = sock.recv(2)
            return len(head) == 2 and struct.unpack("!H", head)[0] >= 12
        if kind == "derp":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                return _http_get(tls, "/derp/probe").startswith(b"HTTP/1.1 ")
        path = {"control": "/key?v=113", "admin": "/api/v1/user"}.get(kind, "/health")
        return _http_get(sock, path).startswith(b"HTTP/1.1 ")
    except (OSError, ssl.SSLError):
        return False
    finally:
        sock.close()


def derp_debug_stats(addr: str) -> dict[str, Any]:
    """The relay's /debug/stats (loopback only): its counters and every listener's caps."""
    sock = connect(addr)
    assert sock is not None
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET /debug/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


# --- a server under a descriptor limit ----------------------------------------------------------------


class LimitedServer(TrioscaleServer):
    """`trioscale serve` started with RLIMIT_NOFILE set to `nofile` (soft and hard)."""

    def __init__(self, workdir: Path, config: dict[str, Any], nofile: int | None, command: tuple[str, ...]) -> None:
        super().__init__(workdir, config, command=command)
        self.nofile = nofile

    def start(self, timeout: float = 30.0) -> "LimitedServer":
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [*self._base_args(), *self.command],
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                env=self.env,
                preexec_fn=limit,
            )
        finally:
            out.close()
            err.close()
        wait_for(self._ready, timeout, "`trioscale serve` to start")
        return self

    def open_fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@pytest.fixture
def limited_server(tmp_path: Path) -> Iterator[Any]:
    started: list[LimitedServer] = []

    def start(nofile: int | None = None, command: tuple[str, ...] = ("serve",), **overrides: Any) -> LimitedServer:
        workdir = tmp_path / f"server{len(started)}"
        server = LimitedServer(workdir, free_ports_config(workdir / "data", **overrides), nofile, command)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        code = server.stop()
        assert code == 0, f"trioscale exited with {code}:\n{server.stderr()[-4000:]}"


def _addresses(server: TrioscaleServer) -> dict[str, str]:
    cfg = server.config
    return {
        "control": cfg["listen_addr"],
        "derp": cfg["derp"]["server"]["listen_addr"],
        "admin": cfg["admin"]["listen_addr"],
        "dns": cfg["dns"]["listen_addr"],
    }


def _flood(addr: str, count: int, sources: list[str]) -> list[socket.socket]:
    held = []
    for i in range(count):
        sock = connect(addr, sources[i % len(sources)])
        if sock is not None:
            held.append(sock)
    return held


# --- tests -------------------------------------------------------------------------------------------


def test_per_source_cap_closes_extra_connections_on_every_listener(limited_server: Any) -> None:
    caps = {"max_connections": 8, "max_connections_per_source": 2}
    server = limited_server(limits={"control": caps, "derp": caps, "admin": caps, "dns": caps})
    for kind, addr in _addresses(server).items():
        first = [connect(addr), connect(addr)]
        assert all(s is not None for s in first), kind
        assert closed_at_once(connect(addr)), f"{kind}: a third connection from one source was kept"
        assert served(kind, addr, source="127.0.0.2"), f"{kind}: another source was refused"
        assert served(kind, addr, sock=first[0]), f"{kind}: a connection within the cap was not served"
        first[1].close()  # type: ignore[union-attr]
    assert re.search(r"control: connection over the cap closed \(127\.0\.0\.1 holds 2", server.stderr())
    listeners = derp_debug_stats(_addresses(server)["derp"])["listeners"]
    for kind in ("control", "derp", "admin", "dns"):
        assert listeners[kind]["rejected_per_source"] == 1, (kind, listeners[kind])
        assert listeners[kind]["max_connections_per_source"] == 2
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize("flooded", ["control", "derp"])
def test_a_flood_on_one_listener_leaves_the_others_accepting(limited_server: Any, flooded: str) -> None:
    """Under a 1,024 descriptor limit the caps are scaled to fit it; 1,100 idle connections to the
    control (or DERP) port, more than the whole limit, fill only that listener's share, and the
    other listeners keep answering (with caps that are not fitted to the limit, the flood takes
    every descriptor and they all stop accepting)."""
    big = {"max_connections": 4096, "max_connections_per_source": 4096}
    small = {"max_connections": 64, "max_connections_per_source": 64}
    server = limited_server(
        nofile=1024,
        limits={
            "control": big if flooded == "control" else small,
            "derp": big if flooded == "derp" else small,
            "admin": {"max_connections": 32, "max_connections_per_source": 32},
            "dns": {"max_connections": 32, "max_connections_per_source": 32},
            "reserved_descriptors": 256,
        },
    )
    assert "descriptor limit 1024 is too low for the configured connection caps" in server.stderr()
    addrs = _addresses(server)
    held = _flood(addrs[flooded], 1100, ["127.0.0.1", "127.0.0.3", "127.0.0.4"])
    try:
        wait_for(lambda: f"{flooded}: connection over the cap closed (all" in server.stderr(), TIMEOUT,
                 f"the {flooded} listener to reach its cap")
        assert server.open_fds() < 1024
        for kind in sorted(set(addrs) - {flooded}):
            assert served(kind, addrs[kind], source="127.0.0.2"), f"{kind} stopped accepting under a {flooded} flood"
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: served(flooded, addrs[flooded]), TIMEOUT, f"{flooded} to accept again")
    assert "Traceback" not in server.stderr()


def test_descriptor_exhaustion_backs_off_with_one_line_and_recovers(limited_server: Any) -> None:
    """Caps that add up to the whole descriptor limit (nothing reserved) let a flood run the
    process out of descriptors: one warning, no traceback, and accepting again once it ends."""
    nofile = 256
    server = limited_server(
        nofile=nofile,
        limits={
            "control": {"max_connections": 248, "max_connections_per_source": 248},
            "derp": {"max_connections": 2, "max_connections_per_source": 2},
            "admin": {"max_connections": 2, "max_connections_per_source": 2},
            "dns": {"max_connections": 2, "max_connections_per_source": 2},
            "reserved_descriptors": 0,
        },
    )
    addrs = _addresses(server)
    assert "too low" not in server.stderr()  # 248 + 2 + 2 (tcp) + 2 (unix) + 2 = 256: no scaling
    assert server.open_fds() + 248 > nofile  # so the flood reaches the limit before the cap
    held = _flood(addrs["control"], 300, ["127.0.0.1"])
    try:
        wait_for(lambda: "control: cannot accept connections" in server.stderr(), TIMEOUT,
                 "the accept loop to run out of descriptors")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: served("control", addrs["control"]), TIMEOUT, "control to accept again")
    wait_for(lambda: "control: accepting connections again" in server.stderr(), TIMEOUT, "the recovery line")
    log = server.stderr()
    lines = [line for line in log.splitlines() if "cannot accept connections" in line]
    assert len(lines) == 1, lines
    assert "Too many open files (EMFILE)" in lines[0]
    assert "Traceback" not in log and "accept returned" not in log
    for kind in ("derp", "admin", "dns"):
        assert served(kind, addrs[kind]), kind


def test_health_listener_of_a_standalone_dns_process_is_capped(limited_server: Any) -> None:
    health = f"127.0.0.1:{free_port()}"
    server = limited_server(
        command=("dns",),
        health_listen_addr=health,
        limits={"health": {"max_connections": 4, "max_connections_per_source": 1}},
    )
    held = connect(health)
    assert held is not None
    assert closed_at_once(connect(health))
    assert served("health", health, source="127.0.0.2")
    assert served("health", health, sock=held)
    assert "Traceback" not in server.stderr()
