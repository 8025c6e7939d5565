"""API keys (`tskey-api-…`, for the TCP admin API): list, create (the key is in the answer once),
expire, delete."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from quart import Blueprint, request

from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import utcnow

from .api import InvalidRequest, admin, json_body
from .apiv2 import scopes as scope_names
from .fields import known_fields, known_query, parse_expiration
from .lookups import find_api_key
from .shapes import apikey_json

DEFAULT_API_KEY_EXPIRATION = timedelta(days=90)

blueprint = Blueprint("apikeys", __name__)


@blueprint.get("/api/v1/apikey")
async def list_api_keys() -> Any:
    now = utcnow()
    keys_ = sorted(await admin().store.list_api_keys(), key=lambda k: k.id)
    return {"apiKeys": [apikey_json(k, now) for k in keys_]}


@blueprint.post("/api/v1/apikey")
async def create_api_key() -> Any:
    data = known_fields(await json_body(), ("expiration", "scopes"))
    now = utcnow()
    expiration = parse_expiration(data.get("expiration"), DEFAULT_API_KEY_EXPIRATION, now)
    scopes_in = data.get("scopes", [])
    if not isinstance(scopes_in, list) or not all(isinstance(s, str) for s in scopes_in):
        raise InvalidRequest("scopes must be a list of scope names")
    try:
        scopes = scope_names.normalize(scopes_in)
    except scope_names.ScopeError as exc:
        raise InvalidRequest(str(exc)) from None
    new = keys.generate_api_key()
    ak = await admin().store.create_api_key(new.prefix, new.key_hash, expiration, scopes=scopes)
    admin().log.info("API key created: id %d prefix %s", ak.id, ak.prefix)
    # Headscale's answer is the key's text alone; the record is ours
    return {"apiKey": new.text, "apiKeyRecord": apikey_json(ak, now)}


@blueprint.post("/api/v1/apikey/expire")
async def expire_api_key() -> Any:
    data = known_fields(await json_body(), ("id", "prefix"))
    ak = await find_api_key(data.get("id"), data.get("prefix"))
    now = utcnow()
    ak = await admin().store.expire_api_key(ak.id, now)
    admin().log.info("API key expired: id %d prefix %s", ak.id, ak.prefix)
    return {"apiKeyRecord": apikey_json(ak, now)}


# Headscale's route takes the prefix in the path; `?id=N` (without a path prefix) is the id
# form our expire route has too. `path:` so that a mistyped prefix with a '/' (sent as %2F)
# is a key not found, not an unknown endpoint.
@blueprint.delete("/api/v1/apikey", defaults={"prefix": None})
@blueprint.delete("/api/v1/apikey/<path:prefix>")
async def delete_api_key(prefix: str | None) -> Any:
    ak = await find_api_key(known_query(request.args, ("id",)).get("id"), prefix)
    await admin().store.delete_api_key(ak.id)
    admin().log.info("API key deleted: id %d prefix %s", ak.id, ak.prefix)
    return {"apiKeyRecord": apikey_json(ak, utcnow())}
