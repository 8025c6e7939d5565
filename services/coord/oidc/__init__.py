"""OpenID Connect login: the client (Authlib), the identity it yields, the rules of who may log in,
the bounded table of logins under way, and the interactive registration's web flow.

The interface other parts use (the web console signs in through the same client):

    client = OidcClient(options)                       # options: services.coord.options.OidcOptions
    await client.discover()                            # reads the discovery document (LoginRefused 502)
    start = await client.start(redirect_uri)           # LoginStart: .url to send the browser to, .state,
                                                       #   .nonce, .code_verifier (PKCE), .redirect_uri
    identity = await client.finish(start, query)       # query: the callback's parameters (code, state,
                                                       #   or error); returns an Identity or raises
                                                       #   LoginRefused(status, reason)
    check_allowed(options, identity)                   # allowed_domains/users/groups, verified email:
                                                       #   LoginRefused(403, reason) when refused
    user, created = await login_user(store, options, identity)  # the User of (issuer, subject), profile updated
    logins = PendingLogins(limit=1024, lifetime=600)   # state → LoginStart (+ what to do after), single use

`Identity` has issuer, subject, provider_id (Headscale's key: issuer/subject, what `trioscale import
headscale` keeps in users.provider_id), username (preferred_username), name, email, email_verified,
picture, groups and expiry (the ID token's). Discovery, state, nonce, PKCE, the ID token's
signature and claims, and fetching the provider's keys again when it rotates them are Authlib's;
every call to the provider is bounded by `options.timeout`.

`registration.RegistrationLogin` is the control listener's part: `/register/<id>` → the provider →
`/oidc/callback` → a confirmation page → `POST /register/confirm/<id>` approves the registration.
"""

from .client import LoginRefused, LoginStart, OidcClient
from .identity import Identity, check_allowed, identity_from_claims, provider_id
from .logins import PendingLogins
from .users import login_user

__all__ = [
    "Identity",
    "LoginRefused",
    "LoginStart",
    "OidcClient",
    "PendingLogins",
    "check_allowed",
    "identity_from_claims",
    "login_user",
    "provider_id",
]
