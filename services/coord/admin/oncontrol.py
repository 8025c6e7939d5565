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

import trio

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
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode("latin-1", "replace"),
            "query_string": query.encode("latin-1", "replace"),
            "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers.items()],
            "client": None,
            "server": None,
            "extensions": {},
        }
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await trio.sleep_forever()  # the app stops listening once it has answered
            raise AssertionError("unreachable")

        status = 500
        out_headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        size = 0
        done = trio.Event()

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, out_headers, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
                out_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())]
            elif message["type"] == "http.response.body":
                chunk = bytes(message.get("body", b""))
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise RuntimeError("API answer too large for the control listener")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    done.set()

        await self.app(scope, receive, send)
        if not done.is_set():
            raise RuntimeError(f"the API app left {method} {raw_path} unanswered")
        return status, out_headers, b"".join(chunks)
