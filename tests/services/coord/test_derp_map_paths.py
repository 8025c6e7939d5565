"""The coordinator's static DERP regions: `derp.regions`, then each `derp.paths` file, JSON or
Headscale's YAML."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from trioscale.services.coord.service import static_regions
from trioscale.shared.domain.derpmapfile import DerpMapFileError

HEADSCALE_YAML = """
regions:
  1: null
  900:
    regionid: 900
    regioncode: custom
    regionname: My Region
    nodes:
      - {name: 900a, regionid: 900, hostname: myderp.example.com, stunport: 0, derpport: 0}
"""


def test_the_coordinator_reads_both_forms(tmp_path: Path) -> None:
    yaml_file, json_file, bad = tmp_path / "derp.yaml", tmp_path / "derp.json", tmp_path / "bad.yaml"
    yaml_file.write_text(HEADSCALE_YAML)
    json_file.write_text(json.dumps({"Regions": {"901": {"RegionID": 901, "Nodes": []}}}))
    options = SimpleNamespace(derp_regions=({"RegionID": 5, "Nodes": []},), derp_map_paths=(yaml_file, json_file))
    assert [r["RegionID"] for r in static_regions(options)] == [5, 900, 901]  # type: ignore[arg-type]
    bad.write_text("regions: [1]\n")
    with pytest.raises(DerpMapFileError, match=str(bad)):
        static_regions(SimpleNamespace(derp_regions=(), derp_map_paths=(bad,)))  # type: ignore[arg-type]
