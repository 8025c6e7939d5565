"""`/ready` follows the database: a coordinator on PostgreSQL turns not ready (503, naming the
database) when the server stops, and ready again when it is back; `/health` stays 200 throughout
(the process is alive: restarting it would not bring the database back).

Its own throwaway cluster (tests/pgcluster.py), since the test stops it. It waits on the endpoint's
state: the endpoint is polled until it says what is expected, within a bound.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pgcluster import find_bindir, pg_cluster
from util import TrioscaleServer, free_ports_config, wait_for

pytestmark = pytest.mark.postgres


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, OSError) as exc:  # the listener not answering is no state at all
        return 0, {"error": str(exc)}


def test_ready_turns_false_when_postgres_stops_and_true_when_it_returns(tmp_path: Path) -> None:
    if find_bindir() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL server binaries are missing in CI (make test installs them)")
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    with pg_cluster("trioscale_ready") as pg:
        config = free_ports_config(tmp_path / "data", database={"type": "postgres", "postgres": {
            "host": pg.host, "port": pg.port, "name": pg.database, "user": pg.user}})
        server = TrioscaleServer(tmp_path / "srv", config)
        server.start()
        try:
            ready = f"http://{config['metrics_listen_addr']}/ready"
            health = f"http://{config['metrics_listen_addr']}/health"
            control_health = f"http://{config['listen_addr']}/health"
            wait_for(lambda: _get(ready)[0] == 200, 30, "/ready to pass with PostgreSQL up")

            pg.stop()
            wait_for(lambda: _get(ready)[0] == 503, 30, "/ready to fail with PostgreSQL stopped")
            status, body = _get(ready)
            assert status == 503 and body["status"] == "fail" and "database" in body["not_ready"], body
            assert _get(health) == (200, {"status": "pass"})
            # the control listener's /health (Headscale's) reflects the database too
            assert _get(control_health)[0] == 503

            pg.restart()
            wait_for(lambda: _get(ready)[0] == 200, 60, "/ready to pass again with PostgreSQL back")
            assert _get(ready) == (200, {"status": "pass"})
            assert _get(control_health)[0] == 200
        finally:
            assert server.stop() == 0, server.stderr()[-4000:]
