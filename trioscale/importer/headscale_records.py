"""Headscale's rows as trioscale's records, and what cannot come over (with the reason).

Pure: rows in (as `headscale_db` read them), records out. Records still carry Headscale's ids
(users, pre-auth keys) where they name each other; `apply` maps them onto the ids the store gives.

How Headscale writes its columns (hscontrol/types): keys in their text forms (`mkey:`, `nodekey:`,
`discokey:` and hex), addresses as text, `endpoints`, `host_info`, `tags` and `approved_routes` as
JSON, booleans as 0/1 (SQLite) or booleans (PostgreSQL), times as text (SQLite) or timestamps; a
zero time (year 1) means none. Rows with `deleted_at` set are deleted (soft delete) and stay behind.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from trioscale.shared.domain import secrets
from trioscale.shared.model import Node
from trioscale.shared.proto import keys

from .headscale_db import HeadscaleData

__all__ = [
    "HsUser",
    "HsPreAuthKey",
    "HsApiKey",
    "HsNode",
    "Skipped",
    "HeadscaleTailnet",
    "convert",
    "parse_time",
    "TAGGED_DEVICES",
]

#: the user that owns imported tagged nodes and keys Headscale kept without a user (its API calls
#: the owner of tagged nodes by this name too)
TAGGED_DEVICES = "tagged-devices"

#: Headscale's register_method values -> ours
_REGISTER_METHODS = {"authkey": "authkey", "cli": "cli", "oidc": "interactive"}


@dataclass(frozen=True)
class HsUser:
    hs_id: int
    name: str
    display_name: str = ""
    email: str = ""
    #: the login provider ("oidc") and the identity it knows the user by (issuer and subject)
    provider: str = ""
    provider_id: str = ""
    profile_pic_url: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class HsPreAuthKey:
    hs_id: int
    user_hs_id: int | None
    prefix: str
    key_hash: bytes
    reusable: bool
    ephemeral: bool
    used: bool
    tags: tuple[str, ...]
    expiration: datetime | None
    created_at: datetime | None = None


@dataclass(frozen=True)
class HsApiKey:
    hs_id: int
    prefix: str
    key_hash: bytes
    expiration: datetime | None
    created_at: datetime | None = None
    last_seen: datetime | None = None


@dataclass(frozen=True)
class HsNode:
    hs_id: int
    user_hs_id: int | None
    auth_key_hs_id: int | None
    #: the node as trioscale keeps it; its user_id and auth_key_id are placeholders until apply
    node: Node


@dataclass(frozen=True)
class Skipped:
    kind: str  # "user" | "node" | "preauthkey" | "apikey" | "policy"
    name: str
    reason: str


@dataclass
class HeadscaleTailnet:
    version: str = ""
    users: list[HsUser] = field(default_factory=list)
    nodes: list[HsNode] = field(default_factory=list)
    preauth_keys: list[HsPreAuthKey] = field(default_factory=list)
    api_keys: list[HsApiKey] = field(default_factory=list)
    policy: str | None = None
    skipped: list[Skipped] = field(default_factory=list)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> datetime | None:
    """A Headscale time as an aware UTC datetime; None for NULL, "" or Go's zero time."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        t = value
    else:
        text = str(value).strip().replace(" ", "T", 1)
        # Go writes nanoseconds and sometimes a zone name after the offset ("+0000 UTC")
        text = _FRACTION.sub(r"\1", text.split(" ")[0])
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    t = t.astimezone(timezone.utc)
    return None if t.year <= 1 else t


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t")
    return bool(value)


def _json(value: Any, default: Any) -> Any:
    if value is None or value == "" or value == b"":
        return default
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value)
    return default if value is None else value


def _strings(value: Any) -> tuple[str, ...]:
    items = _json(value, [])
    if not isinstance(items, list):
        raise ValueError("expected a JSON list")
    return tuple(str(x) for x in items)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _addr(value: Any) -> str | None:
    text = _text(value).strip()
    return text or None


