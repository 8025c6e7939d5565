"""The Store contract: one async interface, two implementations (SQLite, PostgreSQL).

Rules every implementation keeps (the contract tests in tests/store/ check them on both):
- Every write and its change-log row commit in one transaction; the change log's `seq` grows
  strictly and has no gaps visible to readers in commit order.
- After a commit, subscribers are woken (in-process for SQLite, NOTIFY for PostgreSQL). A wake-up
  carries no data: subscribers read the log from their last seq, so a lost wake-up or a lost
  connection never loses a change.
- Lookups that find nothing return None; writes that break a rule raise a StoreError subclass with
  a message fit for a user (the CLI prints it as is).
- Returned records are shared.model dataclasses; times are aware UTC datetimes.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar

from trioscale.shared.model import (
    ApiKey,
    OAuthClient,
    Change,
    DerpRelay,
    Node,
    PendingRegistration,
    PolicyVersion,
    Presence,
    PreAuthKey,
    Share,
    SSHCheck,
    User,
)
from trioscale.shared.store.rows import node_from_row

#: the most pending interactive registrations kept; when full, new ones are refused (never
#: evicting other sources' logins, so a flood cannot push out real ones)
MAX_PENDING_REGISTRATIONS = 1024
#: total bytes of client-supplied data (Hostinfo JSON) the pending registrations may hold
MAX_PENDING_BYTES = 16 << 20
#: pending registrations one source address (an IPv6 /64) may hold; its oldest goes first
MAX_PENDING_PER_SOURCE = 64
#: SSH check-mode sessions waiting for a decision, at most (each is a held SSH login)
MAX_PENDING_SSH_CHECKS = 1024
#: a Hostinfo larger than this as compact JSON is refused, never stored. Real clients send a few
#: KiB (tailcfg.Hostinfo: OS, versions, a few dozen services, routes, NetInfo).
MAX_HOSTINFO_BYTES = 64 << 10
#: endpoints a node may report, and the longest one ("[v6 address%zone]:port" fits easily)
MAX_ENDPOINTS = 64
MAX_ENDPOINT_LEN = 64
#: the longest hostname kept (a DNS name's limit)
MAX_HOSTNAME_LEN = 255
#: how long a change-log subscriber's recorded position holds the log back without renewal
SUBSCRIBER_LEASE_SECONDS = 300.0

#: a record import_record inserts and returns
R = TypeVar("R")


class StoreError(Exception):
    """A write broke a rule of the data (not a bug, not an outage)."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """A unique name, key or address is taken, or a record is still in use."""


class TooLarge(StoreError):
    """A client-supplied value is over its size cap; nothing was stored."""


class BadValue(TooLarge):
    """A client-supplied value no store can keep as it is (a NUL character, which PostgreSQL's
    text and jsonb refuse); nothing was stored. A TooLarge, so callers treat both alike."""


class StoreFull(StoreError):
    """A bounded table (pending registrations) is full; try again later."""


class ChangesTrimmed(StoreError):
    """The change log was trimmed past a subscriber's position (its lease ran out, or it was
    down): the changes it missed are gone. Reload the state from the store, then subscribe again."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer trioscale than this one."""


class StoreUnavailable(Exception):
    """The database cannot be reached (an outage, not a rule violation; deliberately not a
    StoreError). Raised instead of driver exceptions so callers never need to know the driver.
    A write that fails this way did not commit, except when the connection broke during COMMIT
    itself; the message says so then."""


