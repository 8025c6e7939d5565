"""The tailnet's records as plain data.

Everything the store persists is one of these frozen dataclasses. They know nothing of SQL, Trio or
HTTP; the store turns them into rows and back, the domain reads them, services pass them around.
Times are timezone-aware UTC datetimes; keys are raw 32-byte values (the text forms live in
shared.proto.keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class User:
    """A person (or the owner of tagged devices). `provider` and `provider_id` name the login
    provider and the identity it knows the user by (for a user brought over from Headscale's OIDC
    login: "oidc" and issuer/subject); both are "" for a user made here."""

    id: int
    name: str
    display_name: str = ""
    email: str = ""
    created_at: datetime = field(default_factory=utcnow)
    provider: str = ""
    provider_id: str = ""
    profile_pic_url: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    """A registered machine.

    `given_name` is the DNS label the tailnet knows it by (unique, sanitised); `hostname` is what the
    client reported. A node with tags is owned by its tags: `user_id` then only records who
    registered it.
    """

    id: int
    machine_key: bytes
    node_key: bytes
    user_id: int
    hostname: str
    given_name: str
    ipv4: str | None = None
    ipv6: str | None = None
    disco_key: bytes | None = None
    endpoints: tuple[str, ...] = ()
    hostinfo: dict[str, Any] = field(default_factory=dict)
    home_derp: int = 0
    tags: tuple[str, ...] = ()
    approved_routes: tuple[str, ...] = ()
    ephemeral: bool = False
    auth_key_id: int | None = None
    expiry: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    last_seen: datetime | None = None
    register_method: str = ""  # "authkey" | "interactive" | "cli"

    def replace(self, **changes: Any) -> "Node":
        return dataclasses.replace(self, **changes)

    @property
    def is_tagged(self) -> bool:
        return bool(self.tags)

    def is_expired(self, now: datetime) -> bool:
        return self.expiry is not None and self.expiry <= now


@dataclass(frozen=True, slots=True)
class PreAuthKey:
    """An auth key. Only `prefix` and `key_hash` are stored; the full key is shown once at creation."""

    id: int
    prefix: str
    key_hash: bytes
    user_id: int
    reusable: bool = False
    ephemeral: bool = False
    used: bool = False
    tags: tuple[str, ...] = ()
    expiration: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    description: str = ""

    def is_expired(self, now: datetime) -> bool:
        return self.expiration is not None and self.expiration <= now


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key (`tskey-api-…`). `scopes` empty: all access, as every key had before scopes; an
    OAuth client's access token is a key naming its client (`oauth_client_id`), with the scopes and
    tags it was issued with."""

    id: int
    prefix: str
    key_hash: bytes
    expiration: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    last_seen: datetime | None = None
    scopes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    oauth_client_id: int | None = None

    def is_expired(self, now: datetime) -> bool:
        return self.expiration is not None and self.expiration <= now


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """An OAuth client of Tailscale's API v2: `client_id` in clear, the secret only as its hash.
    Its access tokens get (a subset of) `scopes`; keys and devices it creates carry `tags`."""

    id: int
    client_id: str
    secret_hash: bytes
    description: str = ""
    scopes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    created_at: datetime = field(default_factory=utcnow)
    last_used: datetime | None = None


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One stored version of the policy text (the policy itself is shared.domain.policy.Policy)."""

    version: int
    text: str
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class SSHCheck:
    """A Tailscale SSH session held by a `check` rule until an administrator decides
    (`trioscale auth approve|reject --auth-id ID`). `decision` is "", "approved" or "rejected"."""

    id: str
    src_node_id: int
    dst_node_id: int
    local_user: str
    created_at: datetime
    expires_at: datetime
    decision: str = ""


@dataclass(frozen=True, slots=True)
class PendingRegistration:
    """An interactive login waiting for an admin: created by /machine/register, completed by the CLI."""

    id: str
    machine_key: bytes
    node_key: bytes
    hostinfo: dict[str, Any] = field(default_factory=dict)
    expiry: datetime | None = None  # the node-key expiry the client asked for
    created_at: datetime = field(default_factory=utcnow)
    node_id: int | None = None  # set when approved
    user_id: int | None = None
    #: where the request came from (an IP address, an IPv6 /64; "" if unknown): the per-source cap
    source: str = ""


@dataclass(frozen=True, slots=True)
class DerpRelay:
    """A live DERP relay process; relays register themselves and send heartbeats."""

    region_id: int
    name: str
    host: str
    region_code: str = ""
    region_name: str = ""
    ipv4: str = ""
    ipv6: str = ""
    derp_port: int = 443
    stun_port: int = 3478
    heartbeat_at: datetime = field(default_factory=utcnow)
    # How clients check the relay's certificate: "sha256-raw:<hex>" pins a self-signed one;
    # insecure_for_tests skips the check (TLS is kept). Both are published in the DERP map.
    cert_name: str = ""
    insecure_for_tests: bool = False


@dataclass(frozen=True, slots=True)
class Share:
    """Node `node_id` (of some user) is shared with user `user_id`."""

    node_id: int
    user_id: int
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class Presence:
    """Coordinator replica `replica_id` holds a map session of node `node_id` until `lease_expires`
    (renewed by the replica's heartbeat; a row whose lease ran out is reaped by any live replica).
    A node is online while it has at least one row."""

    node_id: int
    replica_id: str
    lease_expires: datetime


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the change log: what changed, in the order it was committed.

    `kind` is one of CHANGE_KINDS; `data` is a small dict (ids and the fields that changed), encoded
    with msgpack in the log. Readers fetch the current record from the store when they need more.
    """

    seq: int
    kind: str
    data: dict[str, Any]
    at: datetime = field(default_factory=utcnow)


CHANGE_KINDS = frozenset(
    {
        "user.created",
        "user.updated",
        "user.deleted",
        "node.created",  # data: {"id", "user_id", "node_key", "node": the node (see store.base.carried_node)}
        "node.updated",  # data: {"id", "user_id", "fields": [names of changed fields], "node"}
        "node.deleted",
        "preauthkey.created",
        "preauthkey.updated",
        "preauthkey.deleted",
        "apikey.created",
        "apikey.updated",
        "apikey.deleted",
        "oauthclient.created",
        "oauthclient.deleted",
        "settings.set",  # data: {"name"}: a tailnet setting set through the API (tailnet_settings)
        "policy.set",
        "registration.pending",
        "registration.completed",
        "registration.deleted",
        "relay.updated",
        "relay.deleted",
        "share.created",
        "share.deleted",
        "presence.online",  # data: {"node_id", "replica_id"}: the node's first presence row
        "presence.offline",  # data: {"node_id", "replica_id", "last_seen" (ISO text), "reason"}
        "dnstxt.set",  # data: {"name"}: TXT values (ACME DNS-01 via /machine/set-dns) set or cleared
        "sshcheck.decided",  # data: {"id", "decision"}: an SSH check-mode session approved or rejected
    }
)
