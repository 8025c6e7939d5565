"""Pre-auth keys (`tskey-auth-…`): list, create (the key is in the answer once), expire, delete.

Headscale answers expire and delete with `{}`; ours carry the key's record too (`preAuthKey`).
A key owned by its tags alone (no user) belongs in the store to the reserved user `tagged-devices`
(lookups.tagged_devices_user), which the API shows as no user (`"user": null`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from quart import Blueprint, request

from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import utcnow

from .api import InvalidRequest, admin, json_body
from .fields import flag, given, known_fields, known_query, parse_expiration, tag_list, validate_tag
from .lookups import find_preauth_key, find_user, tagged_devices_user, users_by_id
from .shapes import preauth_json

DEFAULT_PREAUTH_EXPIRATION = timedelta(hours=1)

blueprint = Blueprint("preauthkeys", __name__)


@blueprint.get("/api/v1/preauthkey")
async def list_preauth_keys() -> Any:
    ref = known_query(request.args, ("user",)).get("user")
    user_id = (await find_user(ref)).id if ref else None
    now = utcnow()
    users = await users_by_id()
    pks = await admin().store.list_preauth_keys(user_id)
    return {"preAuthKeys": [preauth_json(k, users, now) for k in sorted(pks, key=lambda k: k.id)]}


@blueprint.post("/api/v1/preauthkey")
async def create_preauth_key() -> Any:
    store, log = admin().store, admin().log
    data = known_fields(await json_body(), ("user", "reusable", "ephemeral", "expiration", "aclTags"))
    reusable = flag(data, "reusable")
    ephemeral = flag(data, "ephemeral")
    tags_in = tag_list(data.get("aclTags") or [], "aclTags")
    # sorted and without repeats, as Headscale keeps them
    tags = tuple(sorted(dict.fromkeys(validate_tag(t) for t in tags_in)))
    if data.get("user") == "":  # Headscale's user is a number: an empty string is none of them
        raise InvalidRequest("user is empty: give a user's id or name, or leave it out for a key owned by its tags")
    if data.get("user") is None or data.get("user") in (0, "0"):
        # Headscale 0.29: no user (or 0) makes a key owned by its tags alone; nodes joining with
        # it are tagged nodes of no user. Neither a user nor tags is refused, as there.
        if not tags:
            raise InvalidRequest("a pre-auth key needs a user or aclTags (a key owned by its tags)")
        user = await tagged_devices_user()
    else:
        user = await find_user(data.get("user"))
    now = utcnow()
    expiration = parse_expiration(data.get("expiration"), DEFAULT_PREAUTH_EXPIRATION, now)
    new = keys.generate_preauth_key()
    pk = await store.create_preauth_key(
        user.id,
        new.prefix,
        new.key_hash,
        reusable=reusable,
        ephemeral=ephemeral,
        tags=tags,
        expiration=expiration,
    )
    log.info("pre-auth key created: id %d prefix %s for user %s", pk.id, pk.prefix, user.name)
    return {"preAuthKey": preauth_json(pk, {user.id: user}, now, key=new.text)}


@blueprint.post("/api/v1/preauthkey/expire")
async def expire_preauth_key() -> Any:
    data = known_fields(await json_body(), ("id", "prefix"))
    pk = await find_preauth_key(data.get("id"), data.get("prefix"))
    now = utcnow()
    pk = await admin().store.expire_preauth_key(pk.id, now)
    admin().log.info("pre-auth key expired: id %d", pk.id)
    return {"preAuthKey": preauth_json(pk, await users_by_id(), now)}


# Headscale (0.28+) names the key by id only, in the query: a DELETE has no body
@blueprint.delete("/api/v1/preauthkey")
async def delete_preauth_key() -> Any:
    key_id = known_query(request.args, ("id",)).get("id")
    if not given(key_id):
        raise InvalidRequest("give the pre-auth key's id (?id=N)")
    pk = await find_preauth_key(key_id)
    users = await users_by_id()
    await admin().store.delete_preauth_key(pk.id)
    admin().log.info("pre-auth key deleted: id %d prefix %s", pk.id, pk.prefix)
    return {"preAuthKey": preauth_json(pk, users, utcnow())}
