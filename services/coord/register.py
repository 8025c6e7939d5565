"""/machine/register: pre-auth keys, interactive login, restarts, key rotation, logout.

The decisions follow Tailscale's client (protocol-control.md §3.1, §6): every answer is HTTP 200
with a RegisterResponse, failures in its `Error` field so the user sees them. A restarting client
sends its auth key again, so a node already known by node key + machine key is recognised before the
key is judged. Store access happens here; the rules about names and addresses live in domain/.
"""

from __future__ import annotations

import hmac
import logging
import secrets as _secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
import contextlib
from collections.abc import Collection
from typing import Any, Protocol

from trioscale.shared.domain import secrets
from trioscale.shared.model import Node, PendingRegistration, User
from trioscale.shared.proto import keys
from trioscale.shared.store import base as store_base
from trioscale.shared.store.base import Conflict, NotFound, Store, StoreError
from trioscale.shared.store.rows import hostinfo_size

from trioscale.shared.domain import ipalloc, names, tailcfg
from trioscale.shared.net import limits
from .metrics import count_registration

log = logging.getLogger("trioscale.coord.register")

#: how long an interactive login waits for an admin before the client gets a fresh AuthURL
PENDING_LIFETIME = timedelta(minutes=15)
REGISTRATION_ID_PREFIX = "tsreg-"
_MAX_CREATE_TRIES = 8
#: addresses offered per family: the one chosen and spares the store takes in order when another
#: replica, registering at the same time, got there first (half the joins of two replicas did)
_ADDRESS_CHOICES = 4


class Allocations(Protocol):
    """What registration needs from the coordinator to hand out addresses and names."""

    allocation_lock: Any  # an async context manager (a trio.Lock)

    def taken(self) -> tuple[Collection[str], Collection[str]]: ...

    def record_allocation(self, node: Node) -> None: ...


class RegisterError(Exception):
    """A refusal the client shows to its user (RegisterResponse.Error)."""


@dataclass(frozen=True)
class RegisterRequest:
    version: int
    node_key: bytes
    old_node_key: bytes | None
    auth_key: str | None
    expiry: datetime | None
    followup: str
    hostinfo: dict[str, Any]
    ephemeral: bool

    @classmethod
    def from_json(cls, body: Any) -> "RegisterRequest":
        if not isinstance(body, dict):
            raise ValueError("register request must be a JSON object")
        node_key = keys.NODE.from_json(body.get("NodeKey"))
        if node_key is None:
            raise ValueError("register request has no NodeKey")
        # JSON null means absent (as Go decodes it); any other wrong type is an error, never
        # "absent" (an empty list for Auth must not start an interactive login).
        auth = body.get("Auth")
        auth = {} if auth is None else auth
        if not isinstance(auth, dict):
            raise ValueError("Auth must be an object")
        auth_key = auth.get("AuthKey")
        if auth_key is not None and not isinstance(auth_key, str):
            raise ValueError("Auth.AuthKey must be a string")
        auth_key = auth_key or None
        hostinfo = body.get("Hostinfo")
        hostinfo = {} if hostinfo is None else hostinfo
        if not isinstance(hostinfo, dict):
            raise ValueError("Hostinfo must be an object")
        followup = body.get("Followup")
        followup = "" if followup is None else followup
        if not isinstance(followup, str):
            raise ValueError("Followup must be a string")
        return cls(
            version=int(body.get("Version") or 0),
            node_key=node_key,
            old_node_key=keys.NODE.from_json(body.get("OldNodeKey")),
            auth_key=auth_key,
            expiry=tailcfg.parse_time(body.get("Expiry")),
            followup=followup,
            hostinfo=hostinfo,
            ephemeral=bool(body.get("Ephemeral")),
        )


@dataclass(frozen=True)
class RegistrationPolicy:
    """What registration needs from configuration."""

    server_url: str
    prefix_v4: str | None
    prefix_v6: str | None
    allocation: str = "sequential"
    node_expiry: timedelta | None = None


