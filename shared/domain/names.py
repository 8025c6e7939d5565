"""Node names: the DNS label a node is known by in the tailnet.

Like Tailscale's, a label is lower case, letters, digits and hyphens, at most 63 characters, with
no hyphen at either end. Collisions are resolved with -1, -2, ... suffixes.
"""

from __future__ import annotations

import re
from collections.abc import Collection

MAX_LABEL = 63
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")
_HYPHENS = re.compile(r"-{2,}")


class InvalidName(ValueError):
    pass


def sanitize_label(hostname: str, fallback: str = "node") -> str:
    """Turn a client-reported hostname into a DNS label (never empty)."""
    name = hostname.strip().lower()
    # Hosts often report a fully qualified name; the tailnet name is its first label.
    name = name.split(".", 1)[0]
    name = _NOT_ALLOWED.sub("-", name)
    name = _HYPHENS.sub("-", name).strip("-")
    name = name[:MAX_LABEL].rstrip("-")
    return name or fallback


def validate_label(name: str) -> str:
    """Check a name an admin chose; returns it or raises InvalidName with the reason."""
    if not name:
        raise InvalidName("a node name cannot be empty")
    if len(name) > MAX_LABEL:
        raise InvalidName(f"node name {name!r} is longer than {MAX_LABEL} characters")
    if sanitize_label(name, fallback="") != name:
        raise InvalidName(
            f"node name {name!r} is not a DNS label (lower-case letters, digits and inner hyphens only)"
        )
    return name


def unique_label(base: str, taken: Collection[str]) -> str:
    """`base`, or `base-1`, `base-2`, ... whichever is first not in `taken` (kept within 63)."""
    if base not in taken:
        return base
    n = 1
    while True:
        suffix = f"-{n}"
        candidate = base[: MAX_LABEL - len(suffix)].rstrip("-") + suffix
        if candidate not in taken:
            return candidate
        n += 1


def fqdn(label: str, base_domain: str) -> str:
    """The node's Name as sent to clients: an FQDN with a trailing dot."""
    base = base_domain.strip(".")
    return f"{label}.{base}." if base else f"{label}."
