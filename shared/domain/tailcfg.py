"""Tailscale wire JSON (tailcfg) for the records we keep: nodes, user profiles, DERP map, DNS.

Rules the client enforces (protocol-control.md §4, §8): keys are never "" (omit instead), times are
RFC 3339 with the zero time for "never", IDs are non-zero, names are FQDNs with a trailing dot.
Field names are Go's. Pure functions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from trioscale.shared.model import DerpRelay, Node, User
from trioscale.shared.proto import keys

from .names import fqdn

ZERO_TIME = "0001-01-01T00:00:00Z"
#: the user id Tailscale's clients show tagged nodes under (the same value Headscale uses)
TAGGED_DEVICES_USER_ID = 2147455555
TAGGED_DEVICES_PROFILE = {
    "ID": TAGGED_DEVICES_USER_ID,
    "LoginName": "tagged-devices",
    "DisplayName": "Tagged Devices",
}

CAP_IS_ADMIN = "https://tailscale.com/cap/is-admin"
CAP_IS_OWNER = "https://tailscale.com/cap/is-owner"
CAP_FILE_SHARING = "https://tailscale.com/cap/file-sharing"
CAP_DISABLE_CAPTIVE_PORTAL = "disable-captive-portal-detection"

#: allow everything inbound (until a policy says otherwise)
FILTER_ALLOW_ALL = [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]


def format_time(value: datetime | None) -> str:
    if value is None:
        return ZERO_TIME
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{value.microsecond:06d}Z" if value.microsecond else "Z")


def parse_time(text: str | None) -> datetime | None:
    """Client times (RFC 3339, any offset, up to 9 fraction digits); the zero time and "" → None.
    ValueError for anything else that is not a time we can hold (a number, year 10000 in UTC)."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise ValueError(f"a time must be a string, not {type(text).__name__}")
    if text.startswith("0001-01-01"):
        return None
    cleaned = text.replace("Z", "+00:00")
    if "." in cleaned:
        head, _, tail = cleaned.partition(".")
        end = next((i for i, ch in enumerate(tail) if not ch.isdigit()), len(tail))
        digits, zone = tail[:end], tail[end:]
        cleaned = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    parsed = datetime.fromisoformat(cleaned)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59
        raise ValueError(f"time {text!r} is out of range") from None


def node_owner_id(node: Node) -> int:
    return TAGGED_DEVICES_USER_ID if node.tags else node.user_id


def addresses(node: Node) -> list[str]:
    out = []
    if node.ipv4:
        out.append(f"{node.ipv4}/32")
    if node.ipv6:
        out.append(f"{node.ipv6}/128")
    return out


def node_json(
    node: Node,
    *,
    base_domain: str,
    now: datetime,
    online: bool | None,
    is_self: bool,
    cap_map: Mapping[str, list[Any]] | None = None,
    allowed_ips: Iterable[str] | None = None,
    primary_routes: Iterable[str] = (),
) -> dict[str, Any]:
    """A tailcfg.Node for `node`, as its own map (`is_self`) or a peer's shows it."""
    expired = node.is_expired(now)
    own = addresses(node)
    allowed = list(allowed_ips) if allowed_ips is not None else own
    out: dict[str, Any] = {
        "ID": node.id,
        "StableID": str(node.id),
        "Name": fqdn(node.given_name, base_domain),
        "User": node_owner_id(node),
        "Key": keys.NODE.format(node.node_key),
        "KeyExpiry": format_time(node.expiry),
        "Machine": keys.MACHINE.format(node.machine_key),
        # AllowedIPs, when given, leave out an address the policy turned off (disable-ipv4)
        "Addresses": [a for a in own if a in allowed],
        "AllowedIPs": allowed,
        "Hostinfo": node.hostinfo or {},
        "Created": format_time(node.created_at),
        "MachineAuthorized": not expired,
    }
    if node.disco_key:
        out["DiscoKey"] = keys.DISCO.format(node.disco_key)
    if node.endpoints:
        out["Endpoints"] = list(node.endpoints)
    if node.home_derp:
        out["HomeDERP"] = node.home_derp
    if node.tags:
        out["Tags"] = sorted(node.tags)
    primary = sorted(primary_routes)
    if primary:
        out["PrimaryRoutes"] = primary
    if expired:
        out["Expired"] = True
    if not is_self:
        if online is not None:
            out["Online"] = online
        if online is False and node.last_seen is not None:
            out["LastSeen"] = format_time(node.last_seen)
    if cap_map:
        out["CapMap"] = {k: list(v) for k, v in cap_map.items()}
    return out


