"""Real-client tests run inside a private network namespace, always.

A test marked `realclient` that is collected outside such a namespace is not run in this process:
it is run again, alone, by a child pytest inside `unshare --net` (loopback up, plus one
non-loopback address on lo so tsnet believes the network is up — ../shared/docs/real-clients.md),
and its outcome is reported here. So no client traffic can leave the machine, whoever runs the
suite and however. Only `realclient` tests belong in this folder: a plain one here leaves its
package set up in pytest (the reported ones never tear it down), and the next folder's first test
then fails its setup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from _pytest.reports import TestReport

IN_NETNS_ENV = "TRIOSCALE_TEST_IN_NETNS"
NETNS_ADDRESS = "192.0.2.1/32"  # TEST-NET-1: never routed anywhere
CHILD_TIMEOUT = 600


def in_private_netns() -> bool:
    return os.environ.get(IN_NETNS_ENV) == "1"


def _netns_unavailable() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "real-client tests need unshare(1) and ip(8) to build a private network namespace"
    if os.geteuid() != 0:
        return "real-client tests need root to create a private network namespace"
    return None


def _run_child(nodeid: str, rootdir: str) -> tuple[str, str, float]:
    script = (
        "ip link set lo up && "
        f"ip addr add {NETNS_ADDRESS} dev lo && "
        f"exec env {IN_NETNS_ENV}=1 \"$0\" -m pytest -q -rA -p no:cacheprovider \"$1\""
    )
    start = time.monotonic()
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, sys.executable, nodeid],
        cwd=rootdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=CHILD_TIMEOUT,
        text=True,
    )
    duration = time.monotonic() - start
    out = proc.stdout
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    if proc.returncode == 0 and " passed" in tail:
        return "passed", out, duration
    if proc.returncode == 0 and " skipped" in tail:
        return "skipped", out, duration
    return "failed", out, duration


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if in_private_netns() or item.get_closest_marker("realclient") is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reason = _netns_unavailable()
    if reason is not None:
        outcome, output, duration = "skipped", reason, 0.0
    else:
        try:
            outcome, output, duration = _run_child(item.nodeid, str(item.config.rootpath))
        except subprocess.TimeoutExpired as exc:
            outcome, output, duration = "failed", f"timed out after {exc.timeout}s\n{exc.output or ''}", float(CHILD_TIMEOUT)
    for when in ("setup", "call", "teardown"):
        this = outcome if when == "call" else "passed"
        longrepr = None
        if when == "call" and outcome == "failed":
            longrepr = f"in a private network namespace:\n{output}"
        elif when == "call" and outcome == "skipped":
            skip_line = next((l for l in output.splitlines() if l.startswith("SKIPPED")), output.strip()[-300:])
            longrepr = (str(item.path), item.location[1] or 0, skip_line)
        report = TestReport(
            item.nodeid, item.location, {}, this, longrepr, when,
            sections=[("netns child output", output)] if when == "call" else [],
            duration=duration if when == "call" else 0.0,
        )
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.fixture
def server(tmp_path):
    """`trioscale serve` on free ports in a temp dir; it must exit cleanly at the end."""
    from e2e.harness import Trioscale

    srv = Trioscale(tmp_path)
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, f"trioscale did not exit cleanly ({code}):\n{srv.log()[-4000:]}"


@pytest.fixture
def caddies():
    """Caddy processes a test starts (via harness.start_caddy); stopped by PID afterwards."""
    started: list = []
    yield started
    for caddy in started:
        caddy.stop()
