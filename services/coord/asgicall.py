"""One HTTP request to an ASGI app inside this process, its answer collected whole: how the control
listener serves the API (`admin/oncontrol.py`) and how the console acts through it
(`console/apicall.py`), with no socket in between."""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["AnswerTooLarge", "call_app", "http_scope"]


class AnswerTooLarge(Exception):
    """The app's answer went past the caller's bound (reading stopped there)."""


def http_scope(method: str, raw_path: str, query: bytes, headers: list[tuple[bytes, bytes]], *,
               path: str, client: tuple[str, int] | None = None,
               server: tuple[str, int] | None = None) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": raw_path.encode("latin-1", "replace"),
        "query_string": query, "root_path": "", "headers": headers, "client": client, "server": server,
        "extensions": {},
    }


async def call_app(app: Any, scope: dict[str, Any], body: bytes, *, max_answer: int
                   ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of `app`'s answer to `scope` with `body`. AnswerTooLarge past
    `max_answer` bytes; RuntimeError if the app returns without finishing its answer."""
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()  # the app is done with the request once it has answered; it cancels this wait
        raise AssertionError("unreachable")

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []
    size = 0
    done = False

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers, size, done
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > max_answer:
                raise AnswerTooLarge(f"the answer is larger than {max_answer} bytes")
            chunks.append(chunk)
            done = done or not message.get("more_body", False)

    await app(scope, receive, send)
    if not done:
        raise RuntimeError(f"the app left {scope['method']} {scope['path']} unanswered")
    return status, headers, b"".join(chunks)
