"""Records as Tailscale's API v2 shows them (its Device, Key and User objects)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from trioscale.shared.domain.names import fqdn
from trioscale.shared.domain.routes import advertised_routes
from trioscale.shared.model import ApiKey, Node, OAuthClient, PreAuthKey, User

__all__ = ["rfc3339", "device_json", "auth_key_json", "api_key_json", "client_json", "user_json", "login_name",
           "ZERO_TIME"]

#: Go's zero time, which Tailscale sends for a time that is not set
ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(t: datetime | None) -> str:
    return ZERO_TIME if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def login_name(u: User | None) -> str:
    if u is None:
        return ""
    return u.email or u.name


def device_json(n: Node, users: dict[int, User], base_domain: str, *, online: bool, all_fields: bool,
                enabled_routes: list[str]) -> dict[str, Any]:
    info = n.hostinfo or {}
    out: dict[str, Any] = {
        "addresses": [a for a in (n.ipv4, n.ipv6) if a],
        "id": str(n.id),
        "nodeId": str(n.id),
        "user": "tagged-devices" if n.tags else login_name(users.get(n.user_id)),
        "name": fqdn(n.given_name, base_domain).rstrip("."),
        "hostname": n.hostname,
        "clientVersion": str(info.get("IPNVersion", "")),
        "updateAvailable": False,
        "os": str(info.get("OS", "")),
        "created": rfc3339(n.created_at),
        "connectedToControl": online,
        "lastSeen": rfc3339(n.last_seen),
        "keyExpiryDisabled": n.expiry is None,
        "expires": rfc3339(n.expiry),
        "authorized": True,
        "isExternal": False,
        "isEphemeral": n.ephemeral,
        "machineKey": "mkey:" + n.machine_key.hex(),
        "nodeKey": "nodekey:" + n.node_key.hex(),
        "blocksIncomingConnections": bool(info.get("ShieldsUp", False)),
        "tailnetLockKey": "",
        "tailnetLockError": "",
        "tags": list(n.tags),
    }
    if all_fields:
        out["advertisedRoutes"] = list(advertised_routes(info))
        out["enabledRoutes"] = enabled_routes
        out["clientConnectivity"] = {"endpoints": list(n.endpoints), "derp": "", "mappingVariesByDestIP": False,
                                     "latency": {}, "clientSupports": {}}
    return out


def _caps(reusable: bool, ephemeral: bool, tags: tuple[str, ...]) -> dict[str, Any]:
    return {"devices": {"create": {"reusable": reusable, "ephemeral": ephemeral, "preauthorized": True,
                                   "tags": list(tags)}}}


def auth_key_json(k: PreAuthKey, now: datetime, *, key: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": k.prefix,
        "keyType": "auth",
        "description": k.description,
        "created": rfc3339(k.created_at),
        "expires": rfc3339(k.expiration),
        "invalid": k.is_expired(now) or (k.used and not k.reusable),
        "capabilities": _caps(k.reusable, k.ephemeral, k.tags),
        "userId": "" if k.tags else str(k.user_id),
    }
    if key:
        out["key"] = key
    if k.expiration is not None:
        out["expirySeconds"] = max(0, round((k.expiration - k.created_at).total_seconds()))
    return out


def api_key_json(k: ApiKey, now: datetime, *, key: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": k.prefix,
        "keyType": "api",
        "description": "",
        "created": rfc3339(k.created_at),
        "expires": rfc3339(k.expiration),
        "invalid": k.is_expired(now),
        "scopes": list(k.scopes),
    }
    if key:
        out["key"] = key
    return out


def client_json(c: OAuthClient, *, key: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": c.client_id,
        "keyType": "client",
        "description": c.description,
        "created": rfc3339(c.created_at),
        "expires": ZERO_TIME,
        "invalid": False,
        "scopes": list(c.scopes),
        "tags": list(c.tags),
    }
    if key:
        out["key"] = key
    return out


def user_json(u: User, *, device_count: int, connected: bool, last_seen: datetime | None) -> dict[str, Any]:
    return {
        "id": str(u.id),
        "displayName": u.display_name or u.name,
        "loginName": login_name(u),
        "profilePicUrl": u.profile_pic_url,
        "tailnetId": "-",
        "created": rfc3339(u.created_at),
        "type": "member",
        "role": "member",
        "status": "active",
        "deviceCount": device_count,
        "lastSeen": rfc3339(last_seen),
        "currentlyConnected": connected,
    }
