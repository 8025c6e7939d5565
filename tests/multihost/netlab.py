"""Test hosts on one machine: network namespaces joined by a bridge.

    lab = Lab()                      # unique name prefix; nothing created yet
    lab.add_host("pg")               # namespace <prefix>-pg, eth0 = 10.77.0.<n>/24 on the lab bridge
    lab.ip("pg")                     # "10.77.0.2"
    proc = lab.popen("pg", [...])    # a process inside that host (ip netns exec), stopped by PID at close
    with lab.inside("tester"): ...   # this thread's sockets and children live in that host
    lab.close()                      # stop every process (by PID), delete every namespace

The bridge lives in a namespace of its own (the "switch"), and each host's veth pair is created
directly between the switch and the host: nothing is added to the machine's own network
namespace, and the hosts have no route anywhere but the lab subnet. Deleting a namespace deletes
its interfaces. Names carry a random prefix, so parallel runs and leftovers never collide; `close`
is safe to call after any partial setup.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

CLONE_NEWNET = 0x40000000
SUBNET = "10.77.0"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def unavailable() -> str | None:
    """Why the lab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "multi-host tests need root (network namespaces)"
    for tool in ("ip",):
        if shutil.which(tool) is None:
            return f"multi-host tests need {tool}(8)"
    return None


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


class Lab:
    def __init__(self) -> None:
        self.prefix = f"tsl{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, str] = {}  # host name -> IP
        self.namespaces: list[str] = []
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._next = 2
        self._switch_up = False

    # -- building ------------------------------------------------------------------------------
    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def _ensure_switch(self) -> None:
        if self._switch_up:
            return
        _run("ip", "netns", "add", self.switch)
        self.namespaces.append(self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        _run("ip", "-n", self.switch, "link", "set", "lo", "up")
        self._switch_up = True

    def add_host(self, host: str) -> str:
        """Create host `host` (a namespace with lo and eth0 on the bridge); returns its IP."""
        self._ensure_switch()
        ns = self.ns(host)
        ip = f"{SUBNET}.{self._next}"
        self._next += 1
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        port = f"p{len(self.hosts)}"
        _run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "-n", self.switch, "link", "set", port, "master", "br0")
        _run("ip", "-n", self.switch, "link", "set", port, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        self.hosts[host] = ip
        return ip

    def ip(self, host: str) -> str:
        return self.hosts[host]

    def run(self, host: str, *argv: str) -> None:
        """Run a short command in `host` (e.g. `ip route add blackhole ...`)."""
        _run("ip", "netns", "exec", self.ns(host), *argv)

    # -- processes -----------------------------------------------------------------------------
    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], **kw)
        self.procs.append((host, proc))
        return proc

    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """Move this thread into `host`'s namespace for the block (sockets created and processes
        started in it belong to that host), then back."""
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.ns(host)}") as there:
            _setns(there.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 10.0, first: int = signal.SIGTERM) -> int | None:
        for sig, wait in ((first, timeout), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return proc.poll()

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop(proc, timeout=8.0)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            # processes we did not start (none expected) would keep it alive: kill them by PID
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in out:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            if out:
                time.sleep(0.2)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
        self.hosts.clear()
        self._switch_up = False

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
