"""Writing an imported tailnet into trioscale's store, and the report of what happened.

Records are matched with what the store already holds by what identifies them to their owners
(users by name, nodes by machine key, keys by prefix, the policy by its text): a match is left as
it is, so a second run brings nothing and a run cut short can simply be run again. A tailnet that
holds anything the source does not (another user, node, key or policy) is refused unless the
caller forces it; then whatever collides (a name, an address) is skipped with the store's reason.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from trioscale.shared.domain.policy.parse import parse_policy
from trioscale.shared.model import ApiKey, Node, PreAuthKey, User, utcnow
from trioscale.shared.proto import keys
from trioscale.shared.store.base import Conflict, Store, StoreError

from .headscale_records import TAGGED_DEVICES, HeadscaleTailnet, HsNode

__all__ = ["Outcome", "ImportReport", "ImportRefused", "import_tailnet", "import_noise_key", "KINDS"]

KINDS = ("user", "node", "preauthkey", "apikey", "policy", "noisekey")
R = TypeVar("R", User, Node, PreAuthKey, ApiKey)
BROUGHT, PRESENT, SKIPPED = "brought", "already here", "skipped"


@dataclass(frozen=True)
class Outcome:
    kind: str
    name: str
    result: str  # BROUGHT | PRESENT | SKIPPED
    reason: str = ""


@dataclass
class ImportReport:
    source: str = ""
    version: str = ""
    dry_run: bool = False
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, kind: str, name: str, result: str, reason: str = "") -> None:
        self.outcomes.append(Outcome(kind, name, result, reason))

    def count(self, kind: str, result: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind and o.result == result)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "version": self.version,
            "dryRun": self.dry_run,
            "counts": {
                k: {r: self.count(k, r) for r in (BROUGHT, PRESENT, SKIPPED)}
                for k in KINDS
                if any(o.kind == k for o in self.outcomes)
            },
            "items": [asdict(o) for o in self.outcomes],
        }


class ImportRefused(Exception):
    """The import would write into a tailnet that already holds other records (without force)."""


async def import_tailnet(
    store: Store, tailnet: HeadscaleTailnet, report: ImportReport, *, force: bool = False, dry_run: bool = False,
    prefixes: tuple[str, ...] = (),
) -> ImportReport:
    """`prefixes`: the tailnet's address ranges here (prefixes.v4, prefixes.v6); a node brought
    with an address outside them is reported (its clients keep it, but the DNS server and new
    nodes follow the configured ranges)."""
    report.version = tailnet.version
    report.dry_run = dry_run
    for s in tailnet.skipped:
        report.add(s.kind, s.name, SKIPPED, s.reason)
    policy = _checked_policy(tailnet, report)
    await _refuse_foreign(store, tailnet, policy, force)
    run = _Run(store, report, dry_run)
    run.reserve(tailnet)
    run.prefixes = [ipaddress.ip_network(p) for p in prefixes if p]
    await run.users(tailnet)
    await run.preauth_keys(tailnet)
    await run.api_keys(tailnet)
    await run.nodes(tailnet)
    if policy is not None:
        await run.policy(policy)
    return report


def _checked_policy(tailnet: HeadscaleTailnet, report: ImportReport) -> str | None:
    if tailnet.policy is None:
        return None
    try:
        parse_policy(tailnet.policy)
    except Exception as exc:  # the engine's errors name the offending part; none may stop the rest
        report.add("policy", "policy", SKIPPED, f"trioscale does not accept it: {exc}")
        return None
    return tailnet.policy


async def _refuse_foreign(store: Store, tailnet: HeadscaleTailnet, policy: str | None, force: bool) -> None:
    if force:
        return
    names = {u.name for u in tailnet.users} | {TAGGED_DEVICES}
    machines = {n.node.machine_key for n in tailnet.nodes}
    prefixes = {k.prefix for k in tailnet.preauth_keys}
    api_prefixes = {k.prefix for k in tailnet.api_keys}
    other = {
        "user": sum(1 for u in await store.list_users() if u.name not in names),
        "node": sum(1 for n in await store.list_nodes() if n.machine_key not in machines),
        "pre-auth key": sum(1 for k in await store.list_preauth_keys() if k.prefix not in prefixes),
        "API key": sum(1 for k in await store.list_api_keys() if k.prefix not in api_prefixes),
    }
    current = await store.get_policy()
    if current is not None and current.text.strip() and current.text != policy:
        other["policy"] = 1
    found = [f"{n} {what}{'' if n == 1 or what == 'policy' else 's'}" for what, n in other.items() if n]
    if found:
        raise ImportRefused(
            "the tailnet is not empty (" + ", ".join(found) + " not from this Headscale database):"
            " import into a new database, or pass --force to add to it"
        )


class _Run:
    """One import: the maps from Headscale's ids to the store's, filled as records are written."""

    def __init__(self, store: Store, report: ImportReport, dry_run: bool):
        self.store, self.report, self.dry_run = store, report, dry_run
        self.user_ids: dict[int, int] = {}
        self.key_ids: dict[int, int] = {}
        self.fresh_keys: set[int] = set()  # Headscale ids of single-use keys created unused here
        self.keys_by_hs: dict[int, object] = {}
        self.skipped_users: set[int] = set()  # their nodes and keys stay behind too
        self.prefixes: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._tagged_owner: int | None = None
        self._placeholder = 0
        #: Headscale's ids, per kind: a record whose id is taken here gets none of them
        self.reserved: dict[type, set[int]] = {}

    def reserve(self, tailnet: HeadscaleTailnet) -> None:
        self.reserved = {
            User: {u.hs_id for u in tailnet.users},
            Node: {n.hs_id for n in tailnet.nodes},
            PreAuthKey: {k.hs_id for k in tailnet.preauth_keys},
            ApiKey: {k.hs_id for k in tailnet.api_keys},
        }

    def _fake_id(self) -> int:
        self._placeholder -= 1
        return self._placeholder

    async def tagged_owner(self) -> int:
        """The user that owns what Headscale kept without one (made on first need)."""
        if self._tagged_owner is None:
            user = await self.store.get_user_by_name(TAGGED_DEVICES)
            if user is not None:
                self._tagged_owner = user.id
            elif self.dry_run:
                self._tagged_owner = self._fake_id()
                self.report.add("user", TAGGED_DEVICES, BROUGHT, "owns tagged nodes and keys without a user")
            else:
                self._tagged_owner = (await self.store.create_user(TAGGED_DEVICES)).id
                self.report.add("user", TAGGED_DEVICES, BROUGHT, "owns tagged nodes and keys without a user")
        return self._tagged_owner

    async def owner(self, user_hs_id: int | None) -> int:
        if user_hs_id is not None and user_hs_id in self.user_ids:
            return self.user_ids[user_hs_id]
        return await self.tagged_owner()

    async def users(self, tailnet: HeadscaleTailnet) -> None:
        for u in tailnet.users:
            found = await self.store.get_user_by_name(u.name)
            if found is not None:
                self.user_ids[u.hs_id] = found.id
                self.report.add("user", u.name, PRESENT)
                continue
            if self.dry_run:
                self.user_ids[u.hs_id] = self._fake_id()
            else:
                record = User(id=u.hs_id, name=u.name, display_name=u.display_name, email=u.email,
                              created_at=u.created_at or utcnow(), provider=u.provider,
                              provider_id=u.provider_id, profile_pic_url=u.profile_pic_url)
                try:
                    created = await self._bring(record, self.store.get_user)
                except Conflict as exc:
                    self.skipped_users.add(u.hs_id)
                    self.report.add("user", u.name, SKIPPED, str(exc))
                    continue
                self.user_ids[u.hs_id] = created.id
            self.report.add("user", u.name, BROUGHT, _renumbered(u.hs_id, self.user_ids[u.hs_id]))

    async def preauth_keys(self, tailnet: HeadscaleTailnet) -> None:
        named = {n.auth_key_hs_id for n in tailnet.nodes if n.auth_key_hs_id is not None}
        for k in tailnet.preauth_keys:
            found = await self.store.get_preauth_key_by_prefix(k.prefix)
            if found is not None:
                self.key_ids[k.hs_id] = found.id
                self.keys_by_hs[k.hs_id] = k
                self.report.add("preauthkey", k.prefix, PRESENT)
                continue
            if k.user_hs_id in self.skipped_users:
                self.report.add("preauthkey", k.prefix, SKIPPED, "its user was skipped")
                continue
            if k.used and not k.reusable and k.hs_id not in named:
                self.report.add("preauthkey", k.prefix, SKIPPED, "single-use key already spent")
                continue
            owner = await self.owner(k.user_hs_id)
            if self.dry_run:
                self.key_ids[k.hs_id] = self._fake_id()
            else:
                # unused: a node Headscale registered with it spends it again here (_node)
                record = PreAuthKey(id=k.hs_id, prefix=k.prefix, key_hash=k.key_hash, user_id=owner,
                                    reusable=k.reusable, ephemeral=k.ephemeral, tags=k.tags,
                                    expiration=k.expiration, created_at=k.created_at or utcnow())
                created = await self._bring(record, self.store.get_preauth_key)
                self.key_ids[k.hs_id] = created.id
            self.keys_by_hs[k.hs_id] = k
            if not k.reusable:
                self.fresh_keys.add(k.hs_id)
            self.report.add("preauthkey", k.prefix, BROUGHT)

    async def api_keys(self, tailnet: HeadscaleTailnet) -> None:
        for k in tailnet.api_keys:
            if await self.store.get_api_key_by_prefix(k.prefix) is not None:
                self.report.add("apikey", k.prefix, PRESENT)
                continue
            if not self.dry_run:
                record = ApiKey(id=k.hs_id, prefix=k.prefix, key_hash=k.key_hash, expiration=k.expiration,
                                created_at=k.created_at or utcnow(), last_seen=k.last_seen)
                await self._bring(record, self.store.get_api_key)
            self.report.add("apikey", k.prefix, BROUGHT)

    async def nodes(self, tailnet: HeadscaleTailnet) -> None:
        for n in tailnet.nodes:
            name = n.node.given_name or n.node.hostname
            if await self.store.get_node_by_machine_key(n.node.machine_key) is not None:
                self.report.add("node", name, PRESENT)
                continue
            if n.user_hs_id in self.skipped_users:
                self.report.add("node", name, SKIPPED, "its user was skipped")
                continue
            node = await self._node(n)
            notes = [self._outside(node)]
            if not self.dry_run:
                try:
                    created = await self._bring(node.replace(id=n.hs_id), self.store.get_node)
                except (Conflict, StoreError) as exc:
                    self.report.add("node", name, SKIPPED, str(exc))
                    continue
                notes.append(_renumbered(n.hs_id, created.id))
            self.report.add("node", name, BROUGHT, "; ".join(note for note in notes if note))

    async def _bring(self, record: R, get_by_id: Callable[[int], Awaitable[object]]) -> R:
        """`record` with Headscale's id and times (scripts that stored ids keep working); when the
        id is taken here (an import with --force into a tailnet in use), the store's next id, which
        the report names."""
        if record.id > 0 and await get_by_id(record.id) is None:
            return await self.store.import_record(record)
        return await self.store.import_record(dataclasses.replace(record, id=await self._free_id(record, get_by_id)))

    async def _free_id(self, record: object, get_by_id: Callable[[int], Awaitable[object]]) -> int:
        listed = {
            User: self.store.list_users,
            Node: self.store.list_nodes,
            PreAuthKey: self.store.list_preauth_keys,
            ApiKey: self.store.list_api_keys,
        }[type(record)]
        candidate = max((r.id for r in await listed()), default=0) + 1
        reserved = self.reserved.get(type(record), set())
        # rows a list leaves out (OAuth tokens) are found by id
        while candidate in reserved or await get_by_id(candidate) is not None:
            candidate += 1
        return candidate

    def _outside(self, node: Node) -> str:
        if not self.prefixes:
            return ""
        outside = []
        for text in (node.ipv4, node.ipv6):
            if not text:
                continue
            addr = ipaddress.ip_address(text)
            if not any(addr.version == p.version and addr in p for p in self.prefixes):
                outside.append(text)
        if not outside:
            return ""
        return f"{' and '.join(outside)} outside the configured prefixes: set prefixes to Headscale's"

    async def _node(self, n: HsNode) -> Node:
        key = self.keys_by_hs.get(n.auth_key_hs_id) if n.auth_key_hs_id is not None else None
        user_hs_id = n.user_hs_id
        if user_hs_id is None and key is not None:
            user_hs_id = key.user_hs_id  # a tagged node: recorded as registered by its key's user
        auth_key_id = None
        if key is not None and (key.reusable or n.auth_key_hs_id in self.fresh_keys):
            auth_key_id = self.key_ids[n.auth_key_hs_id]
            # a single-use key is spent by the first node that names it, as it was in Headscale
            self.fresh_keys.discard(n.auth_key_hs_id)
        return n.node.replace(
            user_id=await self.owner(user_hs_id),
            auth_key_id=auth_key_id,
            ephemeral=bool(key is not None and key.ephemeral),
        )

    async def policy(self, text: str) -> None:
        current = await self.store.get_policy()
        if current is not None and current.text == text:
            self.report.add("policy", "policy", PRESENT)
            return
        if not self.dry_run:
            await self.store.set_policy(text)
        self.report.add("policy", "policy", BROUGHT)


def _renumbered(hs_id: int, new_id: int) -> str:
    """A note when the store gave a record another id than Headscale's: scripts that name users
    or nodes by id must be told (ids here are the store's own)."""
    return "" if new_id < 0 or new_id == hs_id else f"id {new_id} here (was {hs_id} in Headscale)"


def import_noise_key(source: Path, dest: Path, report: ImportReport, *, force: bool, dry_run: bool) -> None:
    """Copy Headscale's Noise private key (`privkey:<hex>`, the same form as ours) to `dest`, so
    clients that know the server by its public key keep trusting it. An existing different key
    is replaced only with force: every client of that server would stop trusting it."""
    try:
        raw = keys.PRIVATE.parse(source.read_text().strip())
    except OSError as exc:
        raise ImportRefused(f"{source}: cannot read the Noise key: {exc.strerror or exc}") from None
    except keys.KeyFormatError:
        raise ImportRefused(f"{source}: not a Noise private key (expected privkey:<64 hex digits>)") from None
    if dest.exists():
        try:
            current = keys.PRIVATE.parse(dest.read_text().strip())
        except (OSError, keys.KeyFormatError):
            current = None
        if current == raw:
            report.add("noisekey", str(dest), PRESENT)
            return
        if not force:
            raise ImportRefused(
                f"{dest} already holds another Noise key (clients of this server trust it):"
                " pass --force to replace it"
            )
        if not dry_run:
            os.unlink(dest)
    if not dry_run:
        dest.parent.mkdir(parents=True, exist_ok=True)
        keys.write_private_key(dest, raw)
    report.add("noisekey", str(dest), BROUGHT)
