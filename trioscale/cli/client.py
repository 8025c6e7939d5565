"""A small blocking client for the admin API (used by the CLI): the unix socket, or TCP + API key.

Blocking http.client and no event loop, so the CLI starts fast.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlencode, urlsplit

from trioscale.shared.net.unixpath import short_unix_path

__all__ = ["AdminClient", "ApiError", "ConnectError"]


class ApiError(Exception):
    """The server answered with an error status; `message` is the problem's detail."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ConnectError(Exception):
    """The server could not be reached."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with short_unix_path(self._unix_path) as p:
                sock.connect(p)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    def __init__(
        self,
        *,
        socket_path: str | None = None,
        address: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        insecure: bool = False,
    ):
        if not socket_path and not address:
            raise ValueError("need a unix socket path or an address")
        self.socket_path = socket_path
        self.address = address
        self.api_key = api_key
        self.timeout = timeout
        self.insecure = insecure

    def describe(self) -> str:
        return f"{self.address}" if self.address else f"unix socket {self.socket_path}"

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        if self.address:
            parts = urlsplit(self.address if "://" in self.address else "http://" + self.address)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConnectError(f"invalid address {self.address!r} (expected http://host:port)")
            try:
                port = parts.port
            except ValueError:
                raise ConnectError(f"invalid address {self.address!r} (bad port)") from None
            base = parts.path.rstrip("/")
            if parts.scheme == "https":
                context = ssl.create_default_context()
                if self.insecure:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                return http.client.HTTPSConnection(parts.hostname, port, timeout=self.timeout, context=context), base
            return http.client.HTTPConnection(parts.hostname, port, timeout=self.timeout), base
        assert self.socket_path is not None
        return _UnixHTTPConnection(self.socket_path, self.timeout), ""

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        conn, base = self._connection()
        url = base + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.address and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ConnectError(
                f"cannot reach the trioscale server at {self.describe()}: {reason} (is `trioscale serve` running?)"
            ) from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if resp.status >= 400:
            # a problem document's detail; "error" is what servers before RFC 7807 answered
            message = (data.get("detail") or data.get("error") or data.get("message")) if isinstance(data, dict) else None
            raise ApiError(resp.status, message or f"the server answered {resp.status} {resp.reason}")
        if not isinstance(data, dict):
            raise ApiError(resp.status, "the server sent an answer that is not a JSON object")
        return data
