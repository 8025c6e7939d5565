"""The JSON shapes of the admin API's records: Headscale's (protobuf JSON through grpc-gateway).

Field names are camelCase, 64-bit ids are strings (`"id": "1"`), enums go by name
(`REGISTER_METHOD_AUTH_KEY`), times are RFC 3339 in UTC (null when unset) and every field is
present. Fields Headscale's messages do not have are ours and named the same way (`expired`,
`ephemeral`, `prefix`); a client written for Headscale reads past them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from trioscale.shared.domain.tailcfg import TAGGED_DEVICES_USER_ID
from trioscale.shared.model import ApiKey, Node, PendingRegistration, PreAuthKey, Share, User

__all__ = [
    "ts",
    "id_text",
    "REGISTER_METHODS",
    "user_json",
    "TAGGED_DEVICES",
    "preauth_json",
    "masked_preauth_key",
    "apikey_json",
    "node_json",
    "registration_json",
    "share_json",
]


def ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def id_text(value: int | None) -> str:
    """A uint64 as protobuf JSON writes it: a string (JavaScript's numbers stop at 2**53)."""
    return str(value or 0)


#: our node records' register_method -> Headscale's RegisterMethod enum
REGISTER_METHODS = {
    "authkey": "REGISTER_METHOD_AUTH_KEY",
    "cli": "REGISTER_METHOD_CLI",
    "interactive": "REGISTER_METHOD_CLI",  # a pending login an admin completed
    "oidc": "REGISTER_METHOD_OIDC",
}


def user_json(u: User | None) -> dict[str, Any] | None:
    if u is None:
        return None
    return {
        "id": id_text(u.id),
        "name": u.name,
        "createdAt": ts(u.created_at),
        "displayName": u.display_name,
        "email": u.email,
        "providerId": u.provider_id,
        "provider": u.provider,
        "profilePicUrl": u.profile_pic_url,
    }


#: the owner a tagged node shows, as in Headscale (and in the netmap): its tags are its identity
TAGGED_DEVICES = {
    "id": id_text(TAGGED_DEVICES_USER_ID),
    "name": "tagged-devices",
    "createdAt": None,
    "displayName": "Tagged Devices",
    "email": "",
    "providerId": "",
    "provider": "",
    "profilePicUrl": "",
}


def masked_preauth_key(prefix: str) -> str:
    """How a stored key is shown after its creation: the secret is not kept, so never shown."""
    return f"tskey-auth-{prefix}-***"


def _key_owner(u: User | None) -> dict[str, Any] | None:
    """A key owned by its tags alone has no user, as in Headscale (ours hold it under tagged-devices)."""
    if u is None or u.name == TAGGED_DEVICES["name"]:
        return None
    return user_json(u)


def preauth_json(k: PreAuthKey, users: dict[int, User], now: datetime, *, key: str = "") -> dict[str, Any]:
    return {
        "user": _key_owner(users.get(k.user_id)),
        "id": id_text(k.id),
        "key": key or masked_preauth_key(k.prefix),
        "reusable": k.reusable,
        "ephemeral": k.ephemeral,
        "used": k.used,
        "expiration": ts(k.expiration),
        "createdAt": ts(k.created_at),
        "aclTags": list(k.tags),
        "prefix": k.prefix,
        "expired": k.is_expired(now),
    }


def apikey_json(k: ApiKey, now: datetime) -> dict[str, Any]:
    return {
        "id": id_text(k.id),
        "prefix": k.prefix,
        "expiration": ts(k.expiration),
        "createdAt": ts(k.created_at),
        "lastSeen": ts(k.last_seen),
        "expired": k.is_expired(now),
        "scopes": list(k.scopes),  # ours: empty is all access (API v2's scopes, apiv2/scopes.py)
    }


def node_json(
    n: Node,
    users: dict[int, User],
    now: datetime,
    *,
    online: bool | None = None,
    available_routes: list[str] | tuple[str, ...] = (),
    subnet_routes: list[str] | tuple[str, ...] = (),
    preauth_keys: dict[int, PreAuthKey] | None = None,
) -> dict[str, Any]:
    """`subnet_routes` are the routes the node serves now (approved, advertised and primary);
    `preauth_keys` by id, to show the key the node registered with."""
    key = (preauth_keys or {}).get(n.auth_key_id) if n.auth_key_id else None
    return {
        "id": id_text(n.id),
        "machineKey": "mkey:" + n.machine_key.hex(),
        "nodeKey": "nodekey:" + n.node_key.hex(),
        "discoKey": ("discokey:" + n.disco_key.hex()) if n.disco_key else "",
        "ipAddresses": [a for a in (n.ipv4, n.ipv6) if a],
        "name": n.hostname,
        "user": dict(TAGGED_DEVICES) if n.tags else user_json(users.get(n.user_id)),
        "lastSeen": ts(n.last_seen),
        "expiry": ts(n.expiry),
        "preAuthKey": preauth_json(key, users, now) if key is not None else None,
        "createdAt": ts(n.created_at),
        "registerMethod": REGISTER_METHODS.get(n.register_method, "REGISTER_METHOD_UNSPECIFIED"),
        "givenName": n.given_name,
        "online": bool(online),
        "approvedRoutes": list(n.approved_routes),
        "availableRoutes": list(available_routes),
        "subnetRoutes": list(subnet_routes),
        "tags": list(n.tags),
        "ephemeral": n.ephemeral,
        "expired": n.is_expired(now),
    }


def registration_json(r: PendingRegistration) -> dict[str, Any]:
    return {
        "id": r.id,
        "hostname": str((r.hostinfo or {}).get("Hostname", "")),
        "nodeId": id_text(r.node_id) if r.node_id else None,
        "userId": id_text(r.user_id) if r.user_id is not None else None,
        "createdAt": ts(r.created_at),
    }


def share_json(s: Share, nodes: dict[int, Node], users: dict[int, User]) -> dict[str, Any]:
    n = nodes.get(s.node_id)
    return {"node": {"id": id_text(s.node_id), "givenName": n.given_name if n else ""},
            "user": user_json(users.get(s.user_id)),
            "createdAt": ts(s.created_at)}
