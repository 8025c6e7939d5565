"""The OpenID Connect client: Authlib's, on httpx2 (which runs on Trio through anyio).

Authlib does the protocol: the discovery document, state and nonce, the PKCE verifier and challenge,
the code exchange, the ID token's signature (keys from `jwks_uri`, fetched again when a token names
a key id it does not know: the provider rotated its keys) and claims (iss, aud, exp, iat, nonce).
This module bounds each step in time and turns every failure into a LoginRefused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import trio
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client import BaseApp, FrameworkIntegration
from authlib.integrations.base_client.async_app import AsyncOAuth2Mixin
from authlib.integrations.base_client.async_openid import AsyncOpenIDMixin
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc.errors import JoseError

from .errors import LoginRefused
from .identity import ClaimError, Identity, identity_from_claims

log = logging.getLogger("trioscale.coord.oidc")

#: the steps of one login's finish (token, keys, maybe keys again, userinfo) each get `timeout`
_STEPS = 4
#: the largest answer read from the provider, decoded: discovery documents, key sets, tokens and
#: userinfo are a few KiB, and a provider that sends more must not fill this process's memory
MAX_ANSWER = 1024 * 1024


class AnswerTooLarge(httpx2.DecodingError):
    """The provider's answer was larger than MAX_ANSWER (reading stopped there)."""


@dataclass(frozen=True)
class LoginStart:
    """One login sent to the provider: what the callback needs to finish it."""

    url: str
    state: str
    nonce: str
    redirect_uri: str
    code_verifier: str | None = None


class _BoundedClient(AsyncOAuth2Client):
    """Authlib's HTTP client, reading each answer's body up to MAX_ANSWER (httpx reads it whole)."""

    async def send(self, request: httpx2.Request, *, stream: bool = False, **kwargs: Any) -> httpx2.Response:
        response = await super().send(request, stream=True, **kwargs)
        if stream:
            return response
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise AnswerTooLarge(f"the answer is larger than {MAX_ANSWER} bytes", request=request)
                chunks.append(chunk)
        finally:
            await response.aclose()
        response._content = b"".join(chunks)  # what aread() would have left: .content, .json() read it
        return response


class _App(AsyncOAuth2Mixin, AsyncOpenIDMixin, BaseApp):
    """Authlib's async OAuth 2 + OpenID client, without a web framework's session (we keep the
    state ourselves, in PendingLogins)."""

    client_cls = _BoundedClient