def success(node: Node, user: User | None) -> dict[str, Any]:
    owner = None if node.tags else user
    user_json, login_json = tailcfg.register_user(owner)
    return {
        "User": user_json,
        "Login": login_json,
        "NodeKeyExpired": False,
        "MachineAuthorized": True,
        "AuthURL": "",
    }


def error(message: str) -> dict[str, Any]:
    return {"Error": message}


def source_of(peer: str) -> str:
    """The source a pending login is counted against: the peer's IP address without its port, an
    IPv6 address as its /64 (one host usually holds a whole /64). "" if unknown."""
    host = peer.rsplit(":", 1)[0] if peer.count(":") == 1 or peer.startswith("[") else peer
    return limits.ip_source(host.strip("[]")) or ""


def _check_sizes(req: RegisterRequest) -> None:
    size = hostinfo_size(req.hostinfo)
    if size > store_base.MAX_HOSTINFO_BYTES:
        raise RegisterError(f"Hostinfo is {size} bytes; the limit is {store_base.MAX_HOSTINFO_BYTES}")


def new_registration_id() -> str:
    return REGISTRATION_ID_PREFIX + _secrets.token_hex(12)


def registration_id_from_url(url: str) -> str | None:
    marker = "/register/"
    if marker not in url:
        return None
    reg_id = url.rsplit(marker, 1)[1].split("?", 1)[0].strip("/")
    return reg_id or None


async def create_or_update_node(
    store: Store,
    policy: RegistrationPolicy,
    *,
    machine_key: bytes,
    node_key: bytes,
    user: User,
    hostinfo: dict[str, Any],
    now: datetime,
    ephemeral: bool = False,
    tags: tuple[str, ...] = (),
    auth_key_id: int | None = None,
    register_method: str,
    allocations: "Allocations | None" = None,
) -> Node:
    """Register a machine: update its node if the machine is known, else create one with fresh
    addresses and a unique name. `allocations` (the coordinator) serialises allocation in this
    process and knows the addresses and names in use from memory; when another process won an
    address the retry reads them from the store."""
    expiry = None if tags or policy.node_expiry is None else now + policy.node_expiry
    existing = await store.get_node_by_machine_key(machine_key)
    if existing is not None:
        fields: dict[str, Any] = dict(node_key=node_key, expiry=expiry, user_id=user.id,
                                      register_method=register_method)
        if hostinfo:
            fields["hostinfo"] = _keep_netinfo(existing.hostinfo, hostinfo)
        if tags:
            fields["tags"] = tags
        if auth_key_id is not None:
            fields["auth_key_id"] = auth_key_id
        return await store.update_node(existing.id, **fields)
    base = names.sanitize_label(str(hostinfo.get("Hostname") or ""))
    async with allocations.allocation_lock if allocations is not None else contextlib.nullcontext():
        return await _create(store, policy, base, allocations, machine_key=machine_key, node_key=node_key,
                             user=user, hostinfo=hostinfo, tags=tags, ephemeral=ephemeral,
                             auth_key_id=auth_key_id, expiry=expiry, now=now, register_method=register_method)


