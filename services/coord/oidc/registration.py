"""The interactive registration's web pages on the control listener, as Headscale serves them.

    GET  /register/<id>          an unknown or expired id: 404; without OIDC: how the admin approves
                                 it; with OIDC: a redirect to the provider (state, nonce, PKCE)
    GET  /oidc/callback          the provider sends the browser back: the login is checked (state
                                 and its cookie, the code, the ID token, oidc.allowed_*), then the
                                 device is shown for confirmation
    POST /register/confirm/<id>  the user confirms (CSRF token in the form and a cookie): the user
                                 of (issuer, subject) is created or updated and the node registered

A refused login ends on a page that says why (400/403, 502/504 when the provider failed) and
changes nothing: no user is created before the confirmation, and the registration stays pending,
so the device's `tailscale up` keeps waiting and a new login may still approve it.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.cookies import CookieError, SimpleCookie

from urllib.parse import parse_qsl, urlsplit

from trioscale.shared.model import PendingRegistration
from trioscale.shared.proto import keys
from trioscale.shared.store.base import Conflict, NotFound, Store, StoreError

from .. import register
from ..metrics import count_registration
from . import pages
from .client import LoginStart, OidcClient
from .errors import LoginRefused
from .identity import Identity, check_allowed
from .logins import PendingLogins
from .users import login_user

log = logging.getLogger("trioscale.coord.oidc")

CALLBACK_PATH = "/oidc/callback"
CONFIRM_PREFIX = "/register/confirm/"
#: a login under way lives this long between the redirect and the callback, and as long again until confirmed
LOGIN_LIFETIME = 600.0
MAX_LOGINS = 1024
MAX_FORM_BYTES = 4096
_STATE_COOKIE = "trioscale_oidc_"
_CSRF_FIELD = "trioscale_confirm"
_HTML = ("content-type", "text/html; charset=utf-8")
_NO_STORE = ("cache-control", "no-store")

Answer = tuple[int, list[tuple[str, str]], bytes]


@dataclass(frozen=True)
class _Login:
    start: LoginStart
    reg_id: str


@dataclass(frozen=True)
class _Confirmation:
    identity: Identity
    csrf: str


class RegistrationPages:
    """`/register/*` and `/oidc/callback`. `oidc` (OidcOptions) None: no OIDC login."""

    def __init__(self, store: Store, policy: register.RegistrationPolicy, now: Callable[[], datetime],
                 oidc=None, *, client: OidcClient | None = None, limit: int = MAX_LOGINS,
                 lifetime: float = LOGIN_LIFETIME) -> None:
        self.store = store
        self.policy = policy
        self.now = now
        self.options = oidc
        self.client = client or (OidcClient(oidc) if oidc is not None else None)
        self.logins: PendingLogins[_Login] = PendingLogins(limit=limit, lifetime=lifetime)
        self.confirmations: PendingLogins[_Confirmation] = PendingLogins(limit=limit, lifetime=lifetime)
        base = policy.server_url.rstrip("/")
        self.redirect_uri = base + CALLBACK_PATH
        self.secure = urlsplit(base).scheme == "https"

    def serves(self, method: str, path: str) -> bool:
        return (method == "GET" and (path.startswith("/register/") or path == CALLBACK_PATH)) or (
            method == "POST" and path.startswith(CONFIRM_PREFIX))

    async def http(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        path, _, query = target.partition("?")
        try:
            if method == "POST" and path.startswith(CONFIRM_PREFIX):
                return await self._confirm(path[len(CONFIRM_PREFIX):], headers, body)
            if path == CALLBACK_PATH:
                return await self._callback(query, headers)
            return await self._register(path[len("/register/"):])
        except LoginRefused as exc:
            if path == CALLBACK_PATH or path.startswith(CONFIRM_PREFIX):
                count_registration("oidc", {"Error": str(exc)})
            return exc.status, [_HTML, _NO_STORE], pages.refused(exc.status, str(exc))
        except StoreError as exc:
            log.warning("a login step failed in the store: %s", exc)
            return 503, [_HTML, _NO_STORE], pages.refused(503, "the server could not finish the login; try again")

    # -- GET /register/<id> -----------------------------------------------------------------------
    async def _register(self, reg_id: str) -> Answer:
        reg = await self._pending(reg_id)
        if reg is None:
            return 404, [_HTML, _NO_STORE], pages.unknown_registration(reg_id)
        if self.client is None:
            return 200, [_HTML, _NO_STORE], pages.admin_approval(reg.id)
        start = await self.client.start(self.redirect_uri)
        self.logins.put(start.state, _Login(start, reg.id))
        cookie = self._cookie(_STATE_COOKIE + start.state[:16], start.state, CALLBACK_PATH, same_site="Lax")
        return 302, [("location", start.url), ("set-cookie", cookie), _NO_STORE], b""

    async def _pending(self, reg_id: str) -> PendingRegistration | None:
        if not reg_id or len(reg_id) > 128 or "/" in reg_id:
            return None
        reg = await self.store.get_pending_registration(reg_id)
        if reg is None or reg.node_id is not None or reg.created_at + register.PENDING_LIFETIME <= self.now():
            return None
        return reg

    # -- GET /oidc/callback -------------------------------------------------------------------
    async def _callback(self, query: str, headers: Mapping[str, str]) -> Answer:
        if self.client is None:
            return 404, [("content-type", "text/plain")], b"not found\n"
        try:
            params = dict(parse_qsl(query, keep_blank_values=True, max_num_fields=32))
        except ValueError:
            raise LoginRefused(400, "the identity provider's answer could not be read") from None
        state = params.get("state", "")
        if not state:
            raise LoginRefused(400, "the identity provider's answer has no state: start the login again")
        login = self.logins.peek(state)
        if login is None:
            raise LoginRefused(400, "this login is unknown or has expired: run tailscale up again")
        # the state's cookie ties the callback to the browser that started the login (no login CSRF)
        cookie = _cookies(headers).get(_STATE_COOKIE + state[:16], "")
        if not hmac.compare_digest(cookie.encode(), state.encode()):
            raise LoginRefused(403, "this login was started in another browser: open the login link here again")
        self.logins.take(state)
        identity = await self.client.finish(login.start, params)
        check_allowed(self.options, identity)
        reg = await self._pending(login.reg_id)
        if reg is None:
            raise LoginRefused(400, "the device stopped waiting for this login: run tailscale up again")
        self._node_expiry(identity)  # refuse a token that already expired before asking the user
        csrf = secrets.token_urlsafe(32)
        self.confirmations.put(reg.id, _Confirmation(identity, csrf))
        action = CONFIRM_PREFIX + reg.id
        hostinfo = reg.hostinfo or {}
        body = pages.confirm(action, _CSRF_FIELD, csrf, who=_display(identity),
                             hostname=str(hostinfo.get("Hostname") or ""), os_name=str(hostinfo.get("OS") or ""),
                             machine=keys.MACHINE.format(reg.machine_key)[:24] + "…")
        clear = self._cookie(_STATE_COOKIE + state[:16], "", CALLBACK_PATH, same_site="Lax", max_age=0)
        return 200, [_HTML, _NO_STORE, ("set-cookie", clear),
                     ("set-cookie", self._cookie(_CSRF_FIELD, csrf, action, same_site="Strict"))], body

    # -- POST /register/confirm/<id> ----------------------------------------------------------
    async def _confirm(self, reg_id: str, headers: Mapping[str, str], body: bytes) -> Answer:
        if self.client is None:
            return 404, [("content-type", "text/plain")], b"not found\n"
        if len(body) > MAX_FORM_BYTES:
            raise LoginRefused(413, "the form is too large")
        try:
            form = dict(parse_qsl(body.decode("utf-8"), max_num_fields=8))
        except (UnicodeDecodeError, ValueError):
            raise LoginRefused(400, "the form could not be read") from None
        token = form.get(_CSRF_FIELD, "")
        cookie = _cookies(headers).get(_CSRF_FIELD, "")
        if not token or not cookie or not hmac.compare_digest(token.encode(), cookie.encode()):
            raise LoginRefused(403, "the confirmation did not come from the login page in this browser")
        pending = self.confirmations.peek(reg_id)
        if pending is None or not hmac.compare_digest(pending.csrf.encode(), token.encode()):
            raise LoginRefused(400, "this confirmation is unknown or has expired: run tailscale up again")
        self.confirmations.take(reg_id)
        identity = pending.identity
        reg = await self._pending(reg_id)
        if reg is None:
            raise LoginRefused(400, "the device stopped waiting for this login: run tailscale up again")
        policy = dataclasses.replace(self.policy, node_expiry=self._node_expiry(identity))
        existing = await self.store.get_node_by_machine_key(reg.machine_key)
        user, created = await login_user(self.store, self.options, identity)
        try:
            node = await register.complete_registration(self.store, reg.id, user, self.now(), policy,
                                                        register_method="oidc")
        except (NotFound, Conflict):
            raise LoginRefused(400, "the device stopped waiting for this login: run tailscale up again") from None
        count_registration("oidc", {"MachineAuthorized": True})
        log.info("node %s logged in through OIDC as user %s (%s)%s", node.id, user.id, user.name,
                 " (a new user)" if created else "")
        verb = "reauthenticated" if existing is not None else "logged in"
        clear = self._cookie(_CSRF_FIELD, "", CONFIRM_PREFIX + reg_id, same_site="Strict", max_age=0)
        return 200, [_HTML, _NO_STORE, ("set-cookie", clear)], pages.done(user.name, node.given_name, verb)

    def _node_expiry(self, identity: Identity):
        """How long the node stays valid: the ID token's remaining life with use_expiry_from_token,
        else `node.expiry` (the registration policy's)."""
        if not self.options.use_expiry_from_token:
            return self.policy.node_expiry
        if identity.expiry is None:
            raise LoginRefused(403, "the ID token has no expiry, and oidc.use_expiry_from_token needs one")
        left = identity.expiry - self.now()
        if left.total_seconds() <= 0:
            raise LoginRefused(403, "the ID token has already expired")
        return left

    def _cookie(self, name: str, value: str, path: str, *, same_site: str, max_age: int | None = None) -> str:
        age = int(LOGIN_LIFETIME) if max_age is None else max_age
        parts = [f"{name}={value}", f"Path={path}", f"Max-Age={age}", "HttpOnly", f"SameSite={same_site}"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


def _cookies(headers: Mapping[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    raw = headers.get("cookie", "")
    # several Cookie headers arrive joined with ", " (headers_dict); browsers send one, "; "-separated
    for chunk in raw.replace(", ", "; ").split("; "):
        try:
            jar.load(chunk)
        except CookieError:
            continue
    return {k: m.value for k, m in jar.items()}


def _display(identity: Identity) -> str:
    if identity.name and identity.email:
        return f"{identity.name} <{identity.email}>"
    return identity.email or identity.name or identity.username or identity.subject


__all__ = ["CALLBACK_PATH", "CONFIRM_PREFIX", "RegistrationPages"]
