"""Who is calling /api/v2, and what they may do.

Tailscale's API takes an API access token (`tskey-api-…`) as HTTP Basic's user name (password
empty) or as a Bearer token; an OAuth client's access token is one of those (store: an API key
naming its client, with scopes and tags). `authenticate` runs before every /api/v2 request on an
authenticated listener (app.py); each route then says what it needs with `@needs(resource, write)`,
which answers 401 when nobody was authenticated and 403 when the scopes do not reach. Fails closed:
a route without a recorded caller on an authenticated app refuses.
"""

from __future__ import annotations

import base64
import binascii
from http import HTTPStatus
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from quart import Response, current_app, g, jsonify, request

from trioscale.shared.model import ApiKey

from ..api import admin, live_api_key
from . import scopes as sc

__all__ = ["Caller", "AUTH_REQUIRED", "Forbidden", "authenticate", "needs", "require", "caller", "error",
           "TOKEN_PATH"]

#: app.config key: False only on the trusted unix socket (every caller may do everything there)
AUTH_REQUIRED = "TRIOSCALE_AUTH_REQUIRED"
#: the token endpoint authenticates with the client's own credentials
TOKEN_PATH = "/api/v2/oauth/token"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: its key (None on the unix socket), scopes (empty: all access), and,
    for an OAuth client's token, the tags it may give what it creates."""

    key: ApiKey | None
    scopes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def is_oauth(self) -> bool:
        return self.key is not None and self.key.oauth_client_id is not None

    def may(self, resource: str, write: bool) -> bool:
        return sc.grants(self.scopes, resource, write)


def error(status: int, message: str) -> Response:
    """Tailscale's error shape, `{"message": …}`, with the problem document's fields the rest of the
    admin API answers (api.error_response) alongside, so one client reads both."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    resp = jsonify({"message": message, "type": "about:blank", "title": title, "status": status, "detail": message})
    resp.status_code = status
    return resp


def _token(header: str) -> str | None:
    scheme, _, rest = header.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest
    if scheme.lower() == "basic" and rest:
        try:
            user, _, _ = base64.b64decode(rest, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


async def key_for(header: str) -> ApiKey | None:
    """The live API key the Authorization header names, or None (any doubt is a no)."""
    token = _token(header)
    if token is None:
        return None
    # a token is always issued with scopes; without, it would mean all access
    return await live_api_key(admin().store, token, lambda k: k.oauth_client_id is None or bool(k.scopes))


async def authenticate() -> Response | None:
    """Before every /api/v2 request on an authenticated listener: record the caller, or 401."""
    if request.path == TOKEN_PATH and request.method == "POST":
        return None  # the client authenticates with its own id and secret there
    key = await key_for(request.headers.get("Authorization", ""))
    if key is None:
        resp = error(401, "API token invalid or missing (give a tskey-api-… access token)")
        resp.headers["WWW-Authenticate"] = 'Basic realm="api", Bearer'
        return resp
    g.apiv2_caller = Caller(key, key.scopes, key.tags)
    return None


def caller() -> Caller | None:
    found = g.get("apiv2_caller")
    if found is not None:
        return found
    if current_app.config.get(AUTH_REQUIRED, True) is False:
        return Caller(None)
    return None


class Forbidden(Exception):
    """The caller's scopes do not reach (403); the message names the scope."""


def require(resource: str, write: bool) -> Caller:
    """The caller, if its scopes allow `resource` (read, or `write`); else Forbidden. For routes
    whose scope depends on what they find (keys)."""
    who = caller()
    if who is None:
        raise Forbidden("API token invalid or missing")
    if not who.may(resource, write):
        raise Forbidden(f"the access token lacks the scope {resource if write else resource + ':read'}")
    return who


Handler = Callable[..., Awaitable[Any]]


def needs(resource: str, write: bool) -> Callable[[Handler], Handler]:
    """The route needs `resource` (read, or `write`)."""

    def wrap(fn: Handler) -> Handler:
        @wraps(fn)
        async def route(*args: Any, **kwargs: Any) -> Any:
            who = caller()
            if who is None:
                return error(401, "API token invalid or missing")
            if not who.may(resource, write):
                need = resource if write else f"{resource}:read"
                return error(403, f"the access token lacks the scope {need}")
            return await fn(*args, **kwargs)

        route.apiv2_scope = (resource, write)  # type: ignore[attr-defined]
        return route

    return wrap
