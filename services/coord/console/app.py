"""The console app and its mount on the admin listener.

Every request but the sign-in pages and the static files needs a session (sessions.py); every POST
also needs the session's form token and a same-origin browser (Origin, else Sec-Fetch-Site). A
refusal is a redirect to the sign-in page (a page load) or a 403 (a form post, a fragment, the event
stream), never an error page with a traceback. Every answer carries a Content-Security-Policy that
allows scripts from this origin only (no inline script anywhere).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from quart import Response, g, redirect, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trioscale.shared.store.base import Store

from ..options import AdminOptions
from . import events, oidcsignin, pages, signin
from .apicall import ApiClient
from .context import PREFIX, Console, console, install, refusal

__all__ = ["create_console_app", "mount_console", "same_origin"]

HERE = Path(__file__).parent
MAX_FORM = 256 * 1024  # the policy text is the largest form

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

#: paths (below PREFIX) answered without a session
OPEN_PATHS = ("/signin", "/oidc/start", "/oidc/callback")


def create_console_app(options: AdminOptions, store: Store, *, coordinator: Any | None, api_app: Any,
                       key_check: Callable[[Store, str], Awaitable[bool]]) -> QuartTrio:
    """The console over `store`; its actions are requests to `api_app` (an admin API app without
    authentication, never bound to a socket), and a pasted API key is judged by `key_check` (the
    API's own check of an Authorization header), both handed in by the admin server."""
    assert options.console is not None
    app = QuartTrio("trioscale.console", static_folder=str(HERE / "static"), static_url_path=PREFIX + "/static",
                    template_folder=str(HERE / "templates"))
    app.config["MAX_CONTENT_LENGTH"] = MAX_FORM
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FORM
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 3600
    app.jinja_env.autoescape = True
    handles = Console(options.console, options, store, coordinator, ApiClient(api_app),
                      logging.getLogger("trioscale.console"), key_check)
    install(app, handles)
    app.before_request(_guard)
    app.after_request(_headers)
    _install_error_handlers(app)
    if options.console.oidc is not None:
        oidcsignin.install(app, handles)
    app.register_blueprint(signin.blueprint)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(events.blueprint)
    return app


def mount_console(admin_app: QuartTrio, console_app: QuartTrio) -> Callable[..., Awaitable[None]]:
    """One ASGI app for the admin listener: `console_app` answers `/console…` (and `/`), `admin_app`
    everything else (the API unchanged, and the lifespan)."""

    async def dispatch(scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/" or path == PREFIX or path.startswith(PREFIX + "/")):
            await console_app(scope, receive, send)
        else:
            await admin_app(scope, receive, send)

    return dispatch


def _below_prefix() -> str:
    return request.path[len(PREFIX):] if request.path.startswith(PREFIX) else request.path


async def _guard() -> Response | None:
    c = console()
    path = _below_prefix()
    if request.path == "/" or request.path == PREFIX:
        return redirect(PREFIX + "/", 303)
    if path.startswith("/static/"):
        return None
    if request.method not in ("GET", "HEAD") and not same_origin():
        c.log.warning("console: refused a cross-site %s %s", request.method, request.path)
        return refusal(403, "refused: this form was not sent from the console's own pages")
    if path in OPEN_PATHS:
        return None
    found = c.sessions.find(request.cookies.get(c.cookie))
    if found is not None and not await c.key_holds(found):
        c.sessions.close(request.cookies.get(c.cookie))
        found = None
    if found is None:
        if request.method in ("GET", "HEAD") and "fragment" not in request.args and path != "/events":
            return redirect(PREFIX + "/signin", 303)
        return refusal(403, "refused: sign in first")
    g.console_session = found
    if request.method not in ("GET", "HEAD"):
        form = await request.form
        if not found.csrf_ok(form.get("csrf")):
            c.log.warning("console: refused a %s %s without the session's form token", request.method, request.path)
            return refusal(403, "refused: the form's token is missing or stale; reload the page and try again")
    return None


def same_origin() -> bool:
    """Whether a browser sent this from our own pages: Origin names us, or (no Origin) Sec-Fetch-Site
    says same-origin. A client that sends neither is no browser a page could drive; the form token
    still has to match."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin == console().origin()
    site = request.headers.get("Sec-Fetch-Site")
    return site in (None, "same-origin", "none")


async def _headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "same-origin"
    if not _below_prefix().startswith("/static/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


def _install_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        return refusal(exc.code or 500, (exc.description or exc.name or "error").split("\n")[0])

    @app.errorhandler(Exception)
    async def _other(exc: Exception) -> Response:
        console().log.error("console internal error on %s %s", request.method, request.path, exc_info=exc)
        return refusal(500, "internal error (see the server log)")
