"""A small Trio DERP client, for tests and load tools.

    async with open_derp_client("127.0.0.1", port, private_key, verify=False) as c:
        await c.send(peer_key, b"hello")
        ev = await c.recv()              # RecvPacket, PeerGone, KeepAlive, Health, Restarting, ...
        rtt = await c.ping()

`connect_derp` does the HTTP upgrade and DERP handshake and returns a `DerpClient` whose
``recv``/``send`` work directly on the stream (no background task): the lean form for load
generators. `open_derp_client` adds a background reader so that `ping()` and `recv()` may be
used from different tasks.
"""

from __future__ import annotations

import os
import ssl
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from trioscale.shared.proto import derp as proto
from trioscale.shared.net.tls import client_context

__all__ = ["DerpClient", "DerpHandshakeError", "connect_derp", "derp_upgrade", "open_derp_client"]


class DerpHandshakeError(Exception):
    """The relay refused the upgrade or closed the stream during the handshake."""


class DerpClient:
    def __init__(self, stream: trio.abc.Stream, conn: proto.DerpClientConnection, pending: list):
        self.stream = stream
        self.conn = conn
        self.public_key = conn.public_key
        self.server_key = conn.server_key
        self.server_info = conn.server_info
        self._events: deque = deque(pending)
        self._pongs: dict[bytes, trio.Event] = {}
        self._send_lock = trio.Lock()
        self._reader_running = False
        self.closed = False
        self.error: BaseException | None = None

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def send(self, dst: bytes, packet: bytes) -> None:
        await self.send_raw(self.conn.send(proto.SendPacket(dst, packet)))

    async def send_event(self, event: proto.Event) -> None:
        await self.send_raw(self.conn.send(event))

    async def note_preferred(self, preferred: bool = True) -> None:
        await self.send_event(proto.NotePreferred(preferred))

    async def _read_more(self) -> bool:
        data = await self.stream.receive_some(1 << 18)
        if not data:
            self.closed = True
            return False
        for ev in self.conn.receive_data(data):
            if type(ev) is proto.Pong and ev.data in self._pongs:
                self._pongs.pop(ev.data).set()
                continue
            if type(ev) is proto.Ping:
                # answer server pings like a client with CanAckPings
                await self.send_raw(self.conn.send(proto.Pong(ev.data)))
            self._events.append(ev)
        return True

    async def recv(self) -> proto.Event:
        """The next event; raises EOFError when the relay closed the connection."""
        while not self._events:
            if self.closed or not await self._read_more():
                raise EOFError("DERP connection closed")
        return self._events.popleft()

    async def recv_packet(self) -> proto.RecvPacket:
        """The next RecvPacket, skipping other events."""
        while True:
            ev = await self.recv()
            if type(ev) is proto.RecvPacket:
                return ev

    async def ping(self, data: bytes | None = None, *, timeout: float = 5.0) -> float:
        """Round-trip time of a Ping/Pong. Needs some task to be reading (`open_derp_client`
        does); used alone, it reads until the Pong arrives and keeps other events for recv()."""
        data = data or os.urandom(8)
        done = trio.Event()
        self._pongs[data] = done
        start = trio.current_time()
        await self.send_event(proto.Ping(data))
        with trio.fail_after(timeout):
            if self._reader_running:
                await done.wait()
            else:
                while not done.is_set():
                    if not await self._read_more():
                        raise EOFError("DERP connection closed")
        return trio.current_time() - start

    async def aclose(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)


async def connect_derp(
    host: str,
    port: int,
    private_key: bytes,
    *,
    ssl_context: ssl.SSLContext | None = None,
    verify: bool = False,
    server_hostname: str | None = None,
    tls: bool = True,
    path: str = "/derp",
    client_info: proto.ClientInfo | None = None,
    headers: dict[str, str] | None = None,
    fast_start_key: bytes | None = None,
    timeout: float = 10.0,
) -> DerpClient:
    """Open TCP (+TLS), upgrade, handshake. `fast_start_key` = the server's public key: send
    ``Derp-Fast-Start: 1`` and ClientInfo at once, expecting no HTTP response."""
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        try:
            if tls:
                ctx = ssl_context or client_context(verify=verify)
                stream = trio.SSLStream(tcp, ctx, server_hostname=server_hostname or host, https_compatible=True)
                await stream.do_handshake()
            return await derp_upgrade(
                stream,
                private_key,
                host=server_hostname or host,
                path=path,
                client_info=client_info,
                headers=headers,
                fast_start_key=fast_start_key,
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise


async def derp_upgrade(
    stream: trio.abc.Stream,
    private_key: bytes,
    *,
    host: str,
    path: str = "/derp",
    client_info: proto.ClientInfo | None = None,
    headers: dict[str, str] | None = None,
    fast_start_key: bytes | None = None,
) -> DerpClient:
    """HTTP upgrade and DERP handshake on an open (TLS) stream; the caller bounds the time and
    closes the stream on failure."""
    conn = proto.DerpClientConnection(private_key, server_public_key=fast_start_key)
    hdrs = {"Host": host, "Connection": "Upgrade", "Upgrade": "DERP"}
    if fast_start_key:
        hdrs["Derp-Fast-Start"] = "1"
    hdrs.update(headers or {})
    req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    out = req.encode()
    if fast_start_key:
        out += conn.client_info(client_info)
    await stream.send_all(out)
    buf = b""
    if not fast_start_key:
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                raise DerpHandshakeError("relay closed the connection before answering the upgrade")
            buf += data
            if len(buf) > 65536:
                raise DerpHandshakeError("HTTP response headers too long")
        head, _, buf = buf.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"101":
            raise DerpHandshakeError(f"upgrade refused: {status_line.decode(errors='replace')}")
    pending: list = []
    while conn.state is not conn.ESTABLISHED:
        events = conn.receive_data(buf) if buf else []
        buf = b""
        for ev in events:
            if type(ev) is proto.ServerKey and conn.state is conn.SEND_CLIENT_INFO:
                await stream.send_all(conn.client_info(client_info))
            elif type(ev) in (proto.ServerKey, proto.ServerInfo):
                pass
            else:
                pending.append(ev)
        if conn.state is conn.ESTABLISHED:
            break
        buf = await stream.receive_some(65536)
        if not buf:
            raise DerpHandshakeError("relay closed the connection during the DERP handshake")
    return DerpClient(stream, conn, pending)


@asynccontextmanager
async def open_derp_client(host: str, port: int, private_key: bytes, **kwargs: Any) -> AsyncIterator[DerpClient]:
    """`connect_derp` plus a background reader, closed on exit."""
    client = await connect_derp(host, port, private_key, **kwargs)
    send, receive = trio.open_memory_channel[Any](1024)
    client._reader_running = True

    async def reader() -> None:
        try:
            while True:
                while client._events:
                    await send.send(client._events.popleft())
                if not await client._read_more():
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, proto.DerpError, OSError) as exc:
            client.error = exc
        finally:
            client.closed = True
            await send.aclose()

    async def recv() -> proto.Event:
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            raise EOFError("DERP connection closed") from None

    client.recv = recv  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
