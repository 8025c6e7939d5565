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
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, current_app, jsonify, request

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
        if key.scopes or key.oauth_client_id is not None:
            return False  # scopes are API v2's; /api/v1 knows none, so only an all-access key may use it
        try:
            await store.touch_api_key(key.id, now)
        except Exception:
            pass  # last_seen is informational: the key is still good
        return True
    except Exception:
        return False


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
