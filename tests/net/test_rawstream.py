"""RawStream over TLS: the shared receive buffer, the backlog of a short read, sliced BIOs."""

from __future__ import annotations

import os
import socket

import trio

from trioscale.shared.net.rawstream import _TLS_CHUNK, RawStream, shared_buffer_bytes
from trioscale.shared.net import tls as tlsutil


async def tls_pair(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    tlsutil.ensure_self_signed(cert, key, ["localhost"])
    a, b = socket.socketpair()
    server = RawStream(a, tlsutil.server_context(cert, key), server_side=True)
    client = RawStream(b, tlsutil.client_context(verify=False), server_side=False, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    return server, client


async def test_short_reads_keep_the_rest_and_big_writes_arrive_whole(tmp_path):
    server, client = await tls_pair(tmp_path)
    data = os.urandom(3 * (1 << 18) + 12345)  # several receive buffers and many BIO slices
    got = bytearray()

    async def reader() -> None:
        sizes = [(1 << 18) - 100, 1000, None]  # just under the buffer, short (a backlog), default
        i = 0
        while len(got) < len(data):
            chunk = await server.receive_some(sizes[i % 3])
            i += 1
            assert chunk
            got.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await client.send_all(data)
    assert bytes(got) == data
    # everything consumed: no backlog, nothing pending in either BIO
    assert server.buffered() == 0 and client.buffered() == 0
    assert shared_buffer_bytes() == 1 << 18
    server.close()
    client.close()


async def test_many_streams_share_one_receive_buffer(tmp_path):
    pairs = [await tls_pair(tmp_path) for _ in range(5)]
    for i, (server, client) in enumerate(pairs):
        await client.send_all(b"%d" % i * (2 * _TLS_CHUNK + 7))
    for i, (server, client) in enumerate(pairs):
        want = len(b"%d" % i) * (2 * _TLS_CHUNK + 7)
        got = b""
        while len(got) < want:
            got += await server.receive_some()
        assert got == b"%d" % i * (2 * _TLS_CHUNK + 7)
        assert server.buffered() == 0
    for server, client in pairs:
        server.close()
        client.close()


def _queued(sock: socket.socket) -> int:
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


async def test_a_big_max_bytes_reads_on_while_the_socket_has_data(tmp_path):
    """A caller asking for more than one read's worth (a relay's mesh link) gets what is queued in
    one call, in order; an EOF behind the data comes with the next call."""
    server, client = await tls_pair(tmp_path)
    for opt in (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF):
        if opt is not None:
            try:
                client.socket.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
                break
            except PermissionError:
                continue
    data = os.urandom(min(1 << 20, client.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2))
    assert len(data) > 2 * (1 << 18)
    await client.send_all(data)  # the socket pair's buffer holds it all
    client.close()
    while _queued(server.socket) < len(data):  # the close_notify too: never more than a moment
        await trio.sleep(0.01)
    first = await server.receive_some(4 << 20)
    assert len(first) > 1 << 18  # more than one recv's worth in one call
    got = bytearray(first)
    while len(got) < len(data):
        chunk = await server.receive_some(4 << 20)
        assert chunk
        got.extend(chunk)
    assert bytes(got) == data
    assert await server.receive_some(4 << 20) == b""
    server.close()


async def test_the_default_max_bytes_reads_once_per_call(tmp_path):
    server, client = await tls_pair(tmp_path)
    data = os.urandom(3 * (1 << 18))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, data)
        got = bytearray()
        while len(got) < len(data):
            chunk = await server.receive_some()
            assert 0 < len(chunk) <= 1 << 18
            got.extend(chunk)
    assert bytes(got) == data
    server.close()
    client.close()
