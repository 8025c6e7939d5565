"""The admin API app: REST under /api/v1, Headscale's routes and shapes, one blueprint per resource.

On the unix socket (local and trusted) no authentication; on TCP every request (unknown paths too),
but for the API's own document and its page (openapi.py), needs `Authorization: Bearer tskey-api-…`
naming a known, unexpired API key. Any doubt -> 401.
Secrets are never logged: the access log is off and keys are masked.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from quart import Response, current_app, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException
from werkzeug.routing.exceptions import RoutingException

from trioscale.shared.net.requestid import begin_request, current_request_id
from trioscale.shared.store.base import Store

from ..options import AdminOptions
from . import apikeys, apiv2, health, nodes, openapi, policy, preauthkeys, registrations, routes, sharing, sshcheck, tags, users
from .api import Admin, admin, api_key_accepted, error_response, install, install_refusals

__all__ = ["create_admin_app", "route_table", "MAX_BODY"]

MAX_BODY = 64 * 1024

BLUEPRINTS = (health, users, preauthkeys, apikeys, nodes, registrations, tags, routes, sharing, policy, sshcheck, openapi,
              apiv2)


def create_admin_app(
    options: AdminOptions, store: Store, *, coordinator: Any | None, require_auth: bool = True
) -> QuartTrio:
    """The admin API app over `store`, waiting for this process's `coordinator` (None: there is
    none here) to apply what it changes. `require_auth=False` only for the trusted unix socket."""
    app = QuartTrio("trioscale.admin", static_folder=None, template_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config[apiv2.AUTH_REQUIRED] = require_auth
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install(app, Admin(options=options, store=store, log=logging.getLogger("trioscale.admin"), coordinator=coordinator))
    app.before_request(_begin_request)
    if require_auth:
        app.before_request(_authenticate)
    app.before_request(_answer_options)
    app.after_request(_finish_body)
    app.after_request(_end_request)
    _install_error_handlers(app)
    for module in BLUEPRINTS:
        app.register_blueprint(module.blueprint)
    return app


def route_table(app: QuartTrio) -> list[tuple[str, str]]:
    """Every (verb, path) the app serves, paths written as OpenAPI writes them (`/node/{nodeId}`):
    the one list of routes, read by the test against Headscale's document."""
    out = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(("/api/v1/", "/api/v2/")):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule.rule)
        out.update((m, path) for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
    return sorted(out, key=lambda r: (r[1], r[0]))


async def _begin_request() -> None:
    # on the control listener (the API mounted there) the control server has begun the request
    begin_request(request.headers.get("X-Request-Id") or current_request_id() or None)


async def _end_request(resp: Response) -> Response:
    """One DEBUG line per request (no query string, no header: those may carry credentials), and
    the request's id sent back so a client can quote it."""
    resp.headers["X-Request-Id"] = current_request_id()
    admin().log.debug("%s %s -> %d", request.method, request.path, resp.status_code)
    return resp


async def _authenticate() -> Response | None:
    if request.method == "GET" and request.path in openapi.PUBLIC_PATHS:
        return None  # the API's document and its page: nothing of the tailnet (openapi.py says why)
    if apiv2.is_v2_path(request.path):
        return await apiv2.authenticate()  # Tailscale's credentials and scopes (apiv2/auth.py)
    if await api_key_accepted(admin().store, request.headers.get("Authorization", "")):
        return None
    resp = error_response(401, "unauthorized: a valid API key is required (Authorization: Bearer tskey-api-…)")
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def served_methods(app: QuartTrio, path: str) -> list[str]:
    """The methods `path` serves, as Allow names them. A path that a fixed route and a templated
    one both match (`/api/v1/node/backfillips`, `/api/v1/node/{nodeId}`) is the fixed route's
    alone: the router tries fixed routes first, and the other methods only reach the templated
    route with a node id that is no id. Empty: no route has the path."""
    adapter = app.url_map.bind("localhost")
    found = {}
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
        except (HTTPException, RoutingException):
            continue
        found[method] = len(set(rule.arguments) - set(rule.defaults or {}))  # the path's own variables
    if not found:
        return []
    fewest = min(found.values())
    methods = {m for m, n in found.items() if n == fewest} | {"OPTIONS"}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def _answer_options() -> Response | None:
    """OPTIONS names what the path serves; a method only a templated route would take, on a path
    a fixed route serves (GET /api/v1/node/backfillips), is 405 as for any other path."""
    methods = served_methods(current_app, request.path)  # type: ignore[arg-type]
    if not methods:
        return None  # the router's 404
    if request.method == "OPTIONS":
        resp = Response("", status=200)
        resp.headers["Allow"] = ", ".join(methods)
        return resp
    if request.method not in methods:
        resp = error_response(405, f"method {request.method} not allowed on {request.path}")
        resp.headers["Allow"] = ", ".join(methods)
        return resp
    return None


async def _finish_body(resp: Response) -> Response:
    """Receive the rest of a body the answer did not need (a refusal, a route that reads none): left
    unread, it held up the next request on the same connection (found by Schemathesis). A body too
    large to take closes the connection instead."""
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not (request.content_length or chunked):
        return resp
    try:
        await request.get_data(cache=True)
    except Exception:
        resp.headers["Connection"] = "close"
    return resp


def _install_error_handlers(app: QuartTrio) -> None:
    """Every error is a problem document (api.error_response) with its status; an unexpected one is
    logged and is a 500."""

    install_refusals(app, error_response)

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        if exc.code == 404:
            return error_response(404, f"no such API endpoint: {request.method} {request.path}")
        if exc.code == 405:
            resp = error_response(405, f"method {request.method} not allowed on {request.path}")
            allowed = served_methods(current_app, request.path)  # type: ignore[arg-type]
            if allowed:  # RFC 9110 wants the methods the path serves named
                resp.headers["Allow"] = ", ".join(allowed)
            return resp
        return error_response(exc.code or 500, (exc.description or exc.name or "error").split("\n")[0])

    @app.errorhandler(Exception)
    async def _other(exc: Exception) -> Response:
        admin().log.error("admin API internal error on %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, "internal error (see the server log)")
