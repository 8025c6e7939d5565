"""A byte stream carried in WebSocket binary messages, over an already upgraded Trio stream.

Browsers and WebAssembly clients cannot open raw TCP, so Tailscale's JS client speaks DERP and the
TS2021 control protocol inside WebSocket binary messages: message boundaries mean nothing, the
payloads are one byte stream. The HTTP upgrade itself (101 and ``Sec-WebSocket-Accept``,
:func:`accept_token`) is the caller's; this wraps what follows.
"""

from __future__ import annotations

import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import generate_accept_token

__all__ = ["WebSocketByteStream", "accept_token"]


def accept_token(key: str | bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return generate_accept_token(key.encode() if isinstance(key, str) else key)


class WebSocketByteStream(trio.abc.HalfCloseableStream):
    """Server side: `leftover` is what was read past the upgrade request. A text message is a
    protocol error (BrokenResourceError); a close is end of stream."""

    def __init__(self, stream: trio.abc.Stream, leftover: bytes = b""):
        self._stream = stream
        self._ws = Connection(ConnectionType.SERVER)
        if leftover:
            self._ws.receive_data(leftover)
        self._lock = trio.Lock()

    def buffered(self) -> int:
        return self._stream.buffered() if hasattr(self._stream, "buffered") else 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            out: list[bytes] = []
            for ev in self._ws.events():
                if isinstance(ev, BytesMessage):
                    out.append(bytes(ev.data))
                elif isinstance(ev, TextMessage):
                    raise trio.BrokenResourceError("text message on a binary WebSocket stream")
                elif isinstance(ev, Ping):
                    await self._send(self._ws.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    try:
                        await self._send(self._ws.send(ev.response()))
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                    return b""
            if out:
                return b"".join(out)
            data = await self._stream.receive_some(max_bytes)
            if not data:
                return b""
            self._ws.receive_data(data)

    async def _send(self, data: bytes) -> None:
        async with self._lock:
            await self._stream.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(self._ws.send(Message(data=bytes(data))))

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()
