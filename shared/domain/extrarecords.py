"""Extra DNS records (``dns.extra_records`` and the ``dns.extra_records_path`` file, Headscale's
JSON array of ``{name, type, value}``), checked the same way wherever they are read: by the
coordinator for the DNSConfig it sends and by the DNS server for the answers it gives."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["normalize_name", "valid_name", "check_extra_records", "parse_extra_records"]


def normalize_name(name: str) -> str:
    """Lower case, no trailing dot: the form DNS names are compared and keyed in."""
    return name.strip().rstrip(".").lower()


def valid_name(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    return all(0 < len(label) <= 63 for label in name.split("."))


def check_extra_records(records: Iterable[Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Validate {name, type, value} mappings → ([(name, "A"|"AAAA", ip)], [problems])."""
    good: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            problems.append(f"item {i}: not an object")
            continue
        name, rtype, value = rec.get("name"), rec.get("type", "A"), rec.get("value")
        if not isinstance(name, str) or not isinstance(value, str) or not isinstance(rtype, str):
            problems.append(f"item {i}: needs string fields name, type and value")
            continue
        key = normalize_name(name)
        rtype = (rtype or "A").upper()
        if not valid_name(key):
            problems.append(f"item {i}: bad name {name!r}")
            continue
        if rtype not in ("A", "AAAA"):
            problems.append(f"item {i}: type must be A or AAAA, got {rtype!r}")
            continue
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            problems.append(f"item {i}: value is not an IP address: {value!r}")
            continue
        if (ip.version == 4) != (rtype == "A"):
            problems.append(f"item {i}: {rtype} record with value {value!r}")
            continue
        good.append((key, rtype, str(ip)))
    return good, problems


def parse_extra_records(data: bytes | str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Parse an extra_records file (a JSON array of {name, type, value}). ValueError if the file
    is not such an array; bad items are skipped and reported in the second list."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, list):
        raise ValueError("expected a JSON array of {name, type, value} objects")
    return check_extra_records(doc)