def self_cap_map(extra: Mapping[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    caps: dict[str, list[Any]] = {
        CAP_IS_ADMIN: [],
        CAP_FILE_SHARING: [],
        CAP_DISABLE_CAPTIVE_PORTAL: [],
    }
    if extra:
        caps.update(extra)
    return caps


def user_profile(user: User) -> dict[str, Any]:
    return {
        "ID": user.id,
        "LoginName": user.email or user.name,
        "DisplayName": user.display_name or user.name,
    }


def register_user(user: User | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`User` and `Login` objects of a RegisterResponse (tagged nodes get the tagged-devices user)."""
    if user is None:
        return (
            {"ID": TAGGED_DEVICES_USER_ID, "DisplayName": "Tagged Devices", "ProfilePicURL": "",
             "Created": ZERO_TIME},
            {"ID": TAGGED_DEVICES_USER_ID, "Provider": "", "LoginName": "tagged-devices",
             "DisplayName": "Tagged Devices", "ProfilePicURL": ""},
        )
    return (
        {"ID": user.id, "DisplayName": user.display_name or user.name, "ProfilePicURL": "",
         "Created": format_time(user.created_at)},
        {"ID": user.id, "Provider": "", "LoginName": user.email or user.name,
         "DisplayName": user.display_name or user.name, "ProfilePicURL": ""},
    )


#: the first capability version whose clients read `CertName: "sha256-raw:<hex>"` as a certificate
#: pin (Tailscale 1.82); older ones take any CertName as a name to verify against the system roots
CAPVER_CERT_HASH = 115
CERT_HASH_PREFIX = "sha256-raw:"


def derp_map_for_capver(dmap: dict[str, Any], capver: int) -> dict[str, Any]:
    """`dmap` as a client of `capver` can use it: before CAPVER_CERT_HASH, without certificate-hash
    CertNames (such a node is reachable there only through InsecureForTests)."""
    if capver >= CAPVER_CERT_HASH:
        return dmap
    regions = {}
    for rid, region in dmap.get("Regions", {}).items():
        nodes = [{k: v for k, v in n.items() if not (k == "CertName" and str(v).startswith(CERT_HASH_PREFIX))}
                 for n in region.get("Nodes", [])]
        regions[rid] = {**region, "Nodes": nodes}
    return {**dmap, "Regions": regions}


def derp_map(
    relays: Iterable[DerpRelay],
    static_regions: Iterable[Mapping[str, Any]] = (),
    *,
    insecure_for_tests: bool = False,
) -> dict[str, Any]:
    """DERPMap from the live relays plus regions given in configuration (DERPRegion JSON shape).

    Relays of one region become that region's nodes, sorted by name so the map is stable.
    """
    regions: dict[str, dict[str, Any]] = {}
    for region in static_regions:
        rid = int(region["RegionID"])
        regions[str(rid)] = {**region, "RegionID": rid, "Nodes": [dict(n) for n in region.get("Nodes", [])]}
    for relay in sorted(relays, key=lambda r: (r.region_id, r.name)):
        region = regions.setdefault(
            str(relay.region_id),
            {
                "RegionID": relay.region_id,
                "RegionCode": relay.region_code or f"r{relay.region_id}",
                "RegionName": relay.region_name or relay.region_code or f"Region {relay.region_id}",
                "Nodes": [],
            },
        )
        node: dict[str, Any] = {
            "Name": relay.name,
            "RegionID": relay.region_id,
            "HostName": relay.host,
            "DERPPort": relay.derp_port,
            "STUNPort": relay.stun_port if relay.stun_port else -1,
        }
        if relay.ipv4:
            node["IPv4"] = relay.ipv4
        if relay.ipv6:
            node["IPv6"] = relay.ipv6
        if relay.cert_name:
            node["CertName"] = relay.cert_name
        if insecure_for_tests or relay.insecure_for_tests:
            node["InsecureForTests"] = True
        region["Nodes"] = [n for n in region["Nodes"] if n.get("Name") != relay.name] + [node]
    return {"Regions": regions}
