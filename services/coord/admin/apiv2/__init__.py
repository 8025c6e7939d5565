"""Tailscale's API v2 (`/api/v2`) on the admin app: OAuth clients' access tokens, scopes, devices,
auth keys, the policy file, DNS and users, in Tailscale's shapes, so Tailscale's Go API client and
Terraform provider manage this tailnet. One blueprint (common.py); each module adds its routes."""

from __future__ import annotations

from . import acl, devices, dns, keys, oauth, users  # noqa: F401  (each registers its routes)
from .auth import AUTH_REQUIRED, authenticate
from .common import PREFIX, blueprint

__all__ = ["blueprint", "authenticate", "AUTH_REQUIRED", "PREFIX", "is_v2_path"]


def is_v2_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")
