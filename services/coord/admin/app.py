"""The admin API: REST under /api/v1, shaped like Headscale's.

Served by hypercorn (trio worker) on
- the unix socket `config.unix_socket` (local and trusted: no authentication; the socket file's mode
  is `config.unix_socket_permission`), and
- when `config.admin.listen_addr` is set, TCP, where EVERY request (unknown paths too) needs
  `Authorization: Bearer tskey-api-…` naming a known, unexpired API key. Any doubt -> 401.

Bodies and answers are JSON; errors are `{"error": "..."}` with a 4xx status (503 when the database
is unreachable). Secrets are never logged: the access log is off and keys are masked.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trioscale.config import parse_duration
from trioscale.context import ServiceContext
from trioscale.shared.domain.names import InvalidName, validate_label
from trioscale.services.coord.registration import approve_registration as complete_registration
from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import ApiKey, Node, PendingRegistration, PreAuthKey, User, utcnow
from trioscale.shared.store.base import Conflict, NotFound, StoreError, StoreUnavailable

__all__ = [
    "create_admin_app",
    "BadRequest",
    "DEFAULT_PREAUTH_EXPIRATION",
    "DEFAULT_API_KEY_EXPIRATION",
    "validate_tag",
    "validate_user_name",
]

DEFAULT_PREAUTH_EXPIRATION = timedelta(hours=1)
DEFAULT_API_KEY_EXPIRATION = timedelta(days=90)
MAX_BODY = 64 * 1024

_TAG = re.compile(r"^tag:[A-Za-z][A-Za-z0-9_-]{0,62}$")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")
_REG_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_AUTH_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class BadRequest(Exception):
    """Input the API refuses (400); the message is shown to the user."""


class Unauthorized(Exception):
    pass


def validate_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise BadRequest(
            f"invalid tag {_short(tag)}: tags look like tag:name (a letter, then letters, digits, - or _)"
        )
    return tag


def validate_user_name(name: Any) -> str:
    if not isinstance(name, str) or not _USER_NAME.match(name):
        raise BadRequest(
            f"invalid user name {_short(name)}: use 1-63 letters, digits and . _ @ + - (starting with a letter or digit)"
        )
    if name.isdigit():
        raise BadRequest(f"invalid user name {name!r}: a name cannot be all digits (those are ids)")
    return name


# ---------------------------------------------------------------------------------------------
# JSON shapes


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def user_json(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "name": u.name,
        "display_name": u.display_name,
        "email": u.email,
        "created_at": _ts(u.created_at),
    }


def preauth_json(k: PreAuthKey, users: dict[int, User], now: datetime) -> dict[str, Any]:
    u = users.get(k.user_id)
    return {
        "id": k.id,
        "prefix": k.prefix,
        "user": {"id": k.user_id, "name": u.name if u else ""},
        "reusable": k.reusable,
        "ephemeral": k.ephemeral,
        "used": k.used,
        "expired": k.is_expired(now),
        "acl_tags": list(k.tags),
        "expiration": _ts(k.expiration),
        "created_at": _ts(k.created_at),
    }


def apikey_json(k: ApiKey, now: datetime) -> dict[str, Any]:
    return {
        "id": k.id,
        "prefix": k.prefix,
        "expired": k.is_expired(now),
        "expiration": _ts(k.expiration),
        "created_at": _ts(k.created_at),
        "last_seen": _ts(k.last_seen),
    }


def node_json(n: Node, users: dict[int, User], now: datetime, online: bool | None = None) -> dict[str, Any]:
    u = users.get(n.user_id)
    return {
        "online": online,
        "id": n.id,
        "name": n.hostname,
        "hostname": n.hostname,
        "given_name": n.given_name,
        "user": {"id": n.user_id, "name": u.name if u else ""},
        "ip_addresses": [a for a in (n.ipv4, n.ipv6) if a],
        "machine_key": "mkey:" + n.machine_key.hex(),
        "node_key": "nodekey:" + n.node_key.hex(),
        "disco_key": ("discokey:" + n.disco_key.hex()) if n.disco_key else "",
        "tags": list(n.tags),
        "approved_routes": list(n.approved_routes),
        "ephemeral": n.ephemeral,
        "register_method": n.register_method,
        "expiry": _ts(n.expiry),
        "expired": n.is_expired(now),
        "created_at": _ts(n.created_at),
        "last_seen": _ts(n.last_seen),
    }


def registration_json(r: PendingRegistration) -> dict[str, Any]:
    return {
        "id": r.id,
        "hostname": str((r.hostinfo or {}).get("Hostname", "")),
        "node_id": r.node_id or None,
        "user_id": r.user_id,
        "created_at": _ts(r.created_at),
    }


# ---------------------------------------------------------------------------------------------
# input helpers


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _json_body(raw: bytes) -> dict[str, Any]:
    """The parsed body: an object, or BadRequest with one line (never a traceback: a deeply nested
    body exhausts the parser's recursion, NaN/Infinity are not JSON)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


async def _body() -> dict[str, Any]:
    return _json_body(await request.get_data(as_text=False))


def _bool(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def _str(data: dict[str, Any], name: str, default: str = "") -> str:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


#: ids are 64-bit signed integers in both databases; a larger number would reach the driver and fail there
_MAX_ID = 2**63 - 1
_ID_TEXT = re.compile(r"^[0-9]{1,19}$")


def _int_id(value: Any, what: str) -> int:
    if isinstance(value, str) and _ID_TEXT.match(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
        raise BadRequest(f"invalid {what} id {_short(value)} (expected a number from 0 to {_MAX_ID})")
    return value


#: the latest expiry a key or node may be given: far enough for any real use, and a datetime that
#: still fits every conversion (timezone shifts, the databases' timestamp types)
MAX_EXPIRATION = timedelta(days=3650)
#: the earliest time accepted for an explicit node expiry (anything before is as expired as this)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_timestamp(value: Any, what: str, now: datetime) -> datetime:
    """An RFC 3339 time (UTC if it names no zone), between 1970 and `MAX_EXPIRATION` from now."""
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequest(f"invalid {what} {_short(value)} (expected an RFC 3339 time)")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        when = when.astimezone(timezone.utc)  # may overflow near year 1 or 9999
    except (ValueError, OverflowError):
        raise BadRequest(f"invalid {what} {_short(value)} (expected an RFC 3339 time)") from None
    if when < _EPOCH or when > now + MAX_EXPIRATION:
        raise BadRequest(f"invalid {what} {_short(value)}: must be between 1970 and 10 years from now")
    return when


def _short(value: Any) -> str:
    """`value` for an error message: repr, cut so a huge input does not make a huge answer."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "…"


def _given(value: Any) -> bool:
    return value is not None and value != ""


def _key_prefix(text: Any, kind: str, what: str) -> str:
    if not isinstance(text, str):
        raise BadRequest(f"the {what}'s prefix must be a string")
    try:
        return keys.prefix_of(text, kind)
    except keys.KeyFormatError as exc:
        raise BadRequest(f"invalid {what}: {exc}") from None


def parse_expiration(value: Any, default: timedelta, now: datetime) -> datetime:
    """A duration ('30m', '24h', '90d', seconds) from now, or an RFC 3339 time in the future."""
    if value is None or value == "":
        return now + default
    if isinstance(value, str) and "T" in value.upper():
        when = parse_timestamp(value, "expiration", now)
        if when <= now:
            raise BadRequest(f"expiration {_short(value)} is in the past")
        return when
    if isinstance(value, str) and len(value) > 64:
        value = value[:64] + "…"  # too long to be a duration: refused below, message stays short
    try:
        delta = parse_duration(value)
    except ValueError:
        raise BadRequest(
            f"invalid expiration {_short(value)}: use a duration like 30m, 24h or 90d, or an RFC 3339 time"
        ) from None
    if delta <= timedelta(0):
        raise BadRequest(f"invalid expiration {_short(value)}: must be longer than zero")
    if delta > MAX_EXPIRATION:
        raise BadRequest(f"invalid expiration {_short(value)}: at most 10 years")
    return now + delta


# ---------------------------------------------------------------------------------------------
# the app


def create_admin_app(ctx: ServiceContext, *, require_auth: bool = True) -> QuartTrio:
    """The admin API app. `require_auth=False` only for the trusted unix socket."""

    def is_online(node_id: int) -> bool | None:
        """Whether a map session of this process serves the node (None: no coordinator here)."""
        coord = ctx.registry.get("coord")
        return None if coord is None else node_id in coord.tailnet.online

    app = QuartTrio("trioscale.admin", static_folder=None, template_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = ctx.store
    log = ctx.log.getChild("admin")

    def err(status: int, message: str) -> Response:
        resp = jsonify({"error": message})
        resp.status_code = status
        return resp

    @app.before_request
    async def authenticate() -> Response | None:
        if not require_auth:
            return None
        try:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized()
            kind, prefix, secret = keys.split_key(token.strip())
            if kind != keys.KIND_API:
                raise Unauthorized()
            key = await store.get_api_key_by_prefix(prefix)
            if key is None or not keys.verify(secret, key.key_hash):
                raise Unauthorized()
            now = utcnow()
            if key.is_expired(now):
                raise Unauthorized()
            try:
                await store.touch_api_key(key.id, now)
            except Exception:
                pass
            return None
        except Exception:  # fail closed, whatever went wrong
            resp = err(401, "unauthorized: a valid API key is required (Authorization: Bearer tskey-api-…)")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp

    @app.errorhandler(BadRequest)
    async def _bad(exc: BadRequest) -> Response:
        return err(400, str(exc))

    @app.errorhandler(InvalidName)
    async def _badname(exc: InvalidName) -> Response:
        return err(400, str(exc))

    @app.errorhandler(NotFound)
    async def _nf(exc: NotFound) -> Response:
        return err(404, str(exc) or "not found")

    @app.errorhandler(Conflict)
    async def _conflict(exc: Conflict) -> Response:
        return err(409, str(exc) or "conflict")

    @app.errorhandler(StoreError)
    async def _store(exc: StoreError) -> Response:
        return err(400, str(exc) or "refused by the database")

    @app.errorhandler(StoreUnavailable)
    async def _unavailable(exc: StoreUnavailable) -> Response:
        log.warning("database unavailable: %s", exc)
        return err(503, "the database is unavailable")

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        if exc.code == 404:
            return err(404, f"no such API endpoint: {request.method} {request.path}")
        if exc.code == 405:
            return err(405, f"method {request.method} not allowed on {request.path}")
        return err(exc.code or 500, (exc.description or exc.name or "error").split("\n")[0])

    @app.errorhandler(Exception)
    async def _other(exc: Exception) -> Response:
        log.error("admin API internal error on %s %s", request.method, request.path, exc_info=exc)
        return err(500, "internal error (see the server log)")

    # -- lookups -------------------------------------------------------------------------------
    async def find_user(ref: Any) -> User:
        """A user by name, or by id when the reference is a number (names are never all digits)."""
        if isinstance(ref, bool) or ref is None or ref == "":
            raise BadRequest("a user is required")
        if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
            # an id: range-checked, or a 20-digit number would overflow in the database driver
            user = await store.get_user(_int_id(ref, "user"))
        elif isinstance(ref, str):
            if len(ref) > 256:
                raise BadRequest(f"invalid user {_short(ref)}")
            user = await store.get_user_by_name(ref)
        else:
            raise BadRequest(f"invalid user {_short(ref)}")
        if user is None:
            raise NotFound(f"user {_short(ref)} not found")
        return user

    async def users_by_id() -> dict[int, User]:
        return {u.id: u for u in await store.list_users()}

    async def find_key(what: str, kind: str, by_id, by_prefix, key_id: Any, prefix: Any) -> Any:
        """A pre-auth or API key named by exactly one of its id or its prefix (or whole key)."""
        if _given(key_id) and _given(prefix):
            raise BadRequest(f"give the {what}'s id or its prefix, not both")
        if _given(key_id):
            key_id = _int_id(key_id, what)
            found, named = await by_id(key_id), f"id {key_id}"
        elif _given(prefix):
            prefix = _key_prefix(prefix, kind, what)
            shown = prefix if len(prefix) <= 80 else prefix[:60] + "…"
            found, named = await by_prefix(prefix), f"prefix {shown}"
        else:
            raise BadRequest(f"give the {what}'s id or prefix")
        if found is None:
            raise NotFound(f"{what} {named} not found")
        return found

    async def find_preauth_key(key_id: Any, prefix: Any = None) -> PreAuthKey:
        return await find_key("pre-auth key", keys.KIND_AUTH, store.get_preauth_key,
                              store.get_preauth_key_by_prefix, key_id, prefix)

    async def find_api_key(key_id: Any, prefix: Any = None) -> ApiKey:
        return await find_key("API key", keys.KIND_API, store.get_api_key, store.get_api_key_by_prefix,
                              key_id, prefix)

    async def find_node(ref: str) -> Node:
        node = await store.get_node(_int_id(ref, "node"))
        if node is None:
            raise NotFound(f"node {ref} not found")
        return node

    # -- health --------------------------------------------------------------------------------
    @app.get("/api/v1/health")
    async def health() -> Any:
        await store.latest_seq()
        return {"status": "ok", "database_connectivity": True}

    # -- users ---------------------------------------------------------------------------------
    @app.get("/api/v1/user")
    async def list_users() -> Any:
        name = request.args.get("name")
        uid = request.args.get("id")
        uid = _int_id(uid, "user") if uid else None
        users = await store.list_users()
        if name:
            users = [u for u in users if u.name == name]
        if uid is not None:
            users = [u for u in users if u.id == uid]
        return {"users": [user_json(u) for u in users]}

    @app.post("/api/v1/user")
    async def create_user() -> Any:
        data = await _body()
        name = validate_user_name(data.get("name"))
        display = _str(data, "display_name")
        email = _str(data, "email")
        if len(display) > 256 or len(email) > 256:
            raise BadRequest("display_name and email are limited to 256 characters")
        if email and "@" not in email:
            raise BadRequest(f"invalid email {email!r}")
        if await store.get_user_by_name(name) is not None:
            raise Conflict(f"user {name!r} already exists")
        user = await store.create_user(name, display_name=display, email=email)
        log.info("user created: %s (id %d)", user.name, user.id)
        return {"user": user_json(user)}, 201

    @app.post("/api/v1/user/<ref>/rename/<path:new_name>")
    async def rename_user(ref: str, new_name: str) -> Any:
        user = await find_user(ref)
        validate_user_name(new_name)
        other = await store.get_user_by_name(new_name)
        if other is not None and other.id != user.id:
            raise Conflict(f"user {new_name!r} already exists")
        renamed = await store.rename_user(user.id, new_name)
        log.info("user renamed: %s -> %s", user.name, renamed.name)
        return {"user": user_json(renamed)}

    @app.delete("/api/v1/user/<ref>")
    async def delete_user(ref: str) -> Any:
        user = await find_user(ref)
        if await store.list_nodes(user.id):
            raise Conflict(f"user {user.name!r} still owns nodes; delete them first")
        await store.delete_user(user.id)
        log.info("user deleted: %s", user.name)
        return {}

    # -- pre-auth keys -------------------------------------------------------------------------
    @app.get("/api/v1/preauthkey")
    async def list_preauth_keys() -> Any:
        ref = request.args.get("user")
        user_id = (await find_user(ref)).id if ref else None
        now = utcnow()
        users = await users_by_id()
        pks = await store.list_preauth_keys(user_id)
        return {"pre_auth_keys": [preauth_json(k, users, now) for k in pks]}

    @app.post("/api/v1/preauthkey")
    async def create_preauth_key() -> Any:
        data = await _body()
        user = await find_user(data.get("user"))
        reusable = _bool(data, "reusable")
        ephemeral = _bool(data, "ephemeral")
        tags_in = data.get("acl_tags", data.get("tags", [])) or []
        if isinstance(tags_in, str):
            tags_in = [t.strip() for t in tags_in.split(",") if t.strip()]
        if not isinstance(tags_in, list):
            raise BadRequest("acl_tags must be a list of tag:name strings")
        tags = tuple(dict.fromkeys(validate_tag(t) for t in tags_in))
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
        body = preauth_json(pk, {user.id: user}, now)
        body["key"] = new.text
        return {"pre_auth_key": body}, 201

    @app.post("/api/v1/preauthkey/expire")
    async def expire_preauth_key() -> Any:
        data = await _body()
        pk = await find_preauth_key(data.get("id"), data.get("prefix") or data.get("key"))
        now = utcnow()
        pk = await store.expire_preauth_key(pk.id, now)
        log.info("pre-auth key expired: id %d", pk.id)
        return {"pre_auth_key": preauth_json(pk, await users_by_id(), now)}

    # Headscale (0.28+) names the key by id only, in the query: a DELETE has no body
    @app.delete("/api/v1/preauthkey")
    async def delete_preauth_key() -> Any:
        if not _given(request.args.get("id")):
            raise BadRequest("give the pre-auth key's id (?id=N)")
        pk = await find_preauth_key(request.args.get("id"))
        users = await users_by_id()
        await store.delete_preauth_key(pk.id)
        log.info("pre-auth key deleted: id %d prefix %s", pk.id, pk.prefix)
        return {"pre_auth_key": preauth_json(pk, users, utcnow())}

    # -- API keys ------------------------------------------------------------------------------
    @app.get("/api/v1/apikey")
    async def list_api_keys() -> Any:
        now = utcnow()
        return {"api_keys": [apikey_json(k, now) for k in await store.list_api_keys()]}

    @app.post("/api/v1/apikey")
    async def create_api_key() -> Any:
        data = await _body()
        now = utcnow()
        expiration = parse_expiration(data.get("expiration"), DEFAULT_API_KEY_EXPIRATION, now)
        new = keys.generate_api_key()
        ak = await store.create_api_key(new.prefix, new.key_hash, expiration)
        log.info("API key created: id %d prefix %s", ak.id, ak.prefix)
        body = apikey_json(ak, now)
        body["key"] = new.text
        return {"api_key": body}, 201

    @app.post("/api/v1/apikey/expire")
    async def expire_api_key() -> Any:
        data = await _body()
        ak = await find_api_key(data.get("id"), data.get("prefix"))
        now = utcnow()
        ak = await store.expire_api_key(ak.id, now)
        log.info("API key expired: id %d prefix %s", ak.id, ak.prefix)
        return {"api_key": apikey_json(ak, now)}

    # Headscale's route takes the prefix in the path; `?id=N` (without a path prefix) is the id
    # form our expire route has too. `path:` so that a mistyped prefix with a '/' (sent as %2F)
    # is a key not found, not an unknown endpoint.
    @app.delete("/api/v1/apikey", defaults={"prefix": None})
    @app.delete("/api/v1/apikey/<path:prefix>")
    async def delete_api_key(prefix: str | None) -> Any:
        ak = await find_api_key(request.args.get("id"), prefix)
        await store.delete_api_key(ak.id)
        log.info("API key deleted: id %d prefix %s", ak.id, ak.prefix)
        return {"api_key": apikey_json(ak, utcnow())}

    # -- nodes ---------------------------------------------------------------------------------
    @app.get("/api/v1/node")
    async def list_nodes() -> Any:
        ref = request.args.get("user")
        user_id = (await find_user(ref)).id if ref else None
        now = utcnow()
        users = await users_by_id()
        return {"nodes": [node_json(n, users, now, is_online(n.id)) for n in await store.list_nodes(user_id)]}

    @app.get("/api/v1/node/<ref>")
    async def get_node(ref: str) -> Any:
        node = await find_node(ref)
        return {"node": node_json(node, await users_by_id(), utcnow(), is_online(node.id))}

    @app.delete("/api/v1/node/<ref>")
    async def delete_node(ref: str) -> Any:
        node = await find_node(ref)
        await store.delete_node(node.id)
        log.info("node deleted: %s (id %d)", node.given_name, node.id)
        return {}

    @app.post("/api/v1/node/<ref>/expire")
    async def expire_node(ref: str) -> Any:
        now = utcnow()
        data = await _body()
        when = now
        if data.get("expiry"):
            when = parse_timestamp(data["expiry"], "expiry", now)
        node = await find_node(ref)
        node = await store.update_node(node.id, expiry=when)
        log.info("node expired: %s (id %d)", node.given_name, node.id)
        return {"node": node_json(node, await users_by_id(), now)}

    @app.post("/api/v1/node/<ref>/rename/<path:new_name>")
    async def rename_node(ref: str, new_name: str) -> Any:
        node = await find_node(ref)
        validate_label(new_name)
        if new_name != node.given_name:
            for other in await store.list_nodes():
                if other.given_name == new_name and other.id != node.id:
                    raise Conflict(f"node name {new_name!r} is taken")
            node = await store.update_node(node.id, given_name=new_name)
        log.info("node renamed: id %d -> %s", node.id, node.given_name)
        return {"node": node_json(node, await users_by_id(), utcnow())}

    @app.post("/api/v1/node/register")
    async def register_node() -> Any:
        data = await _body()
        user_ref = request.args.get("user") or data.get("user")
        reg_id = request.args.get("key") or data.get("key")
        if not reg_id:
            raise BadRequest("a registration id (key) is required")
        if not isinstance(reg_id, str) or not _REG_ID.match(reg_id):
            raise BadRequest(f"invalid registration id {_short(reg_id)}")
        user = await find_user(user_ref)
        result = await complete_registration(store, reg_id, user, utcnow(), config=ctx.config)
        out: dict[str, Any] = {}
        if isinstance(result, Node):
            out["node"] = node_json(result, await users_by_id(), utcnow())
            out["registration"] = {"id": reg_id, "node_id": result.id, "user_id": user.id}
        else:
            out["registration"] = registration_json(result)
        log.info("registration %s completed for user %s", reg_id, user.name)
        return out

    # -- SSH check mode: Headscale's auth approve / reject (authId names a held SSH session) ---------
    async def decide_ssh_check(decision: str) -> Any:
        data = await _body()
        auth_id = data.get("authId") if "authId" in data else data.get("auth_id")
        if not isinstance(auth_id, str) or not _AUTH_ID.match(auth_id):
            raise BadRequest(f"give the authId of a held SSH session, not {_short(auth_id)}")
        check = await store.decide_ssh_check(auth_id, decision, utcnow())
        log.info("SSH session %s %s (node %d to node %d as %s)", auth_id, decision, check.src_node_id,
                 check.dst_node_id, check.local_user or "?")
        return {}

    @app.post("/api/v1/auth/approve")
    async def auth_approve() -> Any:
        return await decide_ssh_check("approved")

    @app.post("/api/v1/auth/reject")
    async def auth_reject() -> Any:
        return await decide_ssh_check("rejected")

    from ..admin_policy import register_policy_routes

    register_policy_routes(
        app, ctx, BadRequest=BadRequest, find_node=find_node, find_user=find_user, users_by_id=users_by_id,
        node_json=node_json, validate_tag=validate_tag, ts=_ts, utcnow=utcnow, is_online=is_online,
        json_body=_body,
    )
    return app