def _hash(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("ascii")
    return bytes(value or b"")


def _user(row: dict[str, Any]) -> HsUser:
    provider_id = _text(row.get("provider_identifier"))
    return HsUser(
        hs_id=int(row["id"]),
        name=_text(row["name"]),
        display_name=_text(row.get("display_name")),
        email=_text(row.get("email")),
        provider=_text(row.get("provider")) or ("oidc" if provider_id else ""),
        provider_id=provider_id,
        profile_pic_url=_text(row.get("profile_pic_url")),
        created_at=parse_time(row.get("created_at")),
    )


def _preauth_key(row: dict[str, Any]) -> HsPreAuthKey | Skipped:
    prefix = _text(row.get("prefix"))
    key_hash = _hash(row.get("hash"))
    clear = _text(row.get("key"))
    if (not prefix or not key_hash) and clear:
        # kept in clear before v0.28: stored here as ours are, so the same text keeps working
        try:
            _, prefix, secret = secrets.split_key(clear)
        except secrets.KeyFormatError:
            return Skipped("preauthkey", f"id {row['id']}", "kept in clear in a form trioscale does not know")
        key_hash = secrets.hash_secret(secret)
    if not prefix or not key_hash:
        return Skipped("preauthkey", f"id {row['id']}", "no prefix and hash, nor a key")
    return HsPreAuthKey(
        hs_id=int(row["id"]),
        user_hs_id=None if row.get("user_id") is None else int(row["user_id"]),
        prefix=prefix,
        key_hash=key_hash,
        reusable=_bool(row.get("reusable")),
        ephemeral=_bool(row.get("ephemeral")),
        used=_bool(row.get("used")),
        tags=_strings(row.get("tags")),
        expiration=parse_time(row.get("expiration")),
        created_at=parse_time(row.get("created_at")),
    )


def _api_key(row: dict[str, Any]) -> HsApiKey | Skipped:
    prefix = _text(row.get("prefix"))
    key_hash = _hash(row.get("hash"))
    if not prefix or not key_hash:
        return Skipped("apikey", f"id {row['id']}", "no prefix or hash")
    return HsApiKey(int(row["id"]), prefix, key_hash, parse_time(row.get("expiration")),
                    created_at=parse_time(row.get("created_at")), last_seen=parse_time(row.get("last_seen")))


def _key(kind: keys.KeyType, value: Any) -> bytes | None:
    text = _text(value).strip()
    if not text:
        return None
    raw = kind.parse(text)
    return None if keys.is_zero(raw) else raw


def _node(row: dict[str, Any], tag_column: str) -> HsNode:
    machine_key = _key(keys.MACHINE, row["machine_key"])
    node_key = _key(keys.NODE, row["node_key"])
    if machine_key is None or node_key is None:
        raise ValueError("no machine key or node key")
    hostinfo = _json(row.get("host_info"), {})
    if not isinstance(hostinfo, dict):
        raise ValueError("host_info is not a JSON object")
    net_info = hostinfo.get("NetInfo") or {}
    home_derp = net_info.get("PreferredDERP") if isinstance(net_info, dict) else 0
    auth_key = row.get("auth_key_id")
    node = Node(
        id=int(row["id"]),
        machine_key=machine_key,
        node_key=node_key,
        user_id=0,
        hostname=_text(row.get("hostname")),
        given_name=_text(row.get("given_name")),
        ipv4=_addr(row.get("ipv4")),
        ipv6=_addr(row.get("ipv6")),
        disco_key=_key(keys.DISCO, row.get("disco_key")),
        endpoints=_strings(row.get("endpoints")),
        hostinfo=hostinfo,
        home_derp=int(home_derp or 0),
        tags=_strings(row.get(tag_column)),
        approved_routes=_strings(row.get("approved_routes")),
        expiry=parse_time(row.get("expiry")),
        created_at=parse_time(row.get("created_at")) or datetime.now(timezone.utc),
        last_seen=parse_time(row.get("last_seen")),
        register_method=_REGISTER_METHODS.get(_text(row.get("register_method")), ""),
    )
    return HsNode(
        hs_id=int(row["id"]),
        user_hs_id=None if row.get("user_id") is None else int(row["user_id"]),
        auth_key_hs_id=None if auth_key is None else int(auth_key),
        node=node,
    )


def _live(row: dict[str, Any]) -> bool:
    return parse_time(row.get("deleted_at")) is None


def convert(data: HeadscaleData) -> HeadscaleTailnet:
    """Every live record of `data` as trioscale's, or a Skipped saying why not."""
    out = HeadscaleTailnet(version=data.version)
    taken: set[str] = set()
    for row in data.rows("users"):
        if not _live(row):
            continue
        user = _user(row)
        if not user.name:
            out.skipped.append(Skipped("user", f"id {user.hs_id}", "no name"))
            continue
        if user.name in taken:
            # Headscale allows one name per login provider; trioscale's names are unique
            user = dataclasses.replace(user, name=f"{user.name}-{user.hs_id}")
        taken.add(user.name)
        out.users.append(user)
    for row in data.rows("pre_auth_keys"):
        got = _preauth_key(row)
        (out.skipped if isinstance(got, Skipped) else out.preauth_keys).append(got)
    for row in data.rows("api_keys"):
        got = _api_key(row)
        (out.skipped if isinstance(got, Skipped) else out.api_keys).append(got)
    for row in data.rows("nodes"):
        if not _live(row):
            continue
        try:
            out.nodes.append(_node(row, data.tag_column))
        except (ValueError, TypeError, keys.KeyFormatError) as exc:
            name = _text(row.get("given_name")) or f"id {row['id']}"
            out.skipped.append(Skipped("node", name, f"unreadable row: {exc}"))
    live = [r for r in data.rows("policies") if _live(r) and _text(r.get("data")).strip()]
    if live:
        out.policy = _text(live[-1]["data"])
    return out
