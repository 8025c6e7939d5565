"""A DERP map file (`derp.paths`): Tailscale's DERPMap JSON, or the YAML Headscale reads.

Headscale decodes its files with a YAML library that matches field names without regard to case,
so its example spells `regionid`, `hostname`, `stunport`; the JSON form spells `RegionID`,
`HostName`, `STUNPort`. Both become DERPRegion dicts in the JSON spelling. A region given as
null (Headscale's way to drop a region of a fetched map) contributes nothing: no map is fetched here.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

__all__ = ["DerpMapFileError", "parse_derp_map_file"]

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
    """The regions of a DERP map file, in DERPRegion JSON spelling. DerpMapFileError says what is wrong."""
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
    out = []
    for rid, raw in regions.items():
        if raw is None:
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
        out.append(region)
    return out
