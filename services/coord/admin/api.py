"""What every admin route shares: the handles it works with, the error shape, the API-key check
(fails closed), and reading the JSON body (its fields: fields.py).

Errors are RFC 7807 problem details (`application/problem+json`: type, title, status, detail), as
Headscale's next release answers; a 4xx status (503 when the database is unreachable). A route
refuses input by raising `InvalidRequest`, whose message is the problem's detail.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, current_app, jsonify, request

from trioscale.shared.domain import secrets as keys
from trioscale.shared.domain.names import InvalidName
from trioscale.shared.model import ApiKey, utcnow
from trioscale.shared.store.base import Conflict, NotFound, Store, StoreError, StoreUnavailable

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
    "live_api_key",
    "install_refusals",
    "parse_json_object",
    "json_body",
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


PROBLEM_JSON = "application/problem+json"


def error_response(status: int, message: str) -> Response:
    """A problem document: `detail` is the one line a user reads, `title` the status's phrase."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    resp = jsonify({"type": "about:blank", "title": title, "status": status, "detail": message})
    resp.status_code = status
    resp.mimetype = PROBLEM_JSON
    return resp


async def api_key_accepted(store: Store, header: str) -> bool:
    """Whether `Authorization: <header>` names a known, unexpired API key. Any doubt is a no:
    whatever goes wrong on the way (a malformed key, the database) refuses."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    # scopes are API v2's; /api/v1 knows none, so only an all-access key may use it
    key = await live_api_key(store, token.strip(), lambda k: not k.scopes and k.oauth_client_id is None)
    return key is not None


async def live_api_key(store: Store, token: str, usable: Callable[[ApiKey], bool]) -> ApiKey | None:
    """The known, unexpired API key `token` is, if `usable` takes it; else None. Any doubt is a
    None: whatever goes wrong on the way (a malformed key, the database) refuses."""
    try:
        kind, prefix, secret = keys.split_key(token)
        if kind != keys.KIND_API:
            return None
        key = await store.get_api_key_by_prefix(prefix)
        if key is None or not keys.verify(secret, key.key_hash):
            return None
        now = utcnow()
        if key.is_expired(now) or not usable(key):
            return None
        if key.oauth_client_id is None:  # an OAuth client's hour-long tokens are not tracked
            try:
                await store.touch_api_key(key.id, now)
            except Exception:
                pass  # last_seen is informational: the key is still good
        return key
    except Exception:
        return None


#: the refusals any API route may raise: (exception, status, message when it has none)
REFUSALS: tuple[tuple[type[Exception], int, str], ...] = (
    (InvalidRequest, 400, ""),
    (InvalidName, 400, ""),
    (NotFound, 404, "not found"),
    (Conflict, 409, "conflict"),
    (StoreError, 400, "refused by the database"),
)


def install_refusals(target: Any, error: Callable[[int, str], Response],
                     extra: tuple[tuple[type[Exception], int, str], ...] = ()) -> None:
    """Answer each of REFUSALS (and `extra`) on `target` (an app or a blueprint) with `error`, and
    an unavailable database with a 503 that is logged."""
    for exc_type, status, default in (*REFUSALS, *extra):
        target.errorhandler(exc_type)(_refusal(error, status, default))

    async def unavailable(exc: StoreUnavailable) -> Response:
        admin().log.warning("database unavailable: %s", exc)
        return error(503, "the database is unavailable")

    target.errorhandler(StoreUnavailable)(unavailable)


def _refusal(error: Callable[[int, str], Response], status: int, default: str):
    async def handler(exc: Exception) -> Response:
        return error(status, str(exc) or default)
    return handler


# ---------------------------------------------------------------------------------------------
# the body


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
