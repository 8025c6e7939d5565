"""Inputs of the policy engine and the parsed policy.

`NodeInfo` and `UserInfo` are the engine's own small views of the tailnet, so the engine does not
depend on the store. Build them from the store's records with `node_info` / `user_info`:

    users = [user_info(u) for u in store_users]                # shared.model.User
    nodes = [node_info(n, online=n.id in online) for n in store_nodes]   # shared.model.Node

A tagged node is owned by its tags: its `user_id` is ignored by every user-based selector.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

EXIT_ROUTES = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    name: str
    email: str = ""
    #: tailnet roles ("owner", "admin", "it-admin", ...) for autogroup:<role>; our users have none yet
    roles: tuple[str, ...] = ()

    def login_names(self) -> tuple[str, ...]:
        """The spellings a policy may use for this user."""
        names = [self.email] if self.email else []
        names.append(f"{self.name}@")
        return tuple(names)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: int
    name: str
    user_id: int | None = None
    tags: tuple[str, ...] = ()
    ipv4: str | None = None
    ipv6: str | None = None
    routable_ips: tuple[str, ...] = ()  # what the node advertises (Hostinfo.RoutableIPs)
    approved_routes: tuple[str, ...] = ()  # what an admin approved
    online: bool = True

    @property
    def is_tagged(self) -> bool:
        return bool(self.tags)


def user_info(user: Any) -> UserInfo:
    """From shared.model.User."""
    return UserInfo(id=user.id, name=user.name, email=user.email or "")


def node_info(node: Any, *, online: bool = True) -> NodeInfo:
    """From shared.model.Node (advertised routes come from Hostinfo.RoutableIPs)."""
    hostinfo = node.hostinfo or {}
    return NodeInfo(
        id=node.id,
        name=node.given_name or node.hostname,
        user_id=node.user_id,
        tags=tuple(node.tags),
        ipv4=node.ipv4,
        ipv6=node.ipv6,
        routable_ips=tuple(hostinfo.get("RoutableIPs") or ()),
        approved_routes=tuple(node.approved_routes),
        online=online,
    )


@dataclass(frozen=True, slots=True)
class PortRange:
    first: int
    last: int

    def json(self) -> dict[str, int]:
        return {"First": self.first, "Last": self.last}


ALL_PORTS = (PortRange(0, 65535),)


@dataclass(frozen=True, slots=True)
class Alias:
    """One selector: kind is one of wildcard, user, group, tag, host, prefix, autogroup."""

    kind: str
    value: str
    text: str = ""  # as written

    def __str__(self) -> str:
        return self.text or self.value


@dataclass(frozen=True, slots=True)
class IPSpec:
    """One `ip` entry of a grant (or one ACL dst's ports plus the ACL's proto)."""

    protos: tuple[int, ...]  # () = Tailscale's default set (TCP, UDP, ICMP)
    ports: tuple[PortRange, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """An ACL or a grant, normalised. ACL dsts carry their own ports, grant dsts share `ip`."""

    srcs: tuple[Alias, ...]
    dsts: tuple[tuple[Alias, tuple[IPSpec, ...]], ...]
    app: dict[str, list[Any]] | None = None
    via: tuple[str, ...] = ()
    origin: str = "acl"  # "acl" | "grant"


@dataclass(frozen=True, slots=True)
class SSHRule:
    action: str  # "accept" | "check"
    srcs: tuple[Alias, ...]
    dsts: tuple[Alias, ...]
    users: tuple[str, ...]
    check_period: float | None = None  # seconds
    accept_env: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeAttr:
    targets: tuple[Alias, ...]
    attrs: tuple[str, ...]
    ipp_pool: tuple[str, ...] = ()
    app: dict[str, list[Any]] | None = None


@dataclass
class ParsedPolicy:
    groups: dict[str, list[str]] = field(default_factory=dict)
    hosts: dict[str, IPNetwork] = field(default_factory=dict)
    tag_owners: dict[str, list[str]] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    ssh: list[SSHRule] = field(default_factory=list)
    node_attrs: list[NodeAttr] = field(default_factory=list)
    auto_routes: dict[IPNetwork, tuple[Alias, ...]] = field(default_factory=dict)
    auto_exit: tuple[Alias, ...] = ()
    tests: list[dict[str, Any]] = field(default_factory=list)
    ssh_tests: list[dict[str, Any]] = field(default_factory=list)
    randomize_client_port: bool = False
    has_acls: bool = False
    has_grants: bool = False
    raw: dict[str, Any] = field(default_factory=dict)
