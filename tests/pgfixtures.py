"""pytest plugin: the session-wide throwaway PostgreSQL cluster.

Register it from the root conftest with `pytest_plugins = ["pgfixtures"]` (tests/ is on sys.path
there; tests/store's conftest also pulls it in). The fixture `pg_cluster` yields a started tests.pgcluster.PgCluster
(attributes host, port, user, database, dsn, params; methods dsn_for, create_database,
drop_database, sql, restart). Without PostgreSQL binaries the tests that use it are skipped.
One cluster per test session, however many times the fixture is registered.
"""

from __future__ import annotations

import sys
import types

import pytest

from pgcluster import PgCluster, find_bindir

# one cluster per process even if this module is imported under two names (pgfixtures and
# tests.pgfixtures) or the fixture is registered twice (root plugin and tests/store/conftest.py)
_shared = sys.modules.setdefault("_trioscale_pg_cluster_state", types.ModuleType("_trioscale_pg_cluster_state"))
if not hasattr(_shared, "cluster"):
    _shared.cluster = None
    _shared.users = 0

SKIP_MESSAGE = (
    "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
    "(install the postgresql package, as `make test` does, or set PG_BINDIR)"
)


@pytest.fixture(scope="session")
def pg_cluster():
    if find_bindir() is None:
        pytest.skip(SKIP_MESSAGE)
    if _shared.cluster is None:
        cluster = PgCluster()
        try:
            cluster.start()
        except BaseException:
            cluster.cleanup()
            raise
        _shared.cluster = cluster
    _shared.users += 1
    try:
        yield _shared.cluster
    finally:
        _shared.users -= 1
        if _shared.users == 0:
            cluster, _shared.cluster = _shared.cluster, None
            cluster.cleanup()
