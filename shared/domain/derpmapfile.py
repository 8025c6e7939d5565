"""A DERP map (`derp.paths` files, `derp.urls` answers): Tailscale's DERPMap JSON, or the YAML
Headscale reads.

Headscale decodes its files with a YAML library that matches field names without regard to case,
so its example spells `regionid`, `hostname`, `stunport`; the JSON form spells `RegionID`,
`HostName`, `STUNPort`. Both become DERPRegion dicts in the JSON spelling. A region given as null
drops that region from the maps read before it (Headscale's way to leave out a region of a
fetched map): :func:`merge_regions` applies that.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

__all__ = ["DerpMapFileError", "merge_regions", "parse_derp_map", "parse_derp_map_file"]

_REGION_FIELDS = ("RegionID", "RegionCode", "RegionName", "Latitude", "Longitude", "Avoid", "NoMeasureNoHome", "Nodes")
_NODE_FIELDS = (
    "Name", "RegionID", "HostName", "CertName", "IPv4", "IPv6", "STUNPort", "STUNOnly", "DERPPort",
    "InsecureForTests", "STUNTestIP", "CanPort80",
)
_REGION_NAMES = {name.lower(): name for name in _REGION_FIELDS}
_NODE_NAMES = {name.lower(): name for name in _NODE_FIELDS}


class DerpMapFileError(ValueError):
    """The file is not a DERP map."""


def _spelled(record: Any, names: dict[str, str], what: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DerpMapFileError(f"expected a {what} mapping, got {record!r}")
    return {names.get(str(key).lower(), str(key)): value for key, value in record.items()}


def parse_derp_map_file(text: str) -> list[dict[str, Any]]:
    """The regions of a DERP map file, in DERPRegion JSON spelling (null regions left out).
    DerpMapFileError says what is wrong."""
    return [region for region in parse_derp_map(text).values() if region is not None]


def merge_regions(maps: list[dict[int, dict[str, Any] | None]]) -> list[dict[str, Any]]:
    """The regions of several maps, later maps replacing earlier regions of the same id, a null
    region removing it."""
    merged: dict[int, dict[str, Any] | None] = {}
    for one in maps:
        merged.update(one)
    return [region for region in merged.values() if region is not None]


def parse_derp_map(text: str) -> dict[int, dict[str, Any] | None]:
    """{region id: region in DERPRegion JSON spelling, or None where the map drops the region}."""
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DerpMapFileError(f"neither JSON nor YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DerpMapFileError("expected a mapping with Regions")
    top = {str(key).lower(): value for key, value in data.items()}
    regions = top.get("regions") or {}
    if not isinstance(regions, dict):
        raise DerpMapFileError("Regions must map region ids to regions")
    out: dict[int, dict[str, Any] | None] = {}
    for rid, raw in regions.items():
        if raw is None:
            try:
                out[int(rid)] = None
            except (TypeError, ValueError):
                raise DerpMapFileError(f"region {rid}: region ids are integers") from None
            continue
        region = _spelled(raw, _REGION_NAMES, "region")
        region.setdefault("RegionID", rid)
        try:
            region["RegionID"] = int(region["RegionID"])
        except (TypeError, ValueError):
            raise DerpMapFileError(f"region {rid}: RegionID must be an integer") from None
        nodes = region.get("Nodes") or []
        if not isinstance(nodes, list):
            raise DerpMapFileError(f"region {rid}: Nodes must be a list")
        region["Nodes"] = [_spelled(node, _NODE_NAMES, "node") for node in nodes]
        out[region["RegionID"]] = region
    return out
