"""Keys of the tailnet: auth keys (and, with `keyType: client`, OAuth clients).

    GET    /api/v2/tailnet/{tailnet}/keys        auth_keys:read  {"keys": [Key]} (?all=true: OAuth
                                                                  clients and API keys too, as scopes allow)
    POST   /api/v2/tailnet/{tailnet}/keys        auth_keys       an auth key from {"capabilities":
                                                                  {"devices": {"create": {reusable, ephemeral,
                                                                  tags, preauthorized}}}, "expirySeconds",
                                                                  "description"}; oauth_keys with keyType client
    GET    /api/v2/tailnet/{tailnet}/keys/{id}   the key's kind's :read scope (any scope for the caller's own)
    DELETE /api/v2/tailnet/{tailnet}/keys/{id}   the key's kind's scope
A key's id is its prefix (`tskey-auth-<id>-…`), an OAuth client's its client id. Auth keys made here
are owned by their tags (every key here has a user in the store: tags-only keys hang on the
`tagged-devices` user), so tags are required; an OAuth client's token may only give its own tags.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from quart import request

from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import utcnow
from trioscale.shared.store.base import NotFound

from ..api import InvalidRequest, admin
from ..fields import tag_list, validate_tag
from ..lookups import tagged_devices_user
from . import scopes as sc
from .auth import caller, require
from .common import PREFIX, blueprint, body, check_tailnet
from .shapes import api_key_json, auth_key_json, client_json

#: Tailscale's bounds on an auth key's life: 90 days at most, and its default
MAX_EXPIRY = timedelta(days=90)
MAX_DESCRIPTION = 50


def _flag(create: dict[str, Any], name: str) -> bool:
    value = create.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"capabilities.devices.create.{name} must be true or false")
    return value


def _description(data: dict[str, Any]) -> str:
    text = data.get("description", "") or ""
    if not isinstance(text, str) or len(text) > MAX_DESCRIPTION:
        raise InvalidRequest(f"description must be text of at most {MAX_DESCRIPTION} characters")
    return text


def _tags(value: Any, field: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(validate_tag(t) for t in tag_list(value or [], field)))


@blueprint.get(PREFIX + "/tailnet/<tailnet>/keys")
async def list_keys(tailnet: str) -> Any:
    check_tailnet(tailnet)
    who = require("auth_keys", False)
    store, now = admin().store, utcnow()
    out = [auth_key_json(k, now) for k in sorted(await store.list_preauth_keys(), key=lambda k: k.id)
           if not k.is_expired(now)]
    if request.args.get("all") == "true":
        if who.may("oauth_keys", False):
            out += [client_json(c) for c in await store.list_oauth_clients()]
        if who.may("all", False):
            out += [api_key_json(k, now) for k in await store.list_api_keys()]
    return {"keys": out}


@blueprint.post(PREFIX + "/tailnet/<tailnet>/keys")
async def create_key(tailnet: str) -> Any:
    check_tailnet(tailnet)
    data = await body()
    key_type = data.get("keyType") or "auth"
    if key_type == "client":
        return await _create_client(data)
    if key_type != "auth":
        raise InvalidRequest(f"keyType {key_type!r} cannot be created here (auth or client)")
    who = require("auth_keys", True)
    create: Any = data.get("capabilities") or {}
    for field in ("devices", "create"):
        create = create.get(field) or {} if isinstance(create, dict) else None
    if not isinstance(create, dict):
        raise InvalidRequest("capabilities.devices.create must be an object")
    tags = _tags(create.get("tags"), "capabilities.devices.create.tags")
    if not tags:
        raise InvalidRequest("an auth key made through the API needs tags (capabilities.devices.create.tags): "
                             "its devices are owned by them")
    if who.is_oauth:
        foreign = [t for t in tags if t not in who.tags]
        if foreign:
            raise InvalidRequest(f"the OAuth client may not give tag(s) {', '.join(foreign)} "
                                 f"(its tags: {', '.join(who.tags) or 'none'})")
    seconds = data.get("expirySeconds") or int(MAX_EXPIRY.total_seconds())
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 0 < seconds <= MAX_EXPIRY.total_seconds():
        raise InvalidRequest(f"expirySeconds must be a whole number of seconds up to {int(MAX_EXPIRY.total_seconds())}")
    description = _description(data)
    now = utcnow()
    owner = await tagged_devices_user()
    new = keys.generate_preauth_key()
    pk = await admin().store.create_preauth_key(
        owner.id, new.prefix, new.key_hash, reusable=_flag(create, "reusable"), ephemeral=_flag(create, "ephemeral"),
        tags=tags, expiration=now + timedelta(seconds=seconds), description=description)
    admin().log.info("API v2: auth key created: prefix %s tags %s", pk.prefix, ",".join(tags))
    return auth_key_json(pk, now, key=new.text)


async def _create_client(data: dict[str, Any]) -> Any:
    who = require("oauth_keys", True)
    try:
        scopes = sc.normalize(data.get("scopes") or [])
    except sc.ScopeError as exc:
        raise InvalidRequest(str(exc)) from None
    if not scopes:
        raise InvalidRequest("an OAuth client needs at least one scope")
    tags = _tags(data.get("tags"), "tags")
    if sc.needs_tags(scopes) and not tags:
        raise InvalidRequest("an OAuth client with devices:core, auth_keys or all needs tags")
    if not who.may("all", True) and any(not who.may(s.removesuffix(":read"), not s.endswith(":read"))
                                        for s in scopes if s not in ("all", "all:read")):
        raise InvalidRequest("an OAuth client cannot be given scopes its creator lacks")
    new = keys.generate_key(keys.KIND_CLIENT)
    client = await admin().store.create_oauth_client(new.prefix, new.key_hash, description=_description(data),
                                                     scopes=scopes, tags=tags)
    admin().log.info("API v2: OAuth client created: %s", client.client_id)
    return client_json(client, key=new.text)


async def _find(key_id: str) -> tuple[str, Any]:
    store = admin().store
    pk = await store.get_preauth_key_by_prefix(key_id)
    if pk is not None:
        return "auth", pk
    client = await store.get_oauth_client_by_client_id(key_id)
    if client is not None:
        return "client", client
    ak = await store.get_api_key_by_prefix(key_id)
    if ak is not None and ak.oauth_client_id is None:
        return "api", ak
    raise NotFound(f"key {key_id!r} not found")


_SCOPE = {"auth": "auth_keys", "client": "oauth_keys", "api": "all"}


def _reach(write: bool) -> None:
    """Refuse before looking anything up when no kind of key is within the caller's scopes (an
    answer of 404 or 403 would tell a token of other scopes which keys exist)."""
    who = caller()
    if who is None or not any(who.may(r, write) for r in _SCOPE.values()):
        require("auth_keys", write)


@blueprint.get(PREFIX + "/tailnet/<tailnet>/keys/<keyId>")
async def get_key(tailnet: str, keyId: str) -> Any:
    check_tailnet(tailnet)
    who = caller()
    own = who is not None and who.key is not None and who.key.prefix == keyId
    if own:
        return api_key_json(who.key, utcnow())
    _reach(False)
    kind, record = await _find(keyId)
    require(_SCOPE[kind], False)
    now = utcnow()
    return {"auth": lambda: auth_key_json(record, now), "client": lambda: client_json(record),
            "api": lambda: api_key_json(record, now)}[kind]()


@blueprint.delete(PREFIX + "/tailnet/<tailnet>/keys/<keyId>")
async def delete_key(tailnet: str, keyId: str) -> Any:
    check_tailnet(tailnet)
    _reach(True)
    kind, record = await _find(keyId)
    require(_SCOPE[kind], True)
    store = admin().store
    if kind == "auth":
        await store.delete_preauth_key(record.id)
    elif kind == "client":
        await store.delete_oauth_client(record.id)
    else:
        await store.delete_api_key(record.id)
    admin().log.info("API v2: %s key deleted: %s", kind, keyId)
    return {}
