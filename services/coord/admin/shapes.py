"""The JSON shapes of the admin API's records (field names as Headscale's API has them)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from trioscale.shared.model import ApiKey, Node, PendingRegistration, PreAuthKey, Share, User

__all__ = ["ts", "user_json", "preauth_json", "apikey_json", "node_json", "registration_json", "share_json"]


def ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def user_json(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "name": u.name,
        "display_name": u.display_name,
        "email": u.email,
        "created_at": ts(u.created_at),
    }


def preauth_json(k: PreAuthKey, users: dict[int, User], now: datetime) -> dict[str, Any]:
    u = users.get(k.user_id)
    return {
        "id": k.id,
        "prefix": k.prefix,
        "user": {"id": k.user_id, "name": u.name if u else ""},
        "reusable": k.reusable,
        "ephemeral": k.ephemeral,
        "used": k.used,
        "expired": k.is_expired(now),
        "acl_tags": list(k.tags),
        "expiration": ts(k.expiration),
        "created_at": ts(k.created_at),
    }


def apikey_json(k: ApiKey, now: datetime) -> dict[str, Any]:
    return {
        "id": k.id,
        "prefix": k.prefix,
        "expired": k.is_expired(now),
        "expiration": ts(k.expiration),
        "created_at": ts(k.created_at),
        "last_seen": ts(k.last_seen),
    }


def node_json(n: Node, users: dict[int, User], now: datetime, online: bool | None = None) -> dict[str, Any]:
    u = users.get(n.user_id)
    return {
        "online": online,
        "id": n.id,
        "name": n.hostname,
        "hostname": n.hostname,
        "given_name": n.given_name,
        "user": {"id": n.user_id, "name": u.name if u else ""},
        "ip_addresses": [a for a in (n.ipv4, n.ipv6) if a],
        "machine_key": "mkey:" + n.machine_key.hex(),
        "node_key": "nodekey:" + n.node_key.hex(),
        "disco_key": ("discokey:" + n.disco_key.hex()) if n.disco_key else "",
        "tags": list(n.tags),
        "approved_routes": list(n.approved_routes),
        "ephemeral": n.ephemeral,
        "register_method": n.register_method,
        "expiry": ts(n.expiry),
        "expired": n.is_expired(now),
        "created_at": ts(n.created_at),
        "last_seen": ts(n.last_seen),
    }


def registration_json(r: PendingRegistration) -> dict[str, Any]:
    return {
        "id": r.id,
        "hostname": str((r.hostinfo or {}).get("Hostname", "")),
        "node_id": r.node_id or None,
        "user_id": r.user_id,
        "created_at": ts(r.created_at),
    }


def share_json(s: Share, nodes: dict[int, Node], users: dict[int, User]) -> dict[str, Any]:
    n, u = nodes.get(s.node_id), users.get(s.user_id)
    return {"node": {"id": s.node_id, "given_name": n.given_name if n else ""},
            "user": {"id": s.user_id, "name": u.name if u else ""},
            "created_at": ts(s.created_at)}
