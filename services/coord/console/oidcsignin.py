"""Signing in to the console through the identity provider (the `oidc:` keys), with the same client
as the interactive login (services/coord/oidc): discovery, state, nonce, PKCE and the ID token's
checks are its. Who may sign in is `console.admins`: a verified email, or the provider's id of the
user (`issuer/subject`, as users.provider_id keeps it). Anyone else sees why and gets no session.

    GET /console/oidc/start      → the provider (the login's state kept here and in a cookie)
    GET /console/oidc/callback   → a session, or the sign-in page saying why not
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, redirect, request

from ..oidc import Identity, LoginRefused, LoginStart, OidcClient, PendingLogins
from .context import PREFIX, Console, console
from .signin import signin_page, start_session

__all__ = ["install", "admitted"]

blueprint = Blueprint("console_oidc", __name__)

#: logins under way (anyone can start one: bounded), and how long one may take
MAX_LOGINS = 256
LOGIN_LIFETIME = 600


def install(app: Any, handles: Console) -> None:
    handles.oidc = OidcClient(handles.options.oidc)
    handles.oidc_logins = PendingLogins(limit=MAX_LOGINS, lifetime=LOGIN_LIFETIME)
    app.register_blueprint(blueprint)


def admitted(admins: tuple[str, ...], identity: Identity) -> bool:
    """Whether `identity` is one of the console's admins."""
    wanted = {a.strip().lower() for a in admins if a.strip()}
    if identity.provider_id and identity.provider_id.lower() in wanted:
        return True
    return bool(identity.email) and identity.email_verified and identity.email.lower() in wanted


def _state_cookie(c: Console) -> str:
    return ("__Host-" if c.secure else "") + "trioscale-console-oidc"


async def _refused(reason: str, status: int = 403) -> Response:
    return await signin_page(reason, status)


@blueprint.get(PREFIX + "/oidc/start")
async def start() -> Response:
    c = console()
    try:
        begun: LoginStart = await c.oidc.start(c.origin() + PREFIX + "/oidc/callback")
    except LoginRefused as exc:
        c.log.warning("console: sign-in through the identity provider could not start: %s", exc)
        return await _refused(f"The identity provider cannot be used now: {exc}", 502)
    c.oidc_logins.put(begun.state, begun)
    resp = redirect(begun.url, 303)
    # Lax: the provider's redirect back is a cross-site navigation, which must carry it
    c.set_cookie(resp, _state_cookie(c), begun.state, max_age=LOGIN_LIFETIME, same_site="Lax")
    return resp


@blueprint.get(PREFIX + "/oidc/callback")
async def callback() -> Response:
    c = console()
    state = request.args.get("state", "")
    mine = request.cookies.get(_state_cookie(c), "")
    begun = c.oidc_logins.take(state) if state and state == mine else None
    if begun is None:
        return await _refused("That sign-in expired or was started in another browser; sign in again.", 400)
    if len(request.args) > 32:
        return await _refused("The identity provider's answer was not understood.", 400)
    try:
        identity = await c.oidc.finish(begun, {k: v[:4096] for k, v in request.args.items()})
    except LoginRefused as exc:
        c.log.info("console: a sign-in through the identity provider was refused: %s", exc)
        return await _refused(f"Sign-in refused: {exc}")
    if not admitted(c.options.admins, identity):
        c.log.warning("console: %s signed in at the identity provider but is not a console admin",
                      identity.email or identity.provider_id)
        return await _refused(f"{identity.email or identity.username or identity.subject} is not a console admin "
                              "(console.admins).")
    resp = start_session(identity.email or identity.provider_id)
    resp.delete_cookie(_state_cookie(c), path="/", secure=c.secure, httponly=True)
    return resp
