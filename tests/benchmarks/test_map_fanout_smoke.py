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
