"""Why a login ended without a user: an HTTP status and one line the user reads."""

from __future__ import annotations


class LoginRefused(Exception):
    """The login stops here: `status` (400 bad request, 403 refused, 404/410 unknown or expired,
    502/504 the provider failed) and a message for the page, never holding a secret."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
