"""POST /api/v2/oauth/token: OAuth 2.0's client credentials grant (RFC 6749 §4.4).

The client authenticates with its id and secret (`tskey-client-<id>-<secret>`), as HTTP Basic or in
the form; the answer is a Bearer access token (`tskey-api-…`) that lives TOKEN_LIFETIME, with the
client's scopes (or the part of them asked for in `scope`) and its tags (or those asked for in
`tags`). Errors are RFC 6749 §5.2's (`{"error": …}`, 400, or 401 for a client that did not
authenticate).
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from quart import Response, jsonify, request

from trioscale.shared.domain import secrets as keys
from trioscale.shared.model import OAuthClient, utcnow

from ..api import admin
from . import scopes as sc
from .auth import TOKEN_PATH
from .common import blueprint

__all__ = ["TOKEN_LIFETIME", "authenticate_client"]

#: Tailscale's access tokens live an hour
TOKEN_LIFETIME = timedelta(hours=1)
_MAX_FORM = 8 * 1024


def _oauth_error(status: int, code: str, description: str) -> Response:
    # RFC 6749's fields, and the admin API's problem fields for clients that read those
    resp = jsonify({"error": code, "error_description": description, "status": status, "detail": description})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Basic realm="oauth"'
    return resp


async def authenticate_client(client_id: str, secret_text: str) -> OAuthClient | None:
    """The client if `secret_text` is its secret (the whole `tskey-client-…`); any doubt is None."""
    try:
        kind, prefix, secret = keys.split_key(secret_text)
        if kind != keys.KIND_CLIENT or (client_id and client_id != prefix):
            return None
        client = await admin().store.get_oauth_client_by_client_id(prefix)
        if client is None or not keys.verify(secret, client.secret_hash):
            return None
        return client
    except Exception:
        return None


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "basic" or not rest.strip():
        return None
    try:
        user, sep, password = base64.b64decode(rest.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    # RFC 6749 §2.3.1: both are form-url-encoded before Basic encoding
    return (unquote_plus(user), unquote_plus(password)) if sep else None


@blueprint.post(TOKEN_PATH)
async def token() -> Any:
    raw = await request.get_data(as_text=False)
    if len(raw) > _MAX_FORM:
        return _oauth_error(400, "invalid_request", "the request body is too large")
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    form: dict[str, str] = {}
    if ctype == "application/x-www-form-urlencoded":  # RFC 6749's only form; anything else carries nothing
        try:
            form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
        except (UnicodeDecodeError, ValueError):
            return _oauth_error(400, "invalid_request", "the form is not valid")
    basic = _basic(request.headers.get("Authorization", ""))
    client_id, secret = basic if basic else (form.get("client_id", ""), form.get("client_secret", ""))
    if not secret:
        return _oauth_error(401, "invalid_client", "client authentication is required "
                                                   "(client_id and client_secret, or HTTP Basic)")
    client = await authenticate_client(client_id, secret)
    if client is None:
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only grant_type=client_credentials is supported")
    try:
        asked = sc.normalize(form.get("scope", ""))
    except sc.ScopeError as exc:
        return _oauth_error(400, "invalid_scope", str(exc))
    beyond = [s for s in asked if not _within(s, client.scopes)]
    if beyond:
        return _oauth_error(400, "invalid_scope", f"the client may not have {', '.join(beyond)}")
    scopes = asked or client.scopes
    tags = tuple(form.get("tags", "").replace(",", " ").split()) or client.tags
    if any(t not in client.tags for t in tags):
        return _oauth_error(400, "invalid_scope", "the client may only ask for its own tags")
    new = keys.generate_api_key()
    await admin().store.issue_access_token(client.id, new.prefix, new.key_hash, scopes=scopes, tags=tags,
                                           expiration=utcnow() + TOKEN_LIFETIME)
    admin().log.info("OAuth access token issued to client %s (prefix %s)", client.client_id, new.prefix)
    resp = jsonify({"access_token": new.text, "token_type": "Bearer",
                    "expires_in": int(TOKEN_LIFETIME.total_seconds()), "scope": " ".join(scopes)})
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _within(scope: str, held: tuple[str, ...]) -> bool:
    """Whether a client holding `held` may hand out `scope`."""
    if scope.endswith(":read"):
        return sc.grants(held, scope[: -len(":read")], False) if held else False
    return sc.grants(held, scope, True) if held else False
