"""Fixtures for the deployment tests: the overlays rendered once per session (k8srender.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))  # k8srender, k8sobjects

from k8srender import IN_CI, OVERLAYS, Rendered, copy_tree, give_secrets, kustomize_command, render  # noqa: E402


@pytest.fixture(scope="session")
def kustomize() -> list[str]:
    cmd = kustomize_command()
    if cmd is None:
        reason = "no kubectl with kustomize v5 and no cached kustomize: run `make kustomize`"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return cmd


@pytest.fixture(scope="session")
def rendered(kustomize: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    base = tmp_path_factory.mktemp("k8s")
    tree = copy_tree(base / "k8s")
    out = {}
    for overlay in OVERLAYS:
        files = give_secrets(tree, overlay, base / f"scratch-{overlay}")
        proc = render(kustomize, tree / "overlays" / overlay)
        assert proc.returncode == 0, f"{overlay}: {proc.stderr}"
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        out[overlay] = Rendered(overlay, docs, files)
    return out