class Store(abc.ABC):
    """Async persistence for the tailnet. Open with `await Store.open(...)`, close with `aclose()`."""

    # -- lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def aclose(self) -> None: ...

    # -- users ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_user(
        self, name: str, display_name: str = "", email: str = "", *,
        provider: str = "", provider_id: str = "", profile_pic_url: str = "",
    ) -> User:
        """Conflict if the name, or a non-empty provider_id, is taken."""

    @abc.abstractmethod
    async def get_user(self, user_id: int) -> User | None: ...

    @abc.abstractmethod
    async def get_user_by_name(self, name: str) -> User | None: ...

    @abc.abstractmethod
    async def list_users(self) -> list[User]: ...

    @abc.abstractmethod
    async def rename_user(self, user_id: int, new_name: str) -> User:
        """NotFound, or Conflict if the new name is taken."""

    @abc.abstractmethod
    async def get_user_by_provider_id(self, provider_id: str) -> User | None:
        """The user a login provider knows by `provider_id` (OIDC: issuer/subject), or None."""

    @abc.abstractmethod
    async def login_user(
        self, name: str, *, provider: str, provider_id: str, display_name: str = "", email: str = "",
        profile_pic_url: str = "",
    ) -> tuple[User, bool]:
        """A login through `provider`: the user known by `provider_id` gets the profile given (its
        name only when no other user has it), or is created (the first free name of `name`,
        `name-2`, …). One transaction. Returns (user, created)."""

    @abc.abstractmethod
    async def delete_user(self, user_id: int) -> None:
        """NotFound, or Conflict while the user still owns nodes. Removes the user's keys and shares."""

    # -- nodes ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_node(self, node: Node, spare_addresses: Sequence[tuple[str | None, str | None]] = ()) -> Node:
        """Insert `node` (its `id` is ignored; the store assigns one). Conflict if the machine key,
        node key, given_name, ipv4 or ipv6 is taken. If another node holds `node`'s ipv4 or ipv6,
        the first pair of `spare_addresses` ((ipv4, ipv6), in order) that no node holds is used
        instead; the returned node has the addresses it got. If `node.auth_key_id` names a
        single-use key, that key is marked used in the same transaction."""

    @abc.abstractmethod
    async def get_node(self, node_id: int) -> Node | None: ...

    @abc.abstractmethod
    async def get_node_by_machine_key(self, machine_key: bytes) -> Node | None: ...

    @abc.abstractmethod
    async def get_node_by_node_key(self, node_key: bytes) -> Node | None: ...

    @abc.abstractmethod
    async def list_nodes(self, user_id: int | None = None) -> list[Node]: ...

    @abc.abstractmethod
    async def node_holdings(self) -> tuple[set[str], set[str]]:
        """The addresses (IPv4 and IPv6) and the names that nodes hold."""

    @abc.abstractmethod
    async def nodes_holding(self, ipv4: str | None, ipv6: str | None, given_name: str) -> list[Node]:
        """The nodes that hold `ipv4`, `ipv6` or `given_name` (None matches nothing), by id."""

    @abc.abstractmethod
    async def update_node(self, node_id: int, **fields: Any) -> Node:
        """Set the named fields (names of Node attributes other than id/machine_key). NotFound,
        Conflict as for create. The change's data lists the changed field names, and carries the
        node as committed (`carried_node`), as node.created's does. A no-op update
        (values equal to the stored ones) writes nothing and records no change.

        Naming `auth_key_id` is a registration with that key: like create_node, a single-use key
        must be unused (Conflict otherwise) and is marked used in the same transaction, even when
        the node already named it. TooLarge for a hostinfo/endpoints/hostname over its cap."""

    @abc.abstractmethod
    async def delete_node(self, node_id: int) -> None:
        """NotFound if absent. Frees its addresses and name; removes its shares."""

    # -- pre-auth keys -------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_preauth_key(
        self,
        user_id: int,
        prefix: str,
        key_hash: bytes,
        *,
        reusable: bool = False,
        ephemeral: bool = False,
        tags: Sequence[str] = (),
        expiration: datetime | None = None,
        description: str = "",
    ) -> PreAuthKey: ...

    @abc.abstractmethod
    async def get_preauth_key(self, key_id: int) -> PreAuthKey | None: ...

    @abc.abstractmethod
    async def get_preauth_key_by_prefix(self, prefix: str) -> PreAuthKey | None: ...

    @abc.abstractmethod
    async def list_preauth_keys(self, user_id: int | None = None) -> list[PreAuthKey]: ...

    @abc.abstractmethod
    async def expire_preauth_key(self, key_id: int, now: datetime) -> PreAuthKey:
        """Set the expiration to `now` (if it is later or unset). NotFound."""

    @abc.abstractmethod
    async def delete_preauth_key(self, key_id: int) -> None:
        """NotFound if absent. Nodes registered with the key are left exactly as they are: they
        keep working, and their `auth_key_id` still says which key registered them (ids are
        never handed out again, so it cannot come to name another key). Only a new registration
        with the key is refused from then on."""

    # -- records brought from another server ---------------------------------------------------
    @abc.abstractmethod
    async def import_record(self, record: R) -> R:
        """Insert a User, Node, PreAuthKey or ApiKey brought from another server (Headscale) as it
        was: its id (Conflict if taken) and times (created_at; a key's used, expiration and
        last_seen). Otherwise checked as the create_ methods check; later ids continue above it."""

    # -- API keys ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_api_key(
        self, prefix: str, key_hash: bytes, expiration: datetime | None = None, *, scopes: Sequence[str] = ()
    ) -> ApiKey:
        """A key with no `scopes` may do everything; with scopes, only what they allow (API v2)."""

    @abc.abstractmethod
    async def get_api_key(self, key_id: int) -> ApiKey | None: ...

    @abc.abstractmethod
    async def get_api_key_by_prefix(self, prefix: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_api_keys(self) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def expire_api_key(self, key_id: int, now: datetime) -> ApiKey: ...

    @abc.abstractmethod
    async def delete_api_key(self, key_id: int) -> None:
        """NotFound if absent. Like an expired key, a deleted one authenticates nothing from the
        commit on (the admin API looks every request's key up afresh)."""

    @abc.abstractmethod
    async def touch_api_key(self, key_id: int, now: datetime) -> None:
        """Record last use; records no change-log row. An absent key is ignored."""

    # -- OAuth clients and their access tokens (API v2) -----------------------------------------
    @abc.abstractmethod
    async def create_oauth_client(
        self, client_id: str, secret_hash: bytes, *, description: str = "", scopes: Sequence[str] = (),
        tags: Sequence[str] = (),
    ) -> OAuthClient:
        """Conflict if `client_id` is taken."""

    @abc.abstractmethod
    async def get_oauth_client(self, key_id: int) -> OAuthClient | None: ...

    @abc.abstractmethod
    async def get_oauth_client_by_client_id(self, client_id: str) -> OAuthClient | None: ...

    @abc.abstractmethod
    async def list_oauth_clients(self) -> list[OAuthClient]: ...

    @abc.abstractmethod
    async def delete_oauth_client(self, key_id: int) -> None:
        """NotFound if absent. Its access tokens go with it (they authenticate nothing from the commit on)."""

    @abc.abstractmethod
    async def issue_access_token(
        self, client_key_id: int, prefix: str, key_hash: bytes, *, scopes: Sequence[str], tags: Sequence[str],
        expiration: datetime,
    ) -> ApiKey:
        """An API key for the client (NotFound if it is gone) with these (non-empty) scopes; the
        client's expired tokens are dropped and at most MAX_TOKENS_PER_CLIENT stay live (the oldest go)."""

    # -- tailnet settings set through the API --------------------------------------------------
    @abc.abstractmethod
    async def get_setting(self, name: str) -> Any:
        """The JSON value stored under `name`, or None."""

    @abc.abstractmethod
    async def set_setting(self, name: str, value: Any) -> None:
        """Replace the value under `name` (JSON-able); records `settings.set`."""

    # -- policy (versioned) --------------------------------------------------------------------
    @abc.abstractmethod
    async def get_policy(self) -> PolicyVersion | None:
        """The newest version, or None if none was ever set."""

    @abc.abstractmethod
    async def set_policy(self, text: str) -> PolicyVersion:
        """Store a new version (previous versions stay for history)."""

    # -- pending interactive registrations (bounded) -------------------------------------------
    @abc.abstractmethod
    async def put_pending_registration(self, reg: PendingRegistration) -> PendingRegistration:
        """Insert or replace by id. One per machine key (a machine's older, unapproved ones are
        dropped), at most MAX_PENDING_PER_SOURCE per `reg.source` (that source's oldest go), and
        at most MAX_PENDING_REGISTRATIONS / MAX_PENDING_BYTES in all: when full (after dropping
        the expired ones, older than `pending_lifetime`), StoreFull and nothing is stored.
        TooLarge for a hostinfo over MAX_HOSTINFO_BYTES."""

    @abc.abstractmethod
    async def get_pending_registration(self, reg_id: str) -> PendingRegistration | None: ...

    @abc.abstractmethod
    async def list_pending_registrations(self) -> list[PendingRegistration]:
        """The logins still waiting for approval (not completed), oldest first."""

    @abc.abstractmethod
    async def complete_pending_registration(
        self, reg_id: str, node_id: int, user_id: int
    ) -> PendingRegistration:
        """Mark approved (sets node_id and user_id). NotFound."""

    @abc.abstractmethod
    async def delete_pending_registration(self, reg_id: str) -> None:
        """Idempotent: deleting an absent (expired, dropped) registration is not an error and
        records no change."""

    @abc.abstractmethod
    async def delete_pending_registrations_before(self, before: datetime) -> int:
        """Drop registrations created before `before`; returns how many."""

    # -- DERP relays (self-registered, heartbeat) ----------------------------------------------
    @abc.abstractmethod
    async def upsert_relay(self, relay: DerpRelay) -> DerpRelay:
        """Key: (region_id, name). Records a change only when something other than
        heartbeat_at changed, or the relay is new."""

    @abc.abstractmethod
    async def list_relays(self) -> list[DerpRelay]: ...

    @abc.abstractmethod
    async def delete_relay(self, region_id: int, name: str) -> None:
        """NotFound if absent."""

    # -- sharing between users -----------------------------------------------------------------
    @abc.abstractmethod
    async def add_share(self, node_id: int, user_id: int) -> Share:
        """NotFound for an unknown node or user; Conflict if already shared or the user owns it."""

    @abc.abstractmethod
    async def remove_share(self, node_id: int, user_id: int) -> None:
        """NotFound if not shared."""

    @abc.abstractmethod
    async def list_shares(self, node_id: int | None = None) -> list[Share]: ...

    # -- presence of map sessions (per coordinator replica, with leases) ------------------------
    # A node is online while at least one presence row names it. Changes are recorded only on
    # transitions: "presence.online" when a node's first row appears, "presence.offline" (which
    # also sets the node's last_seen) when its last row goes. Renewing a lease records nothing.
    @abc.abstractmethod
    async def update_presence(
        self,
        replica_id: str,
        add: Sequence[int] = (),
        remove: Sequence[int] = (),
        *,
        lease_expires: datetime,
        now: datetime | None = None,
    ) -> None:
        """Replica `replica_id` now holds sessions of the nodes in `add` (insert, or renew to
        `lease_expires`) and no longer of those in `remove`. Unknown rows in `remove` are ignored."""

    @abc.abstractmethod
    async def renew_presence(
        self, replica_id: str, node_ids: Sequence[int], *, lease_expires: datetime, now: datetime | None = None
    ) -> None:
        """The heartbeat: replica `replica_id` holds exactly `node_ids`. Renews its rows to
        `lease_expires`, inserts missing ones (e.g. reaped while it was cut off) and deletes the
        rest; `[]` removes all of the replica's rows (clean shutdown)."""

    @abc.abstractmethod
    async def reap_presence(self, now: datetime) -> list[int]:
        """Delete every row whose lease ended before `now` (a dead replica's); returns the ids of
        the nodes that went offline."""

    @abc.abstractmethod
    async def list_presence(self) -> list[Presence]:
        """Every row, by node id then replica id."""

    # -- TXT records for ACME DNS-01 (/machine/set-dns) ---------------------------------------------
    # `name` is lower case without a trailing dot. Each set or clear records a "dnstxt.set" change
    # {"name"}, so DNS servers in other processes follow it.
    @abc.abstractmethod
    async def set_dns_txt(self, name: str, values: Sequence[str], expires_at: datetime) -> None:
        """Replace the TXT values of `name` (no values = remove it)."""

    @abc.abstractmethod
    async def get_dns_txt(self, name: str, now: datetime) -> tuple[tuple[str, ...], datetime] | None:
        """(values, expires_at) of `name`; None if it has none or they expired."""

    @abc.abstractmethod
    async def list_dns_txt(self, now: datetime) -> list[tuple[str, tuple[str, ...], datetime]]:
        """Every live (name, values, expires_at), by name."""

    @abc.abstractmethod
    async def purge_dns_txt(self, now: datetime) -> int:
        """Delete expired TXT records (no change rows: readers drop expired values themselves)."""

    # -- SSH check mode ------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_ssh_check(self, check: SSHCheck) -> SSHCheck:
        """Hold an SSH session for a decision; StoreFull past MAX_PENDING_SSH_CHECKS undecided."""

    @abc.abstractmethod
    async def get_ssh_check(self, check_id: str, now: datetime) -> SSHCheck | None:
        """The check, unless it is unknown or expired."""

    @abc.abstractmethod
    async def decide_ssh_check(self, check_id: str, decision: str, now: datetime) -> SSHCheck:
        """Record "approved" or "rejected" (change `sshcheck.decided`); NotFound if unknown or
        expired, Conflict if already decided otherwise."""

    @abc.abstractmethod
    async def purge_ssh_checks(self, now: datetime) -> int:
        """Delete expired checks (no change rows)."""

    # -- change log ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def latest_seq(self) -> int:
        """The seq of the newest change, 0 if none."""

    @abc.abstractmethod
    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        """Changes with seq > `seq`, oldest first, at most `limit`."""

    @abc.abstractmethod
    async def record_position(self, subscriber_id: str, seq: int, lease_expires: datetime) -> None:
        """Subscriber `subscriber_id` has read the log up to `seq`; hold the entries after it until
        `lease_expires` (renewed by every later call). Records no change."""

    @abc.abstractmethod
    async def drop_position(self, subscriber_id: str) -> None:
        """The subscriber is gone (clean shutdown); absent is not an error."""

    @abc.abstractmethod
    async def list_positions(self, now: datetime) -> list[tuple[str, int, datetime]]:
        """(subscriber_id, seq, lease_expires) of every live subscriber, by id."""

    @abc.abstractmethod
    async def trim_changes(self, now: datetime, max_rows: int = 10000) -> int:
        """Housekeeping: forget subscribers whose lease ended before `now`, then delete up to
        `max_rows` of the oldest changes every live subscriber has read (all but the newest if
        none is live: a new subscriber starts at the newest). The newest change is always kept, so
        seqs never go back. Returns how many were deleted."""

    @abc.abstractmethod
    def subscribe(self, since: int | None = None) -> AbstractAsyncContextManager[AsyncIterator[Change]]:
        """An async context manager yielding an async iterator over every change after `since`
        (default: the newest seq at subscription time), in order, forever. It waits on the
        wake-up, then reads the log; if the wake-up channel breaks (PostgreSQL connection lost) it
        reconnects and catches up from the log, so a subscriber never misses or repeats a change.

        The iterator records its position (`record_position`, renewed every lease/4 while it
        runs) so trimming keeps what it has not read; if the log was trimmed past it anyway, it
        raises ChangesTrimmed: reload from the store and subscribe again from the newest seq.

            async with store.subscribe() as changes:
                async for change in changes: ...
        """


def carried_node(change: Change) -> Node | None:
    """The node a node.created or node.updated change carries, as that change committed it, so
    that whoever applies the change in order need not read the node back. None when the change
    carries none (written before changes carried nodes, or by an import): read the store then."""
    row = (change.data or {}).get("node") if change.kind in ("node.created", "node.updated") else None
    return None if row is None else node_from_row(row)
