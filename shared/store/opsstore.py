"""The Store methods written once for both stores, on top of the operations in shared/store/ops/.

A store implementation subclasses OpsStore and provides `_read(op, *args)` and `_write(op, *args)`
(run the generator `op(*args)`; a write in one transaction together with its change rows) plus
open, close and subscribe. A method adds to its operation only what callers should not have to
pass (the current time, the limits a store was opened with) and makes given times UTC.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from trioscale.shared.model import (
    ApiKey,
    Change,
    DerpRelay,
    Node,
    OAuthClient,
    PendingRegistration,
    PolicyVersion,
    Presence,
    PreAuthKey,
    Share,
    SSHCheck,
    User,
    utcnow,
)
from trioscale.shared.store import base
from trioscale.shared.store.base import Store
from trioscale.shared.store.ops.api_keys import (
    op_create_api_key,
    op_delete_api_key,
    op_expire_api_key,
    op_get_api_key,
    op_get_api_key_by_prefix,
    op_list_api_keys,
    op_touch_api_key,
)
from trioscale.shared.store.ops.changes import (
    op_changes_since,
    op_drop_position,
    op_latest_seq,
    op_list_positions,
    op_record_position,
    op_trim_changes,
)
from trioscale.shared.store.ops.dns_txt import (
    op_get_dns_txt,
    op_list_dns_txt,
    op_purge_dns_txt,
    op_set_dns_txt,
)
from trioscale.shared.store.ops.imports import op_import_record
from trioscale.shared.store.ops.nodes import (
    op_create_node,
    op_delete_node,
    op_get_node,
    op_get_node_by,
    op_list_nodes,
    op_node_holdings,
    op_nodes_holding,
    op_update_node,
)
from trioscale.shared.store.ops.oauth_clients import (
    op_create_oauth_client,
    op_delete_oauth_client,
    op_get_oauth_client,
    op_get_oauth_client_by_client_id,
    op_issue_access_token,
    op_list_oauth_clients,
)
from trioscale.shared.store.ops.policy import (
    op_get_policy,
    op_set_policy,
)
from trioscale.shared.store.ops.preauth_keys import (
    op_create_preauth_key,
    op_delete_preauth_key,
    op_expire_preauth_key,
    op_get_preauth_key,
    op_get_preauth_key_by_prefix,
    op_list_preauth_keys,
)
from trioscale.shared.store.ops.presence import (
    op_list_presence,
    op_reap_presence,
    op_renew_presence,
    op_update_presence,
)
from trioscale.shared.store.ops.registrations import (
    op_complete_pending_registration,
    op_delete_pending_registration,
    op_delete_pending_registrations_before,
    op_get_pending_registration,
    op_list_pending_registrations,
    op_put_pending_registration,
)
from trioscale.shared.store.ops.relays import (
    op_delete_relay,
    op_list_relays,
    op_upsert_relay,
)
from trioscale.shared.store.ops.settings import op_get_setting, op_set_setting
from trioscale.shared.store.ops.shares import (
    op_add_share,
    op_list_shares,
    op_remove_share,
)
from trioscale.shared.store.ops.ssh_checks import (
    op_create_ssh_check,
    op_decide_ssh_check,
    op_get_ssh_check,
    op_purge_ssh_checks,
)
from trioscale.shared.store.ops.users import (
    op_create_user,
    op_delete_user,
    op_get_user,
    op_get_user_by_name,
    op_get_user_by_provider_id,
    op_list_users,
    op_login_user,
    op_rename_user,
)
from trioscale.shared.store.rows import utc


class OpsStore(Store):
    """The Store contract's data methods, each one operation run by `_read` or `_write`."""

    #: how many pending registrations to keep; None means base.MAX_PENDING_REGISTRATIONS (read at
    #: call time, so tests may monkeypatch it)
    max_pending_registrations: int | None = None
    #: pending registrations older than this are dropped before counting (register.py's lifetime)
    pending_lifetime = timedelta(minutes=15)
    #: how long a subscriber's position holds the log back without being renewed (seconds)
    subscriber_lease: float = base.SUBSCRIBER_LEASE_SECONDS
    #: an explicit id leaves the table's id sequence behind (PostgreSQL identity columns; SQLite's
    #: AUTOINCREMENT follows it): import_record moves it up
    explicit_ids_need_sequence_sync = False

    @abc.abstractmethod
    async def _read(self, op, *args: Any) -> Any:
        """Run the operation generator `op(*args)` (a store may call `op` again to retry)."""

    @abc.abstractmethod
    async def _write(self, op, *args: Any) -> Any:
        """Run `op(*args)` in one write transaction, with its change rows."""

    async def _lookup(self, op, *args: Any) -> Any:
        """A read of a few rows by key, or a bounded batch of the change log: work small enough
        that a store may do it without a round trip to a worker. By default, `_read`."""
        return await self._read(op, *args)

    def _pending_limit(self) -> int:
        if self.max_pending_registrations is not None:
            return int(self.max_pending_registrations)
        return int(base.MAX_PENDING_REGISTRATIONS)

    # users
    async def create_user(
        self, name: str, display_name: str = "", email: str = "", *,
        provider: str = "", provider_id: str = "", profile_pic_url: str = "",
    ) -> User:
        identity = (provider, provider_id, profile_pic_url)
        return await self._write(op_create_user, name, display_name, email, utcnow(), identity)

    async def get_user(self, user_id: int) -> User | None:
        return await self._lookup(op_get_user, user_id)

    async def get_user_by_name(self, name: str) -> User | None:
        return await self._lookup(op_get_user_by_name, name)

    async def list_users(self) -> list[User]:
        return await self._read(op_list_users)

    async def rename_user(self, user_id: int, new_name: str) -> User:
        return await self._write(op_rename_user, user_id, new_name)

    async def get_user_by_provider_id(self, provider_id: str) -> User | None:
        return await self._lookup(op_get_user_by_provider_id, provider_id)

    async def login_user(
        self, name: str, *, provider: str, provider_id: str, display_name: str = "", email: str = "",
        profile_pic_url: str = "",
    ) -> tuple[User, bool]:
        return await self._write(op_login_user, name, display_name, email, provider, provider_id,
                                 profile_pic_url, utcnow())

    async def delete_user(self, user_id: int) -> None:
        await self._write(op_delete_user, user_id)

    # nodes
    async def create_node(self, node: Node, spare_addresses: Sequence[tuple[str | None, str | None]] = ()) -> Node:
        return await self._write(op_create_node, node, utcnow(), tuple(spare_addresses))

    async def get_node(self, node_id: int) -> Node | None:
        return await self._lookup(op_get_node, node_id)

    async def get_node_by_machine_key(self, machine_key: bytes) -> Node | None:
        return await self._lookup(op_get_node_by, "machine_key", machine_key)

    async def get_node_by_node_key(self, node_key: bytes) -> Node | None:
        return await self._lookup(op_get_node_by, "node_key", node_key)

    async def list_nodes(self, user_id: int | None = None) -> list[Node]:
        return await self._read(op_list_nodes, user_id)

    async def node_holdings(self) -> tuple[set[str], set[str]]:
        return await self._read(op_node_holdings)

    async def nodes_holding(self, ipv4: str | None, ipv6: str | None, given_name: str) -> list[Node]:
        return await self._lookup(op_nodes_holding, ipv4, ipv6, given_name)

    async def update_node(self, node_id: int, **fields: Any) -> Node:
        return await self._write(op_update_node, node_id, fields)

    async def delete_node(self, node_id: int) -> None:
        await self._write(op_delete_node, node_id)

    # pre-auth keys
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
    ) -> PreAuthKey:
        return await self._write(
            op_create_preauth_key, user_id, prefix, key_hash, reusable, ephemeral, tags, expiration, utcnow(),
            description,
        )

    async def get_preauth_key(self, key_id: int) -> PreAuthKey | None:
        return await self._lookup(op_get_preauth_key, key_id)

    async def get_preauth_key_by_prefix(self, prefix: str) -> PreAuthKey | None:
        return await self._lookup(op_get_preauth_key_by_prefix, prefix)

    async def list_preauth_keys(self, user_id: int | None = None) -> list[PreAuthKey]:
        return await self._read(op_list_preauth_keys, user_id)

    async def expire_preauth_key(self, key_id: int, now: datetime) -> PreAuthKey:
        return await self._write(op_expire_preauth_key, key_id, utc(now))

    async def delete_preauth_key(self, key_id: int) -> None:
        await self._write(op_delete_preauth_key, key_id)

    # API keys
    async def import_record(self, record: Any) -> Any:
        return await self._write(op_import_record, record, self.explicit_ids_need_sequence_sync)

    async def create_api_key(self, prefix: str, key_hash: bytes, expiration: datetime | None = None, *,
                             scopes: Sequence[str] = ()) -> ApiKey:
        return await self._write(op_create_api_key, prefix, key_hash, expiration, utcnow(), scopes)

    async def get_api_key(self, key_id: int) -> ApiKey | None:
        return await self._lookup(op_get_api_key, key_id)

    async def get_api_key_by_prefix(self, prefix: str) -> ApiKey | None:
        return await self._lookup(op_get_api_key_by_prefix, prefix)

    async def list_api_keys(self) -> list[ApiKey]:
        return await self._read(op_list_api_keys)

    async def expire_api_key(self, key_id: int, now: datetime) -> ApiKey:
        return await self._write(op_expire_api_key, key_id, utc(now))

    async def delete_api_key(self, key_id: int) -> None:
        await self._write(op_delete_api_key, key_id)

    async def touch_api_key(self, key_id: int, now: datetime) -> None:
        await self._write(op_touch_api_key, key_id, utc(now))

    # -- OAuth clients and their access tokens --------------------------------------------------
    async def create_oauth_client(self, client_id: str, secret_hash: bytes, *, description: str = "",
                                  scopes: Sequence[str] = (), tags: Sequence[str] = ()) -> OAuthClient:
        return await self._write(op_create_oauth_client, client_id, secret_hash, description, scopes, tags, utcnow())

    async def get_oauth_client(self, key_id: int) -> OAuthClient | None:
        return await self._lookup(op_get_oauth_client, key_id)

    async def get_oauth_client_by_client_id(self, client_id: str) -> OAuthClient | None:
        return await self._lookup(op_get_oauth_client_by_client_id, client_id)

    async def list_oauth_clients(self) -> list[OAuthClient]:
        return await self._read(op_list_oauth_clients)

    async def delete_oauth_client(self, key_id: int) -> None:
        await self._write(op_delete_oauth_client, key_id)

    async def issue_access_token(self, client_key_id: int, prefix: str, key_hash: bytes, *,
                                 scopes: Sequence[str], tags: Sequence[str], expiration: datetime) -> ApiKey:
        return await self._write(op_issue_access_token, client_key_id, prefix, key_hash, tuple(scopes), tuple(tags),
                                 utc(expiration), utcnow())

    # -- tailnet settings -------------------------------------------------------------------------
    async def get_setting(self, name: str) -> Any:
        return await self._lookup(op_get_setting, name)

    async def set_setting(self, name: str, value: Any) -> None:
        await self._write(op_set_setting, name, value)

    # policy
    async def get_policy(self) -> PolicyVersion | None:
        return await self._read(op_get_policy)

    async def set_policy(self, text: str) -> PolicyVersion:
        return await self._write(op_set_policy, text, utcnow())

    # pending registrations
    async def put_pending_registration(self, reg: PendingRegistration) -> PendingRegistration:
        return await self._write(
            op_put_pending_registration,
            reg,
            self._pending_limit(),
            int(base.MAX_PENDING_BYTES),
            int(base.MAX_PENDING_PER_SOURCE),
            utc(reg.created_at) - self.pending_lifetime,
        )

    async def get_pending_registration(self, reg_id: str) -> PendingRegistration | None:
        return await self._lookup(op_get_pending_registration, reg_id)

    async def list_pending_registrations(self) -> list[PendingRegistration]:
        return await self._read(op_list_pending_registrations)

    async def complete_pending_registration(self, reg_id: str, node_id: int, user_id: int) -> PendingRegistration:
        return await self._write(op_complete_pending_registration, reg_id, node_id, user_id)

    async def delete_pending_registration(self, reg_id: str) -> None:
        await self._write(op_delete_pending_registration, reg_id)

    async def delete_pending_registrations_before(self, before: datetime) -> int:
        return await self._write(op_delete_pending_registrations_before, before)

    # relays
    async def upsert_relay(self, relay: DerpRelay) -> DerpRelay:
        return await self._write(op_upsert_relay, relay)

    async def list_relays(self) -> list[DerpRelay]:
        return await self._read(op_list_relays)

    async def delete_relay(self, region_id: int, name: str) -> None:
        await self._write(op_delete_relay, region_id, name)

    # shares
    async def add_share(self, node_id: int, user_id: int) -> Share:
        return await self._write(op_add_share, node_id, user_id, utcnow())

    async def remove_share(self, node_id: int, user_id: int) -> None:
        await self._write(op_remove_share, node_id, user_id)

    async def list_shares(self, node_id: int | None = None) -> list[Share]:
        return await self._read(op_list_shares, node_id)

    # presence
    async def update_presence(
        self,
        replica_id: str,
        add: Sequence[int] = (),
        remove: Sequence[int] = (),
        *,
        lease_expires: datetime,
        now: datetime | None = None,
    ) -> None:
        await self._write(op_update_presence, replica_id, tuple(add), tuple(remove), lease_expires, now or utcnow())

    async def renew_presence(
        self, replica_id: str, node_ids: Sequence[int], *, lease_expires: datetime, now: datetime | None = None
    ) -> None:
        await self._write(op_renew_presence, replica_id, tuple(node_ids), lease_expires, now or utcnow())

    async def reap_presence(self, now: datetime) -> list[int]:
        return await self._write(op_reap_presence, now)

    async def list_presence(self) -> list[Presence]:
        return await self._read(op_list_presence)

    # TXT records
    async def set_dns_txt(self, name: str, values: Sequence[str], expires_at: datetime) -> None:
        await self._write(op_set_dns_txt, name, values, expires_at)

    async def get_dns_txt(self, name: str, now: datetime) -> tuple[tuple[str, ...], datetime] | None:
        return await self._lookup(op_get_dns_txt, name, now)

    async def list_dns_txt(self, now: datetime) -> list[tuple[str, tuple[str, ...], datetime]]:
        return await self._read(op_list_dns_txt, now)

    async def purge_dns_txt(self, now: datetime) -> int:
        return await self._write(op_purge_dns_txt, now)

    # SSH check mode
    async def create_ssh_check(self, check: SSHCheck) -> SSHCheck:
        return await self._write(op_create_ssh_check, check)

    async def get_ssh_check(self, check_id: str, now: datetime) -> SSHCheck | None:
        return await self._lookup(op_get_ssh_check, check_id, now)

    async def decide_ssh_check(self, check_id: str, decision: str, now: datetime) -> SSHCheck:
        return await self._write(op_decide_ssh_check, check_id, decision, now)

    async def purge_ssh_checks(self, now: datetime) -> int:
        return await self._write(op_purge_ssh_checks, now)

    # change log
    async def latest_seq(self) -> int:
        return await self._lookup(op_latest_seq)

    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        return await self._lookup(op_changes_since, seq, limit)

    async def record_position(self, subscriber_id: str, seq: int, lease_expires: datetime) -> None:
        await self._write(op_record_position, subscriber_id, seq, lease_expires)

    async def drop_position(self, subscriber_id: str) -> None:
        await self._write(op_drop_position, subscriber_id)

    async def list_positions(self, now: datetime) -> list[tuple[str, int, datetime]]:
        return await self._read(op_list_positions, now)

    async def trim_changes(self, now: datetime, max_rows: int = 10000) -> int:
        return await self._write(op_trim_changes, now, max_rows)
