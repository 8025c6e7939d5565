"""The API on the control listener: Headscale serves /api/v1 on its main listener (server_url), and
Headplane and scripts written for it call `server_url/api/v1`. The control listener is our own
HTTP/1.1 server (it must hand `/ts2021` connections over to Noise, which no ASGI server can), so
its plain-HTTP handler passes `/api/v1` requests to the API app (the API-key app: every request
authenticated, as on admin.listen_addr) as one ASGI call: the request is already whole (bounded by
the listener's body cap, the same 64 KiB as the app's own) and the answer is collected whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from ..asgicall import call_app, http_scope

__all__ = ["API_PREFIX", "AsgiOnControl", "is_api_path"]

API_PREFIX = "/api/v1"

#: an answer bigger than this is cut off with a 500 rather than held in memory (the largest real
#: one, every node of a large tailnet, is far below)
MAX_ANSWER = 64 * 1024 * 1024


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


class AsgiOnControl:
    """An `HttpHandler` of the control listener (method, target, headers, body → status, headers,
    body) that answers through the ASGI `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        raw_path, _, query = target.partition("?")
        scope = http_scope(method, raw_path, query.encode("latin-1", "replace"),
                           [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers.items()],
                           path=unquote(raw_path))
        status, out_headers, answer = await call_app(self.app, scope, body, max_answer=MAX_ANSWER)
        return status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in out_headers], answer
