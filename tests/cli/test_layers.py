"""The import-linter contracts (pyproject.toml [tool.importlinter], checked by tools/lint_layers.py):
the real tree keeps every one, and a deliberately wrong import breaks the contract it should."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_tool():
    spec = importlib.util.spec_from_file_location("lint_layers", REPO / "tools" / "lint_layers.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


check = _load_tool().check
#: contract id -> the name lint-imports reports it by
CONTRACTS = {c["id"]: c["name"] for c in
             tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}


def test_the_tree_keeps_every_contract() -> None:
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("contract", "path", "text", "reported"),
    [
        ("domain-pure", "shared/domain/_bad.py", "import trioscale.shared.store\n",
         "trioscale.shared.domain._bad -> trioscale.shared.store"),
        ("services-independent", "services/stun/_bad.py", "import trioscale.services.coord\n",
         "trioscale.services.stun._bad -> trioscale.services.coord"),
        ("proto-pure", "shared/proto/_bad.py", "import trioscale.shared.model\n",
         "trioscale.shared.proto._bad -> trioscale.shared.model"),
    ],
    ids=["domain-imports-store", "service-imports-service", "proto-imports-model"],
)
def test_a_wrong_import_breaks_its_contract(contract: str, path: str, text: str, reported: str) -> None:
    assert not (REPO / path).exists()
    result = check({path: text})
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    # named as broken, with the very import (the real tree may break other contracts meanwhile)
    assert f"{CONTRACTS[contract]} BROKEN" in result.stdout, out
    assert reported in result.stdout, out
    assert not (REPO / path).exists()  # check() adds it to a staged copy, never to the repository


def test_every_top_level_module_is_in_the_top_layer() -> None:
    """A module of trioscale/ left out of the `layers` contract would be checked by nothing."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    top = next(c for c in contracts if c["id"] == "layers")["layers"][0]
    named = {part.strip() for part in top.replace("|", ":").split(":")}
    present = {f"trioscale.{p.stem}" for p in (REPO / "trioscale").glob("*.py") if p.stem != "__init__"}
    # services/ and shared/ are the lower layers, linked in (setup.py), not modules of the top one
    present |= {f"trioscale.{p.parent.name}" for p in (REPO / "trioscale").glob("*/__init__.py") if not p.parent.is_symlink()}
    assert present <= named, f"not in the top layer: {sorted(present - named)}"
