"""DNS settings set through API v2 (stored as the tailnet setting "dns") over the `dns:` keys of
the configuration: each kind the API has set (nameservers, searchPaths, splitDNS, magicDNS)
replaces the configured one; the rest stay as configured."""

from __future__ import annotations

import dataclasses
from typing import Any

from .options import DnsConfigOptions

__all__ = ["SETTING", "apply", "effective"]

SETTING = "dns"


def apply(options: DnsConfigOptions, stored: Any) -> DnsConfigOptions:
    """`options` with what the API stored in place of the configured values."""
    if not isinstance(stored, dict) or not stored:
        return options
    changes: dict[str, Any] = {}
    if isinstance(stored.get("nameservers"), list):
        changes["nameservers"] = tuple(str(s) for s in stored["nameservers"])
    if isinstance(stored.get("searchPaths"), list):
        changes["search_domains"] = tuple(str(s) for s in stored["searchPaths"])
    if isinstance(stored.get("splitDNS"), dict):
        changes["split_nameservers"] = {str(k): tuple(str(s) for s in v) for k, v in stored["splitDNS"].items()
                                        if isinstance(v, list)}
    if isinstance(stored.get("magicDNS"), bool):
        changes["magic_dns"] = stored["magicDNS"]
    return dataclasses.replace(options, **changes)


def effective(options: DnsConfigOptions | None, stored: Any) -> dict[str, Any]:
    """The settings in force, in the API's shape."""
    if options is None:  # nothing known of the configuration: only what the API set
        s = stored if isinstance(stored, dict) else {}
        return {"nameservers": list(s.get("nameservers", [])), "searchPaths": list(s.get("searchPaths", [])),
                "splitDNS": dict(s.get("splitDNS", {})), "magicDNS": bool(s.get("magicDNS", False))}
    o = apply(options, stored)
    return {"nameservers": list(o.nameservers), "searchPaths": list(o.search_domains),
            "splitDNS": {k: list(v) for k, v in o.split_nameservers.items()}, "magicDNS": o.magic_dns}
