"""The console's way to the admin API: each action is one request to an in-process copy of the API
app (the one the trusted unix socket serves), so the console checks and stores exactly what the API
does, and says what the API says when it refuses. No socket, no key: the console has already
checked its own session before calling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

from ..asgicall import AnswerTooLarge, call_app, http_scope

__all__ = ["ApiAnswer", "ApiClient", "path_part"]

#: an answer larger than this is cut (the API's answers are small; a list of every node is the largest)
MAX_ANSWER = 16 * 1024 * 1024


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        """The API's one line for a refusal (its problem document's detail)."""
        return str(self.body.get("detail") or f"the admin API answered {self.status}")


def path_part(value: Any) -> str:
    """One path segment as the API reads it (a name with a '/' stays one segment)."""
    return quote(str(value), safe="")


class ApiClient:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   query: dict[str, str] | None = None) -> ApiAnswer:
        data = json.dumps(body).encode() if body is not None else b""
        headers = [(b"host", b"console.internal")]
        if body is not None:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        scope = http_scope(method, path, urlencode(query or {}).encode(), headers, path=unquote(path),
                           client=("127.0.0.1", 0), server=("console.internal", 80))
        try:
            status, _, raw = await call_app(self.app, scope, data, max_answer=MAX_ANSWER)
        except AnswerTooLarge:
            return ApiAnswer(502, {"detail": f"the admin API's answer is larger than {MAX_ANSWER} bytes"})
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"detail": f"the admin API answered {status} with a body that is not JSON"}
        return ApiAnswer(status, parsed if isinstance(parsed, dict) else {"value": parsed})

    async def get(self, path: str, query: dict[str, str] | None = None) -> ApiAnswer:
        return await self.call("GET", path, query=query)

    async def post(self, path: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None) -> ApiAnswer:
        return await self.call("POST", path, body if body is not None else {}, query)

    async def put(self, path: str, body: dict[str, Any]) -> ApiAnswer:
        return await self.call("PUT", path, body)

    async def delete(self, path: str, query: dict[str, str] | None = None) -> ApiAnswer:
        return await self.call("DELETE", path, query=query)
