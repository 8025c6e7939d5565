"""A short, bounded run of every coverage-guided fuzz target (tests/fuzz/targets/, atheris).

Each target runs a few thousand inputs in its own process from its seed corpus, with a fixed
libFuzzer seed; a crash, a hang or a failed invariant fails the test with the fuzzer's traceback
and the saved input. Long runs are by hand: ``.venv/bin/python tests/fuzz/atheris_run.py TARGET
--runs 1000000`` (docs/fuzzing.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "atheris_run.py"
TARGETS = sorted(p.stem[len("fuzz_"):] for p in (HERE / "targets").glob("fuzz_*.py"))
#: inputs per target: enough to get past the seeds into mutations, a few seconds each on 2 cores;
#: the targets that run a whole connection (and a Noise handshake) per input get fewer
RUNS = {"h2noise": 300, "upgrade": 1000, "policy": 2000}
DEFAULT_RUNS = 3000


def test_every_target_is_listed() -> None:
    assert {"noise", "upgrade", "h2noise", "machine", "derp", "stun", "dns", "policy"} <= set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_short_fuzz_run(target: str, tmp_path: Path) -> None:
    runs = RUNS.get(target, DEFAULT_RUNS)
    proc = subprocess.run(
        [sys.executable, str(RUNNER), target, "--runs", str(runs), "--workdir", str(tmp_path), "--seed", "1"],
        capture_output=True, text=True, timeout=170,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"{summary}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert f"inputs={runs}" in summary, summary
