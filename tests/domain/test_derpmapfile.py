"""derp.paths files: Tailscale's DERPMap JSON, or the YAML Headscale reads (lower-case field names)."""

from __future__ import annotations

import json
import pytest

from trioscale.shared.domain.derpmapfile import DerpMapFileError, parse_derp_map_file

# Headscale's derp-example.yaml, in its spelling
HEADSCALE_YAML = """
regions:
  1: null # Disable DERP region with ID 1
  900:
    regionid: 900
    regioncode: custom
    regionname: My Region
    nodes:
      - name: 900a
        regionid: 900
        hostname: myderp.example.com
        ipv4: 198.51.100.1
        ipv6: 2001:db8::1
        stunport: 0
        stunonly: false
        derpport: 0
"""

REGION_900 = {
    "RegionID": 900, "RegionCode": "custom", "RegionName": "My Region",
    "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "myderp.example.com", "IPv4": "198.51.100.1",
               "IPv6": "2001:db8::1", "STUNPort": 0, "STUNOnly": False, "DERPPort": 0}],
}


def test_headscales_yaml_and_the_json_form_read_the_same() -> None:
    assert parse_derp_map_file(HEADSCALE_YAML) == [REGION_900]
    assert parse_derp_map_file(json.dumps({"Regions": {"900": REGION_900}})) == [REGION_900]


def test_a_region_without_its_id_takes_the_maps_key() -> None:
    assert parse_derp_map_file("regions:\n  7:\n    regioncode: x\n")[0]["RegionID"] == 7


@pytest.mark.parametrize("text", ["[]", "regions: [1, 2]", "regions:\n  5: {nodes: 3}\n", "regions:\n  x: {}\n",
                                  "regions: {5: {nodes: [7]}}", "{unclosed"])
def test_what_is_not_a_derp_map(text: str) -> None:
    with pytest.raises(DerpMapFileError):
        parse_derp_map_file(text)
