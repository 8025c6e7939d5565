"""DNS settings set through API v2 over the `dns:` keys of the configuration: each kind the API
has set (nameservers, searchPaths, splitDNS, magicDNS) replaces the configured one; the rest stay as
configured. Each kind is a tailnet setting of its own (`dns.<kind>`), written whole, so clients that
set several kinds at once (Terraform applies resources in parallel) never undo each other."""

from __future__ import annotations

import dataclasses
from typing import Any

from .options import DnsConfigOptions

__all__ = ["KINDS", "PREFIX", "setting", "load", "apply", "effective"]

KINDS = ("nameservers", "searchPaths", "splitDNS", "magicDNS")
PREFIX = "dns."


def setting(kind: str) -> str:
    """The tailnet setting that holds `kind`."""
    return PREFIX + kind


async def load(store: Any) -> dict[str, Any]:
    """What the API stored, by kind (a kind never set is absent)."""
    out = {}
    for kind in KINDS:
        value = await store.get_setting(setting(kind))
        if value is not None:
            out[kind] = value
    return out


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
