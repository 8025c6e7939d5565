"""The admin API: REST under /api/v1, shaped like Headscale's (app: the routes; server: the listeners)."""

from .app import (
    DEFAULT_API_KEY_EXPIRATION,
    DEFAULT_PREAUTH_EXPIRATION,
    BadRequest,
    create_admin_app,
    validate_tag,
    validate_user_name,
)
from .server import serve_admin

__all__ = [
    "create_admin_app",
    "serve_admin",
    "BadRequest",
    "DEFAULT_PREAUTH_EXPIRATION",
    "DEFAULT_API_KEY_EXPIRATION",
    "validate_tag",
    "validate_user_name",
]
