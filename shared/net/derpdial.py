"""Dialing a DERP relay: the HTTP upgrade and DERP handshake over an open Trio stream, and the
client connection after it.

The relay's mesh links use it (production); so do the test clients in `shared.testing.derpclient`
and the benchmarks. The protocol work is sans-IO in `shared.proto.derp` (`ClientUpgrade`,
`DerpClientConnection`); this moves the bytes.

    client = await derp_upgrade(stream, private_key, host="derp.example.com")
    await client.send(peer_key, b"hello")
    ev = await client.recv()              # RecvPacket, PeerGone, KeepAlive, Health, Restarting, ...
"""

from __future__ import annotations

import os
from collections import deque

import trio

from trioscale.shared.proto import derp as proto

__all__ = ["DerpClient", "DerpHandshakeError", "derp_upgrade"]


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
    upgrade = proto.ClientUpgrade(host, path, headers, fast_start=fast_start_key is not None)
    out = upgrade.request()
    if fast_start_key:
        out += conn.client_info(client_info)
    await stream.send_all(out)
    buf = b""
    if not fast_start_key:
        rest = None
        while rest is None:
            data = await stream.receive_some(65536)
            if not data:
                raise DerpHandshakeError("relay closed the connection before answering the upgrade")
            try:
                rest = upgrade.receive_data(data)
            except proto.UpgradeRefused as exc:
                raise DerpHandshakeError(str(exc)) from None
        buf = rest
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