async def _create(store, policy, base, allocations, *, machine_key, node_key, user, hostinfo, tags, ephemeral,
                  auth_key_id, expiry, now, register_method) -> Node:
    last_error: StoreError | None = None
    for attempt in range(_MAX_CREATE_TRIES):
        if allocations is not None:
            taken_addrs, taken_names = allocations.taken()
        else:
            taken_addrs, taken_names = await store.node_holdings()
        # after two lost races (other replicas registering at the same time all pick the same lowest
        # free address) spread out: random addresses cannot collide over and over
        strategy = policy.allocation if attempt < 2 else "random"
        pairs = ipalloc.address_pairs(policy.prefix_v4, policy.prefix_v6, taken_addrs, _ADDRESS_CHOICES,
                                      strategy=strategy)
        node = Node(
            id=0,
            machine_key=machine_key,
            node_key=node_key,
            user_id=user.id,
            hostname=str(hostinfo.get("Hostname") or "")[: store_base.MAX_HOSTNAME_LEN],
            given_name=names.unique_label(base, taken_names),
            ipv4=pairs[0][0],
            ipv6=pairs[0][1],
            hostinfo=hostinfo,
            tags=tags,
            ephemeral=ephemeral,
            auth_key_id=auth_key_id,
            expiry=expiry,
            created_at=now,
            register_method=register_method,
        )
        try:
            created = await store.create_node(node, pairs[1:])
        except Conflict as exc:  # another process won the address or name: try again
            last_error = exc
            if allocations is not None:
                # Learn just the nodes that hold what this one wanted (their changes may not be
                # applied here yet) and retry from memory. Reading every node's holdings from
                # the store made each retry O(N), and with two replicas allocating at once many
                # joins lose a race: at 10,000 that was a tenth of a replica's CPU.
                for holder in await store.nodes_holding(node.ipv4, node.ipv6, node.given_name):
                    allocations.record_allocation(holder)
            continue
        if allocations is not None:
            allocations.record_allocation(created)
        return created
    raise RegisterError(f"could not register node: {last_error}")


