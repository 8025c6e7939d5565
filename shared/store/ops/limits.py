"""Caps on what clients send, checked before anything is stored.

A client's Hostinfo, endpoints and hostname are stored as sent; these checks keep any one of them
from being larger than a real client ever sends, and refuse on both stores what PostgreSQL's text
and jsonb cannot keep (a NUL character), so the two behave alike. The caps live in
shared/store/base.py and are read at call time, so tests may lower them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trioscale.shared.store import base
from trioscale.shared.store.base import TooLarge
from trioscale.shared.store.rows import json_text


def check_hostinfo(hostinfo: Any) -> int:
    """Its size; TooLarge over MAX_HOSTINFO_BYTES (read at call time, so tests may lower it),
    BadValue with a NUL character in it."""
    text = json_text(dict(hostinfo or {}))
    size = len(text.encode())
    if size > base.MAX_HOSTINFO_BYTES:
        raise TooLarge(f"Hostinfo is {size} bytes; the limit is {base.MAX_HOSTINFO_BYTES}")
    if "\\u0000" in text:
        raise base.BadValue("Hostinfo contains a NUL character")
    return size


def check_node_sizes(values: Mapping[str, Any]) -> None:
    """Client-supplied node fields within their caps: what a client sends is never stored whole
    when it is larger than any real client sends."""
    if "hostinfo" in values:
        check_hostinfo(values["hostinfo"])
    eps = values.get("endpoints") or ()
    if len(eps) > base.MAX_ENDPOINTS:
        raise TooLarge(f"{len(eps)} endpoints; the limit is {base.MAX_ENDPOINTS}")
    if any(len(e) > base.MAX_ENDPOINT_LEN for e in eps):
        raise TooLarge(f"an endpoint is longer than {base.MAX_ENDPOINT_LEN} characters")
    if len(values.get("hostname") or "") > base.MAX_HOSTNAME_LEN:
        raise TooLarge(f"hostname is longer than {base.MAX_HOSTNAME_LEN} characters")
    if "\0" in (values.get("hostname") or "") or any("\0" in e for e in eps):
        raise base.BadValue("a NUL character in the hostname or an endpoint")
