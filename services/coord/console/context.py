"""What the console's routes share: their handles (`console()`), the signed-in session (`session()`),
the path prefix, and the plain-text refusal."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from quart import Response, current_app, g, request

from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import utcnow
from trioscale.shared.store.base import Store

from ..options import AdminOptions, ConsoleOptions
from .apicall import ApiClient
from .sessions import ConsoleSession, SessionTable

__all__ = ["Console", "PREFIX", "console", "session", "refusal", "api_key_label", "install"]

PREFIX = "/console"

class Console:
    """What the console's routes work with (found from the request with `console()`)."""

    def __init__(self, options: ConsoleOptions, admin_options: AdminOptions, store: Store,
                 coordinator: Any | None, api: ApiClient, log: logging.Logger,
                 key_check: Callable[[Store, str], Awaitable[bool]]) -> None:
        self.options = options
        self.admin_options = admin_options
        self.store = store
        self.coordinator = coordinator
        self.api = api
        self.log = log
        self.key_check = key_check
        self.sessions = SessionTable(options.session_lifetime.total_seconds())
        #: open server-sent event streams, all sessions together (events.py)
        self.streams = 0
        #: the identity provider's client and the logins under way (oidcsignin.py), when configured
        self.oidc: Any = None
        self.oidc_logins: Any = None

    @property
    def secure(self) -> bool:
        """Whether browsers reach us over TLS (console.url, or the listener's own certificate): the
        cookies are then Secure. On plain-HTTP loopback they cannot be (the browser would drop them)."""
        return self.options.url.startswith("https://") or request.scheme == "https"

    @property
    def cookie(self) -> str:
        """`__Host-` (Secure, this host only, path /) where the browser allows that prefix."""
        return ("__Host-" if self.secure else "") + "trioscale-console"

    @property
    def login_cookie(self) -> str:
        return ("__Host-" if self.secure else "") + "trioscale-console-login"

    async def key_holds(self, session: ConsoleSession) -> bool:
        """Whether the API key a session was opened with is still known and unexpired (a session
        opened through the identity provider has none). Any doubt is a no."""
        if session.api_key_prefix is None:
            return True
        try:
            key = await self.store.get_api_key_by_prefix(session.api_key_prefix)
        except Exception:
            return False
        return key is not None and not key.is_expired(utcnow())

    def origin(self) -> str:
        """The origin a same-site browser request names: console.url's, else this request's host."""
        if self.options.url:
            parts = urlsplit(self.options.url)
            return f"{parts.scheme}://{parts.netloc}"
        return f"{request.scheme}://{request.host}"

    def set_cookie(self, resp: Response, name: str, value: str, *, max_age: int, same_site: str = "Strict") -> None:
        resp.set_cookie(name, value, max_age=max_age, path="/", secure=self.secure, httponly=True, samesite=same_site)


_EXTENSION = "trioscale.console"


def install(app: Any, handles: Console) -> None:
    app.extensions[_EXTENSION] = handles


def console() -> Console:
    return current_app.extensions[_EXTENSION]


def session() -> ConsoleSession:
    return g.console_session


def refusal(status: int, message: str) -> Response:
    resp = Response(message + "\n", status=status, mimetype="text/plain")
    return resp



def api_key_label(text: str) -> tuple[str, str]:
    """(prefix, label) of a pasted API key; ValueError if it is not one."""
    kind, prefix, _secret = keys.split_key(text)
    if kind != keys.KIND_API:
        raise ValueError("not an API key")
    return prefix, f"API key {prefix}"
