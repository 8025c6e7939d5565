"""A small Trio DERP client, for tests and load tools.

    async with open_derp_client("127.0.0.1", port, private_key, verify=False) as c:
        await c.send(peer_key, b"hello")
        ev = await c.recv()              # RecvPacket, PeerGone, KeepAlive, Health, Restarting, ...
        rtt = await c.ping()

`connect_derp` dials (TCP, TLS), then does the HTTP upgrade and DERP handshake with
`shared.net.derpdial.derp_upgrade` (the relay's mesh links use the same) and returns a `DerpClient`
whose ``recv``/``send`` work directly on the stream (no background task): the lean form for load
generators. `open_derp_client` adds a background reader so that `ping()` and `recv()` may be
used from different tasks.
"""

from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from trioscale.shared.net.derpdial import DerpClient, DerpHandshakeError, derp_upgrade
from trioscale.shared.net.tls import client_context
from trioscale.shared.proto import derp as proto

__all__ = ["DerpClient", "DerpHandshakeError", "connect_derp", "derp_upgrade", "open_derp_client"]


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
