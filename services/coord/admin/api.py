"""What every admin route shares: the handles it works with, the error shape, the API-key check
(fails closed), and reading the JSON body and its fields.

Errors are `{"error": "..."}` with a 4xx status (503 when the database is unreachable); a route
refuses input by raising `InvalidRequest`, whose message is shown to the user.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, current_app, jsonify, request

from trioscale.shared.domain.durations import parse_duration
from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import utcnow
from trioscale.shared.store.base import Store

from ..options import AdminOptions

if TYPE_CHECKING:
    from ..coordinator import Coordinator

__all__ = [
    "Admin",
    "APPLY_WAIT",
    "InvalidRequest",
    "install",
    "admin",
    "error_response",
    "api_key_accepted",
    "parse_json_object",
    "json_body",
    "flag",
    "text_field",
    "int_id",
    "MAX_ID",
    "given",
    "short",
    "key_prefix",
    "validate_tag",
    "tag_list",
    "validate_user_name",
    "parse_timestamp",
    "parse_expiration",
    "MAX_EXPIRATION",
]


@dataclass(frozen=True)
class Admin:
    """The handles the routes work with, installed on each app (the unix socket's and TCP's hold
    the same ones) and found from the request with `admin()`."""

    options: AdminOptions
    store: Store
    log: logging.Logger
    #: this process's coordinator, or None (the admin API may run where no coordinator does)
    coordinator: Coordinator | None

    def is_online(self, node_id: int) -> bool | None:
        """Whether a map session of this process serves the node (None: no coordinator here)."""
        coord = self.coordinator
        return None if coord is None else node_id in coord.tailnet.online

    async def caught_up(self) -> None:
        """Wait (at most `APPLY_WAIT`) until this process's coordinator has installed the change
        just stored, so the answer describes the tailnet as it now is."""
        coord = self.coordinator
        if coord is not None:
            with trio.move_on_after(APPLY_WAIT):
                await coord.caught_up()


#: how long a change waits for this process's coordinator to install it before answering
APPLY_WAIT = 5.0

_EXTENSION = "trioscale.admin"


def install(app: Any, handles: Admin) -> None:
    app.extensions[_EXTENSION] = handles


def admin() -> Admin:
    """The handles of the app serving the current request."""
    return current_app.extensions[_EXTENSION]


class InvalidRequest(Exception):
    """Input the admin API refuses (400); the message is shown to the user."""


def error_response(status: int, message: str) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    return resp


async def api_key_accepted(store: Store, header: str) -> bool:
    """Whether `Authorization: <header>` names a known, unexpired API key. Any doubt is a no:
    whatever goes wrong on the way (a malformed key, the database) refuses."""
    try:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        kind, prefix, secret = keys.split_key(token.strip())
        if kind != keys.KIND_API:
            return False
        key = await store.get_api_key_by_prefix(prefix)
        if key is None or not keys.verify(secret, key.key_hash):
            return False
        now = utcnow()
        if key.is_expired(now):
            return False
        try:
            await store.touch_api_key(key.id, now)
        except Exception:
            pass  # last_seen is informational: the key is still good
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# the body and its fields


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The parsed body: an object, or InvalidRequest with one line (never a traceback: a deeply
    nested body exhausts the parser's recursion, NaN/Infinity are not JSON)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


async def json_body() -> dict[str, Any]:
    return parse_json_object(await request.get_data(as_text=False))


def flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false")
    return value


def text_field(data: dict[str, Any], name: str, default: str = "") -> str:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string")
    return value


def short(value: Any) -> str:
    """`value` for an error message: repr, cut so a huge input does not make a huge answer."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "…"


def given(value: Any) -> bool:
    return value is not None and value != ""


#: ids are 64-bit signed integers in both databases; a larger number would reach the driver and fail there
MAX_ID = 2**63 - 1
_ID_TEXT = re.compile(r"^[0-9]{1,19}$")


def int_id(value: Any, what: str) -> int:
    if isinstance(value, str) and _ID_TEXT.match(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise InvalidRequest(f"invalid {what} id {short(value)} (expected a number from 0 to {MAX_ID})")
    return value


def key_prefix(text: Any, kind: str, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidRequest(f"the {what}'s prefix must be a string")
    try:
        return keys.prefix_of(text, kind)
    except keys.KeyFormatError as exc:
        raise InvalidRequest(f"invalid {what}: {exc}") from None


_TAG = re.compile(r"^tag:[A-Za-z][A-Za-z0-9_-]{0,62}$")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")


def validate_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise InvalidRequest(
            f"invalid tag {short(tag)}: tags look like tag:name (a letter, then letters, digits, - or _)"
        )
    return tag


def tag_list(value: Any, field: str) -> list[Any]:
    """Tags as sent: a list, or one comma-separated string (checked one by one by `validate_tag`)."""
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, list):
        raise InvalidRequest(f"{field} must be a list of tag:name strings")
    return value


def validate_user_name(name: Any) -> str:
    if not isinstance(name, str) or not _USER_NAME.match(name):
        raise InvalidRequest(
            f"invalid user name {short(name)}: use 1-63 letters, digits and . _ @ + - (starting with a letter or digit)"
        )
    if name.isdigit():
        raise InvalidRequest(f"invalid user name {name!r}: a name cannot be all digits (those are ids)")
    return name


#: the latest expiry a key or node may be given: far enough for any real use, and a datetime that
#: still fits every conversion (timezone shifts, the databases' timestamp types)
MAX_EXPIRATION = timedelta(days=3650)
#: the earliest time accepted for an explicit node expiry (anything before is as expired as this)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_timestamp(value: Any, what: str, now: datetime) -> datetime:
    """An RFC 3339 time (UTC if it names no zone), between 1970 and `MAX_EXPIRATION` from now."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidRequest(f"invalid {what} {short(value)} (expected an RFC 3339 time)")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        when = when.astimezone(timezone.utc)  # may overflow near year 1 or 9999
    except (ValueError, OverflowError):
        raise InvalidRequest(f"invalid {what} {short(value)} (expected an RFC 3339 time)") from None
    if when < _EPOCH or when > now + MAX_EXPIRATION:
        raise InvalidRequest(f"invalid {what} {short(value)}: must be between 1970 and 10 years from now")
    return when


def parse_expiration(value: Any, default: timedelta, now: datetime) -> datetime:
    """A duration ('30m', '24h', '90d', seconds) from now, or an RFC 3339 time in the future."""
    if value is None or value == "":
        return now + default
    if isinstance(value, str) and "T" in value.upper():
        when = parse_timestamp(value, "expiration", now)
        if when <= now:
            raise InvalidRequest(f"expiration {short(value)} is in the past")
        return when
    if isinstance(value, str) and len(value) > 64:
        value = value[:64] + "…"  # too long to be a duration: refused below, message stays short
    try:
        delta = parse_duration(value)
    except ValueError:
        raise InvalidRequest(
            f"invalid expiration {short(value)}: use a duration like 30m, 24h or 90d, or an RFC 3339 time"
        ) from None
    if delta <= timedelta(0):
        raise InvalidRequest(f"invalid expiration {short(value)}: must be longer than zero")
    if delta > MAX_EXPIRATION:
        raise InvalidRequest(f"invalid expiration {short(value)}: at most 10 years")
    return now + delta
