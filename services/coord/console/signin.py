"""Signing in and out: an API key pasted into a form, or the identity provider (oidcsignin.py).

The sign-in form carries a token that must equal a short-lived cookie of its own (a page on another
site can neither read nor set it), so nobody can sign a browser in with their key behind its back.
"""

from __future__ import annotations

import secrets
from quart import Blueprint, Response, redirect, render_template, request

from .context import PREFIX, api_key_label, console, refusal, session

__all__ = ["blueprint", "signin_page", "start_session"]

blueprint = Blueprint("console_signin", __name__)

LOGIN_FORM_LIFETIME = 600


async def signin_page(error: str = "", status: int = 200) -> Response:
    c = console()
    token = secrets.token_urlsafe(24)
    html = await render_template("signin.html", login_token=token, error=error, oidc=c.oidc is not None,
                                 oidc_start=PREFIX + "/oidc/start")
    resp = Response(html, status=status, mimetype="text/html")
    c.set_cookie(resp, c.login_cookie, token, max_age=LOGIN_FORM_LIFETIME)
    return resp


@blueprint.get(PREFIX + "/signin")
async def signin_form() -> Response:
    return await signin_page(request.args.get("error", "")[:200])


@blueprint.post(PREFIX + "/signin")
async def signin_with_key() -> Response:
    c = console()
    form = await request.form
    expected = request.cookies.get(c.login_cookie, "")
    if not expected or not secrets.compare_digest(expected.encode(), form.get("login_token", "").encode()):
        return refusal(403, "refused: the sign-in form expired or was not ours; open the sign-in page again")
    key = form.get("api_key", "").strip()
    if not key or len(key) > 200 or not await c.key_check(c.store, "Bearer " + key):
        c.log.info("console: sign-in with an API key refused")
        return await signin_page("That API key is not valid (unknown, expired or mistyped).", 403)
    prefix, who = api_key_label(key)
    return start_session(who, api_key_prefix=prefix)


def start_session(who: str, *, api_key_prefix: str | None = None) -> Response:
    """Open a session for `who` and send the browser to the console with its cookie."""
    c = console()
    token, _ = c.sessions.open(who, api_key_prefix=api_key_prefix)
    c.log.info("console: %s signed in", who)
    resp = redirect(PREFIX + "/nodes", 303)
    c.set_cookie(resp, c.cookie, token, max_age=int(c.options.session_lifetime.total_seconds()))
    resp.delete_cookie(c.login_cookie, path="/", secure=c.secure, httponly=True)
    return resp


@blueprint.post(PREFIX + "/signout")
async def signout() -> Response:
    c = console()
    c.log.info("console: %s signed out", session().who)
    c.sessions.close(request.cookies.get(c.cookie))
    resp = redirect(PREFIX + "/signin", 303)
    resp.delete_cookie(c.cookie, path="/", secure=c.secure, httponly=True)
    return resp
