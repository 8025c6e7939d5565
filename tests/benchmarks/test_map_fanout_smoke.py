"""The map fan-out benchmark still runs end to end (it is run by hand, at sizes no test could
afford): a tiny tailnet, every phase, and the figures its tables are made from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_map_fanout_runs_every_phase():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "map_fanout.py"), "--nodes", "12", "--rounds", "1",
         "--register-after", "6", "--join-after", "3", "--idle-seconds", "0.5"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["nodes"] == 12 and res["missed_after_60s"] == 0 and res["samples"] == 11
    assert res["server_written_to_all_within_s"] is not None  # the server's own histogram was read
    assert res["last_first_map_json_bytes"] > res["last_first_map_zstd_bytes"] > 0
    assert res["register_after"]["count"] == 6 and res["register_after"]["register_only"] is True
    joined = res["join_after"]
    assert joined["count"] == 3 and joined["joins_per_s"] > 0
    # the flusher's counters were read, and the quiet tailnet's CPU taken out
    assert joined["flush_passes"] >= 1 and joined["drained_flush_kib_per_join"] > 0
    assert joined["drained_beyond_idle_cpu_per_join_ms"] <= joined["drained_server_cpu_per_join_ms"]


TSPLOAD = Path.home() / ".cache" / "trioscale" / "tspload" / "tspload"


def _tspload() -> None:
    import os

    import pytest

    if not TSPLOAD.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{TSPLOAD} is missing: `make tspload` should have built it")
        pytest.skip(f"{TSPLOAD} is missing: run `make tspload`")


def test_tailscales_own_client_code_joins_registers_and_sees_a_change():
    """tspload (tailscale.com's control/ts2021 and control/tsp, in Go) joins a tailnet as
    tailscaled does: Noise, HTTP/2 with its window credits, a streaming map request; every node
    sees each round's change, and more nodes then register."""
    _tspload()
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "map_fanout.py"), "--nodes", "12", "--rounds", "2",
         "--fleet", "tsp"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["fleet"] == "tspload" and res["nodes"] == 12
    assert res["missed_after_60s"] == 0 and res["samples"] == 2 * 11 and res["cut_streams_by_end"] == 0
    assert res["map_kib_per_join"] > 0 and res["fleet_cpu_total_s"] >= res["fleet_cpu_s"] >= 0
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "map_fanout.py"), "--nodes", "4", "--rounds", "1",
         "--register-after", "10", "--register-client", "tsp"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    reg = json.loads(run.stdout.strip().splitlines()[-1])["register_after"]
    assert reg["count"] == 10 and reg["errors"] == 0 and reg["client"].startswith("tailscale.com/control/tsp v")
