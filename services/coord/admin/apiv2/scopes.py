"""The scopes of Tailscale's API v2 (its trust-credential scopes), and what a set of them grants.

A scope names a resource; `<resource>:read` grants reading it, `<resource>` reading and writing.
`all` and `all:read` cover every resource. The scopes Tailscale used before its current set
(`devices`, `routes`, `acl` and their `:read` forms) are taken as the current ones they became.
An API key with no scopes may do everything (every key made before scopes existed is one).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["RESOURCES", "ScopeError", "normalize", "grants", "needs_tags"]

#: the resources a scope may name (Tailscale's names); routes here check the first eight
RESOURCES = (
    "devices:core",
    "devices:routes",
    "auth_keys",
    "oauth_keys",
    "policy_file",
    "dns",
    "users",
    "devices:posture_attributes",
    "account_settings",
    "feature_settings",
    "logs:configuration",
    "webhooks",
    "services",
)

_LEGACY = {"devices": "devices:core", "routes": "devices:routes", "acl": "policy_file"}
_READ_ONLY = ("logs:network:read",)

#: scopes whose tokens create devices or keys, which then must carry tags (Tailscale's rule)
_TAGGED = ("devices:core", "auth_keys", "all")


class ScopeError(ValueError):
    """A scope Tailscale does not define; the message names it."""


def _one(scope: str) -> str:
    text = str(scope).strip()
    base, read = (text[: -len(":read")], True) if text.endswith(":read") else (text, False)
    base = _LEGACY.get(base, base)
    if text in _READ_ONLY:
        return text
    if base != "all" and base not in RESOURCES:
        raise ScopeError(f"unknown scope {text!r}")
    return f"{base}:read" if read else base


def normalize(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes in their current names, each once, in the order given; ScopeError for an unknown one."""
    if isinstance(scopes, str):
        scopes = scopes.replace(",", " ").split()
    return tuple(dict.fromkeys(_one(s) for s in scopes if str(s).strip()))


def grants(scopes: Iterable[str], resource: str, write: bool) -> bool:
    """Whether `scopes` allow reading (or, `write`, changing) `resource`. Empty: all access."""
    held = set(scopes)
    if not held:
        return True
    if "all" in held or resource in held:
        return True
    return not write and ("all:read" in held or f"{resource}:read" in held)


def needs_tags(scopes: Iterable[str]) -> bool:
    """Whether an OAuth client with these scopes must name the tags of what it creates."""
    return any(s in _TAGGED for s in scopes)
