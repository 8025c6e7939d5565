"""Per-request ids: one short id for each request on the control and admin paths, in every log line
written while the request is served (trioscale/log.py reads it) and, on the admin API, sent back in
``X-Request-Id`` so an operator can find a client's request in the logs.

The id lives in a context variable: Trio gives each task its own context, so concurrent requests
never see each other's id. An id a proxy passed in (``X-Request-Id``) is kept when it is short and
made of safe characters only, so it can neither forge nor break a log line.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

__all__ = ["REQUEST_ID", "begin_request", "current_request_id", "new_request_id"]

REQUEST_ID: ContextVar[str] = ContextVar("trioscale_request_id", default="")

_GIVEN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def new_request_id() -> str:
    return secrets.token_hex(6)


def begin_request(given: str | None = None) -> str:
    """Start a request in the current task: `given` (from a proxy) when it is safe, else a new id."""
    rid = given if given is not None and _GIVEN.fullmatch(given) else new_request_id()
    REQUEST_ID.set(rid)
    return rid


def current_request_id() -> str:
    return REQUEST_ID.get()
