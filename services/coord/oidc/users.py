"""The user an Identity logs in as: found by its provider id (issuer/subject), its profile set to
the claims of this login; a user first seen is created."""

from __future__ import annotations

from trioscale.shared.model import User
from trioscale.shared.store.base import Store

from .identity import Identity

#: users.provider as Headscale writes it for its OIDC users (and `trioscale import headscale` keeps)
PROVIDER = "oidc"


async def login_user(store: Store, options, identity: Identity) -> tuple[User, bool]:
    """(user, created). An email the provider has not verified is not kept when
    `options.email_verified_required` (OidcOptions), as in Headscale."""
    keep_email = identity.email_verified or not options.email_verified_required
    return await store.login_user(
        identity.user_name(),
        provider=PROVIDER,
        provider_id=identity.provider_id,
        display_name=identity.name,
        email=identity.email if keep_email else "",
        profile_pic_url=identity.picture,
    )
