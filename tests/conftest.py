"""Fixtures shared by the whole suite (keep this small; layer-specific ones live next to their tests).

- `trioscale_server`: a factory that starts a real `trioscale serve` subprocess with a temp data dir
  and every listen address on a free port; each is stopped by PID (SIGTERM) at teardown, and a
  non-zero exit status fails the test.
- `free_port` and the rest: see tests/util.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

sys.path.insert(0, str(Path(__file__).parent))

from util import TrioscaleServer, free_ports_config  # noqa: E402

# Every `trioscale serve` the suite starts (in-process or a subprocess inheriting this environment)
# binds its metrics listener on a port the OS picks: the default 127.0.0.1:9090 would be one port
# fought over by every server running at once. A test that wants a given address sets the key.
os.environ.setdefault("TRIOSCALE_METRICS_LISTEN_ADDR", "127.0.0.1:0")

# Property tests outside CI: Hypothesis's defaults fail an example slower than 200 ms (on a busy
# 2-core machine a correct example can be) and keep an example database in .hypothesis/ inside the
# repository. With CI set, Hypothesis's own "ci" profile already drops both (and derandomizes).
# Its cache of the code's constants goes outside the repository in both cases.
set_hypothesis_home_dir(str(Path.home() / ".cache" / "trioscale" / "hypothesis"))
settings.register_profile("trioscale-local", deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
if not os.environ.get("CI"):
    settings.load_profile("trioscale-local")


@pytest.fixture
def trioscale_server(tmp_path: Path) -> Iterator[Callable[..., TrioscaleServer]]:
    """`start(**config_overrides) -> TrioscaleServer` (started, ready)."""
    started: list[TrioscaleServer] = []

    def start(*, command: tuple[str, ...] = ("serve",), **overrides: Any) -> TrioscaleServer:
        workdir = tmp_path / f"server{len(started)}"
        server = TrioscaleServer(workdir, free_ports_config(workdir / "data", **overrides), command=command)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        code = server.stop()
        assert code == 0, f"trioscale exited with {code}:\n{server.stderr()[-4000:]}"
