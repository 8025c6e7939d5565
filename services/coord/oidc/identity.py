"""Who logged in: the claims of a verified ID token (and the provider's userinfo), as an Identity;
the key a user is known by (Headscale's: issuer/subject); who may log in (`oidc.allowed_*`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import LoginRefused

#: claim values are the provider's: anything longer is refused rather than stored
MAX_CLAIM_LEN = 1024
MAX_GROUPS = 512
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")
#: Go's url.URL.String() leaves these unescaped in a path (what Headscale wrote for its users)
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class ClaimError(ValueError):
    """The provider sent claims we cannot take (missing subject, values past the limits)."""


@dataclass(frozen=True)
class Identity:
    issuer: str
    subject: str
    #: the user's key in the store (users.provider_id): Headscale's identifier for the same login
    provider_id: str
    username: str = ""
    name: str = ""
    email: str = ""
    email_verified: bool = False
    picture: str = ""
    groups: tuple[str, ...] = ()
    #: the ID token's expiry (`exp`)
    expiry: datetime | None = None

    def user_name(self) -> str:
        """The name a user made from this identity gets: preferred_username when it is a valid
        user name, else the email, else a name from the subject."""
        for candidate in (self.username, self.email):
            if candidate and _USER_NAME.match(candidate) and not candidate.isdigit():
                return candidate
        safe = re.sub(r"[^A-Za-z0-9._-]", "", self.subject)[:40] or "user"
        return f"oidc-{safe}"


def _clean(identifier: str) -> str:
    """Headscale's CleanIdentifier: empty path segments and the whitespace around segments go,
    a URL keeps its scheme (in lower case) and host."""
    identifier = identifier.strip()
    parts = urlsplit(identifier) if "://" in identifier else None
    if parts is not None and parts.scheme:
        segments = [s.strip() for s in parts.path.split("/")]
        path = "/" + "/".join(s for s in segments if s) if any(segments) else ""
        return urlunsplit((parts.scheme.lower(), parts.netloc, quote(path, safe=_PATH_SAFE), parts.query,
                           parts.fragment))
    return "/".join(s.strip() for s in identifier.split("/") if s.strip())


def provider_id(issuer: str, subject: str) -> str:
    """The key of a user who logs in as `subject` at `issuer`, spelled as Headscale (0.24 on)
    spells users.provider_identifier, so users brought over by `trioscale import headscale` log in
    as themselves."""
    if not issuer and not subject:
        return ""
    if not issuer:
        cleaned = _clean(subject)
        return cleaned if cleaned.startswith("/") else "/" + cleaned
    if not subject:
        return _clean(issuer)
    return _clean(issuer.rstrip("/") + "/" + subject.lstrip("/"))


def _text(value: Any, claim: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ClaimError(f"the {claim} claim is not a string")
    if len(value) > MAX_CLAIM_LEN:
        raise ClaimError(f"the {claim} claim is longer than {MAX_CLAIM_LEN} characters")
    return value


def _flag(value: Any) -> bool:
    # some providers send "true"/"false" as strings (Headscale's FlexibleBoolean reads both)
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def _groups(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_GROUPS:
        raise ClaimError(f"the groups claim is not a list of at most {MAX_GROUPS} strings")
    return tuple(_text(g, "groups") for g in value)


def identity_from_claims(claims: Mapping[str, Any], userinfo: Mapping[str, Any] | None = None) -> Identity:
    """The Identity of a verified ID token's claims; the provider's userinfo, when it answered for
    the same subject, fills in and overrides the profile (as Headscale merges them)."""
    subject = _text(claims.get("sub"), "sub")
    issuer = _text(claims.get("iss"), "iss")
    if not subject:
        raise ClaimError("the ID token has no subject")
    merged = dict(claims)
    if userinfo is not None and userinfo.get("sub") == subject:
        for claim in ("email", "email_verified", "preferred_username", "name", "picture"):
            if userinfo.get(claim) not in (None, ""):
                merged[claim] = userinfo[claim]
        if userinfo.get("groups") is not None:
            merged["groups"] = userinfo["groups"]
    exp = claims.get("exp")
    expiry = datetime.fromtimestamp(exp, timezone.utc) if isinstance(exp, (int, float)) else None
    return Identity(
        issuer=issuer,
        subject=subject,
        provider_id=provider_id(issuer, subject),
        username=_text(merged.get("preferred_username"), "preferred_username"),
        name=_text(merged.get("name"), "name"),
        email=_text(merged.get("email"), "email"),
        email_verified=_flag(merged.get("email_verified")),
        picture=_text(merged.get("picture"), "picture"),
        groups=_groups(merged.get("groups")),
        expiry=expiry,
    )


def check_allowed(options, identity: Identity) -> None:
    """LoginRefused (403) unless `identity` may log in under `options` (OidcOptions), in Headscale's order:
    a group from `allowed_groups`; an email that can be trusted (verified, or
    `email_verified_required` off) when domains or users are listed; its domain in
    `allowed_domains`; the email in `allowed_users`."""
    if options.allowed_groups and not set(options.allowed_groups) & set(identity.groups):
        raise LoginRefused(403, f"{_who(identity)} is not in an allowed group ({', '.join(options.allowed_groups)})")
    trusted = identity.email_verified or not options.email_verified_required
    if (options.allowed_domains or options.allowed_users) and not trusted:
        raise LoginRefused(403, f"the email address {identity.email or '(none)'} is not verified by the identity provider")
    if options.allowed_domains:
        domain = identity.email.rpartition("@")[2] if "@" in identity.email else ""
        if domain not in options.allowed_domains:
            raise LoginRefused(403, f"the email address {identity.email or '(none)'} is not in an allowed domain "
                          f"({', '.join(options.allowed_domains)})")
    if options.allowed_users and identity.email not in options.allowed_users:
        raise LoginRefused(403, f"{_who(identity)} is not an allowed user")


def _who(identity: Identity) -> str:
    return identity.email or identity.username or identity.subject