class OidcClient:
    """One provider (`options`: OidcOptions). Safe to share between concurrent logins."""

    def __init__(self, options) -> None:
        self.options = options
        client_kwargs: dict[str, Any] = {"scope": " ".join(options.scope),
                                         "timeout": options.timeout.total_seconds()}
        if options.pkce_enabled:
            client_kwargs["code_challenge_method"] = options.pkce_method
        self._app = _App(
            FrameworkIntegration("trioscale"),
            name="oidc",
            client_id=options.client_id,
            client_secret=options.client_secret or None,
            server_metadata_url=options.issuer.rstrip("/") + "/.well-known/openid-configuration",
            client_kwargs=client_kwargs,
            authorize_params=dict(options.extra_params) or None,
        )
        self._timeout = options.timeout.total_seconds()

    async def discover(self) -> Mapping[str, Any]:
        """The provider's discovery document (read once, then kept; a failure is tried again next
        time). LoginRefused(502) when the provider does not answer or answers for another issuer."""
        with _provider_errors("read the provider's discovery document"):
            with trio.fail_after(self._timeout):
                metadata = await self._app.load_server_metadata()
        issuer = str(metadata.get("issuer", ""))
        if issuer.rstrip("/") != self.options.issuer.rstrip("/"):
            # the document must name the issuer we asked (OpenID Connect Discovery §4.3)
            self._app.server_metadata.clear()
            raise LoginRefused(502, f"the provider's discovery document names issuer {issuer!r}, "
                                    f"not {self.options.issuer!r}")
        return metadata

    async def start(self, redirect_uri: str) -> LoginStart:
        """A new login: the URL to send the browser to, with a fresh state, nonce and (with PKCE)
        code verifier, which the caller keeps until the callback."""
        await self.discover()
        with _provider_errors("start the login"):
            started = await self._app.create_authorization_url(redirect_uri)
        return LoginStart(url=started["url"], state=started["state"], nonce=started["nonce"],
                          redirect_uri=redirect_uri, code_verifier=started.get("code_verifier"))

    async def finish(self, start: LoginStart, query: Mapping[str, str]) -> Identity:
        """The callback of `start` with the provider's `query` (code, or error): exchanges the code,
        verifies the ID token (signature, issuer, audience, expiry, nonce), asks userinfo for the
        profile, and returns the Identity. LoginRefused when any of it fails."""
        if query.get("error"):
            reason = query.get("error_description") or query["error"]
            raise LoginRefused(403, f"the identity provider refused the login: {reason[:300]}")
        code = query.get("code", "")
        if not code:
            raise LoginRefused(400, "the identity provider sent no authorization code")
        await self.discover()
        params: dict[str, Any] = {"code": code}
        if start.code_verifier:
            params["code_verifier"] = start.code_verifier
        with _provider_errors("finish the login"), trio.fail_after(self._timeout * _STEPS):
            token = await self._app.fetch_access_token(start.redirect_uri, **params)
            if "id_token" not in token:
                raise LoginRefused(403, "the identity provider sent no ID token")
            try:
                claims = await self._app.parse_id_token(token, nonce=start.nonce)
            except (JoseError, ValueError) as exc:
                log.info("an ID token failed verification: %s", type(exc).__name__)
                raise LoginRefused(403, f"the ID token did not verify ({_describe(exc)})") from None
            userinfo = await self._userinfo(token)
        try:
            return identity_from_claims(dict(claims), userinfo)
        except ClaimError as exc:
            raise LoginRefused(400, str(exc)) from None

    async def _userinfo(self, token: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The userinfo endpoint's claims (groups and email often come only from there), or None:
        the ID token's claims alone then, as Headscale does."""
        if not self._app.server_metadata.get("userinfo_endpoint") or "access_token" not in token:
            return None
        try:
            info = await self._app.userinfo(token=dict(token))
        except (httpx2.HTTPError, AuthlibBaseError, ValueError) as exc:
            log.info("the provider's userinfo failed (%s); using the ID token's claims", type(exc).__name__)
            return None
        return dict(info)


class _provider_errors:
    """Failures talking to the provider become LoginRefused: 504 when it did not answer in time,
    502 when it could not be reached or answered badly, 403 when it refused the code."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, LoginRefused):
            return False
        if isinstance(exc, trio.TooSlowError) or isinstance(exc, httpx2.TimeoutException):
            raise LoginRefused(504, f"the identity provider did not answer in time (trying to {self.doing})") from None
        if isinstance(exc, AnswerTooLarge):
            raise LoginRefused(502, f"the identity provider's answer was larger than {MAX_ANSWER} bytes "
                                    f"(trying to {self.doing})") from None
        if isinstance(exc, httpx2.HTTPStatusError):
            raise LoginRefused(502, f"the identity provider answered HTTP {exc.response.status_code} "
                                    f"(trying to {self.doing})") from None
        if isinstance(exc, httpx2.HTTPError):
            raise LoginRefused(502, f"the identity provider could not be reached (trying to {self.doing}): "
                                    f"{type(exc).__name__}") from None
        if isinstance(exc, AuthlibBaseError):
            # the token endpoint's OAuth error (invalid_grant: a code used twice or expired, …)
            raise LoginRefused(403, f"the identity provider refused the login ({_describe(exc)})") from None
        if isinstance(exc, (JoseError, ValueError, KeyError, TypeError)):
            raise LoginRefused(502, f"the identity provider's answer could not be read (trying to {self.doing}): "
                                    f"{_describe(exc)}") from None
        return False


def _describe(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    description = getattr(exc, "description", None)
    text = ": ".join(str(p) for p in (error, description) if p) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__