def _keep_netinfo(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    if "NetInfo" not in new and "NetInfo" in old:
        return {**new, "NetInfo": old["NetInfo"]}
    return new


async def check_auth_key(store: Store, text: str, now: datetime):
    """The PreAuthKey for `text` if it may register a new node, else RegisterError."""
    try:
        kind, prefix, secret = secrets.split_key(text)
    except ValueError:
        raise RegisterError("invalid authkey") from None
    if kind != "auth":
        raise RegisterError("invalid authkey")
    key = await store.get_preauth_key_by_prefix(prefix)
    if key is None or not secrets.verify(secret, key.key_hash):
        raise RegisterError("invalid authkey")
    if key.is_expired(now):
        raise RegisterError("authkey expired")
    if key.used and not key.reusable:
        raise RegisterError("authkey already used")
    return key


async def complete_registration(
    store: Store, reg_id: str, user: User, now: datetime, policy: RegistrationPolicy, *,
    register_method: str = "cli",
) -> Node:
    """Approve a pending interactive login for `user` (the CLI's `nodes register`, or an OIDC
    login: `register_method` "oidc")."""
    reg = await store.get_pending_registration(reg_id)
    if reg is None or reg.created_at + PENDING_LIFETIME <= now:
        raise NotFound(f'registration "{reg_id}" not found or expired')
    if reg.node_id is not None:
        raise Conflict(f'registration "{reg_id}" was already approved')
    node = await create_or_update_node(
        store,
        policy,
        machine_key=reg.machine_key,
        node_key=reg.node_key,
        user=user,
        hostinfo=reg.hostinfo,
        now=now,
        register_method=register_method,
    )
    await store.complete_pending_registration(reg_id, node.id, user.id)
    return node


def _check_requested_tags(coordinator, user: User, key_tags, hostinfo: dict[str, Any]) -> None:
    """`tailscale up --advertise-tags` (Hostinfo.RequestTags) with an untagged key: the user must own
    every tag under the policy's tagOwners (PolicyHost.tags_not_permitted), else the registration
    is refused with Tailscale's wording. Permitted tags are applied by the coordinator once the
    node exists (policywrites.after_node_change)."""
    requested = hostinfo.get("RequestTags") if isinstance(hostinfo, dict) else None
    policy = getattr(coordinator, "policy", None)
    if not requested or key_tags or policy is None or not isinstance(requested, list):
        return
    bad = policy.tags_not_permitted(user.id, [str(t) for t in requested])
    if bad:
        raise RegisterError(f"requested tags [{', '.join(bad)}] are invalid or not permitted")


async def handle(
    store: Store,
    policy: RegistrationPolicy,
    req: RegisterRequest,
    machine_key: bytes,
    now: datetime,
    wait_for_approval,
    allocations: "Allocations | None" = None,
    *,
    source: str = "",
) -> dict[str, Any]:
    """Answer one RegisterRequest. `wait_for_approval(reg_id, deadline)` waits until the pending
    registration `reg_id` is completed (True) or the deadline passes (False). `source` (see
    `source_of`) is what a new pending login is counted against."""
    if req.expiry is not None and req.expiry <= now:
        method = "logout"
    else:
        method = "authkey" if req.auth_key is not None else "interactive"
    try:
        _check_sizes(req)
        answer = await _handle(store, policy, req, machine_key, now, wait_for_approval, allocations, source)
    except RegisterError as exc:
        answer = error(str(exc))
    except StoreError as exc:
        answer = error(str(exc))
    count_registration(method, answer)
    return answer


async def _handle(store, policy, req, machine_key, now, wait_for_approval, allocations, source) -> dict[str, Any]:
    node = await store.get_node_by_node_key(req.node_key)
    if node is not None and not hmac.compare_digest(node.machine_key, machine_key):
        raise RegisterError("node key is registered to another machine")

    # Logout: an expiry in the past. Checked first: the client may still send its auth key.
    if req.expiry is not None and req.expiry <= now:
        if node is not None:
            if node.ephemeral:
                await store.delete_node(node.id)
            else:
                await store.update_node(node.id, expiry=now)
        return {"NodeKeyExpired": False, "MachineAuthorized": False, "AuthURL": ""}

    # A known node (restart, refresh): answer without judging the auth key again.
    if node is not None:
        if node.is_expired(now):
            if req.auth_key is None and not req.followup:
                return {"NodeKeyExpired": True, "MachineAuthorized": False, "AuthURL": ""}
        else:
            return success(node, await store.get_user(node.user_id))

    # Key rotation from a node this machine owns: the new key still needs authentication below.
    if req.old_node_key is not None and node is None:
        old = await store.get_node_by_node_key(req.old_node_key)
        if old is not None and not hmac.compare_digest(old.machine_key, machine_key):
            raise RegisterError("old node key is registered to another machine")

    if req.auth_key is not None:
        key = await check_auth_key(store, req.auth_key, now)
        user = await store.get_user(key.user_id)
        if user is None:
            raise RegisterError("authkey's user no longer exists")
        _check_requested_tags(allocations, user, key.tags, req.hostinfo)
        node = await create_or_update_node(
            store,
            policy,
            machine_key=machine_key,
            node_key=req.node_key,
            user=user,
            hostinfo=req.hostinfo,
            now=now,
            ephemeral=key.ephemeral,
            tags=tuple(key.tags),
            auth_key_id=key.id,
            register_method="authkey",
            allocations=allocations,
        )
        return success(node, user)

    if req.followup:
        reg_id = registration_id_from_url(req.followup)
        reg = await store.get_pending_registration(reg_id) if reg_id else None
        if reg is not None and hmac.compare_digest(reg.machine_key, machine_key):
            deadline = reg.created_at + PENDING_LIFETIME
            if await wait_for_approval(reg.id, deadline):
                done = await store.get_pending_registration(reg.id)
                if done is not None and done.node_id is not None:
                    approved = await store.get_node(done.node_id)
                    await store.delete_pending_registration(reg.id)
                    if approved is not None:
                        return success(approved, await store.get_user(approved.user_id))
            await store.delete_pending_registration(reg.id)
        # unknown, expired or foreign: start over with a fresh URL below

    reg = PendingRegistration(
        id=new_registration_id(),
        machine_key=machine_key,
        node_key=req.node_key,
        hostinfo=req.hostinfo,
        expiry=req.expiry,
        created_at=now,
        source=source,
    )
    await store.put_pending_registration(reg)
    return {"AuthURL": f"{policy.server_url.rstrip('/')}/register/{reg.id}"}
