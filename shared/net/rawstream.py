"""A lean Trio stream over a non-blocking stdlib socket, with TLS through memory BIOs: the one
fast-socket layer, under the DERP relay (TLS) and the control listener (plain TCP).

The relay moves many small batches of frames; with `trio.SSLStream` over `trio.SocketStream`
each batch pays for several layers (conflict detectors, locks, the retry machine, the socket
wrapper's helper). `RawStream` does the same work directly:

* ``receive_some`` decrypts every TLS record already received (up to ``max_bytes``) before it
  asks the kernel for more, and reads up to 256 KiB of ciphertext per ``recv``; a caller that
  asks for more than that (a relay's mesh link, which carries the traffic of many clients) gets
  further ``recv`` calls in the same call while the socket has data, so that one turn of the
  scheduler moves as much for it as for that many clients;
* ``send_all`` encrypts the whole buffer and hands the ciphertext to the kernel in as few
  ``send`` calls as it takes (batches of up to 256 KiB), waiting with
  ``trio.lowlevel.wait_writable`` only when the socket buffer is full;
* each call is one Trio checkpoint (a cancel point that also lets other tasks run);
* ``send_nowait`` (plain TCP only) hands bytes to the kernel without a checkpoint and says how
  many it took: the control listener's map fan-out writes to thousands of sessions that way
  without a task switch each.

A clean TLS close, a ragged EOF (TCP FIN without close_notify, as browsers and Go clients may
do) and a plain TCP EOF all read as ``b""``. Socket and TLS failures raise
`trio.BrokenResourceError`. One sender and one receiver at a time (like every Trio stream).

Memory: an idle connection must cost a few KB (a relay holds tens of thousands), so nothing is
sized for the busiest moment per connection. Ciphertext is read into one buffer per thread,
shared by every stream: it is handed to the connection's TLS object before anything can await,
so no other stream can overwrite it in between; only what a short ``max_bytes`` leaves unread is
copied out (`_backlog`). OpenSSL's memory BIOs keep the capacity of their largest fill for the
life of the connection, so ciphertext goes in and comes out in slices of `_TLS_CHUNK` (32 KiB, about
two TLS records), which caps that high-water mark for a connection that once carried a burst.
`buffered()` reports the bytes a stream holds right now (the relay's stats add them up).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
from typing import Any

import trio

__all__ = ["RawStream", "listen_socket", "open_tcp_raw", "shared_buffer_bytes"]

_RECV = 1 << 18  # ciphertext per recv (into the shared buffer)
_TLS_CHUNK = 1 << 15  # bytes through a memory BIO at a time: its capacity stays near this
_SEND_BATCH = 1 << 18  # ciphertext handed to the kernel per send
_local = threading.local()


def _shared_buffer() -> memoryview:
    """This thread's receive buffer (Trio runs one event loop per thread)."""
    view = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(_RECV))
    return view


def shared_buffer_bytes() -> int:
    """Bytes of the receive buffer this thread's streams share (0 before the first TLS read)."""
    return _RECV if getattr(_local, "view", None) is not None else 0

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_checkpoint = trio.lowlevel.checkpoint


class RawStream(trio.abc.Stream):
    """A stream owning `sock` (non-blocking); TLS when `ssl_context` is given."""

    def __init__(
        self,
        sock: socket.socket,
        ssl_context: ssl.SSLContext | None = None,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ):
        sock.setblocking(False)
        self.socket = sock
        self._closed = False
        self._eof = False
        self._sending = False
        self._receiving = False
        self._drained = False  # the last read emptied the socket: wait before the next recv
        self._backlog: bytes | None = None  # ciphertext received but not yet given to TLS
        self._bpos = 0
        if ssl_context is not None:
            self._in = ssl.MemoryBIO()
            self._out = ssl.MemoryBIO()
            self._tls: ssl.SSLObject | None = ssl_context.wrap_bio(
                self._in, self._out, server_side=server_side, server_hostname=server_hostname
            )
        else:
            self._tls = None

    # -- raw socket helpers ----------------------------------------------------------------------
    async def _send_raw(self, data: bytes | memoryview) -> bool:
        """Write all of `data`; True if it had to wait (so a checkpoint already happened)."""
        sock = self.socket
        n = len(data)
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        if sent == n:
            return False
        view = memoryview(data)
        while sent < n:
            await _wait_writable(sock)
            try:
                sent += sock.send(view[sent:])
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
        return True

    async def _recv_raw(self, n: int) -> bytes:
        sock = self.socket
        while True:
            try:
                return sock.recv(n)
            except (BlockingIOError, InterruptedError):
                await _wait_readable(sock)
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                    return b""
                raise trio.BrokenResourceError(exc) from exc

    async def _recv_shared(self, n: int) -> int:
        """recv up to `n` bytes into the shared buffer; the caller must use them before it awaits."""
        sock = self.socket
        while True:
            try:
                return sock.recv_into(_shared_buffer(), n)
            except (BlockingIOError, InterruptedError):
                await _wait_readable(sock)
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                    return 0
                raise trio.BrokenResourceError(exc) from exc

    async def _send_parts(self, parts: list[bytes]) -> bool:
        """`_send_raw` of the concatenation of `parts`, without joining them when the kernel
        takes them all at once (the usual case)."""
        if len(parts) == 1:
            return await self._send_raw(parts[0])
        try:
            sent = self.socket.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        total = sum(map(len, parts))
        if sent == total:
            return False
        return await self._send_raw(memoryview(b"".join(parts))[sent:])

    async def _flush(self) -> bool:
        out = self._out.read()
        if out:
            return await self._send_raw(out)
        return False

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")

    # -- TLS handshake -----------------------------------------------------------------------------
    async def do_handshake(self) -> None:
        self._check_open()
        tls = self._tls
        if tls is None:
            return
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                got = await self._recv_shared(_RECV)
                if not got:
                    raise trio.BrokenResourceError("EOF during the TLS handshake")
                self._in.write(_shared_buffer()[:got])
            except ssl.SSLError as exc:
                try:
                    await self._flush()  # the alert, if any
                except trio.BrokenResourceError:
                    pass
                raise trio.BrokenResourceError(exc) from exc
        await self._flush()
        await _checkpoint()

    # -- Stream API --------------------------------------------------------------------------------
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check_open()
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            n = max_bytes or _RECV
            tls = self._tls
            if tls is None:
                if self._eof:
                    await _checkpoint()
                    return b""
                sock = self.socket
                try:
                    data = sock.recv(n)
                except (BlockingIOError, InterruptedError):
                    data = await self._recv_raw(n)  # waiting is the checkpoint
                    if not data:
                        self._eof = True
                    return data
                except OSError as exc:
                    if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                        raise trio.BrokenResourceError(exc) from exc
                    data = b""
                if not data:
                    self._eof = True
                await _checkpoint()
                return data
            return await self._receive_tls(tls, n)
        finally:
            self._receiving = False

    async def _receive_tls(self, tls: ssl.SSLObject, n: int) -> bytes:
        read = tls.read
        bio_in = self._in
        waited = False
        parts: list[bytes] = []
        have = 0
        view: memoryview | None = None  # unfed ciphertext in the shared buffer: never across an await
        vpos = vend = 0
        while True:
            eof = self._eof
            try:
                while have < n:
                    chunk = read(n - have)  # at most one TLS record
                    if not chunk:
                        eof = True
                        break
                    parts.append(chunk)
                    have += len(chunk)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(exc) from exc
            if have < n and not eof:
                if vpos < vend:
                    stop = min(vend, vpos + _TLS_CHUNK)
                    bio_in.write(view[vpos:stop])  # type: ignore[index]
                    vpos = stop
                    continue
                backlog = self._backlog
                if backlog is not None:
                    stop = min(len(backlog), self._bpos + _TLS_CHUNK)
                    bio_in.write(memoryview(backlog)[self._bpos : stop])
                    if stop == len(backlog):
                        self._backlog = None
                        self._bpos = 0
                    else:
                        self._bpos = stop
                    continue
            if vpos < vend:  # `max_bytes` reached: keep the rest, the shared buffer is not ours
                self._backlog = bytes(view[vpos:vend])  # type: ignore[index]
                self._bpos = 0
                vpos = vend = 0
            view = None
            if self._out.pending and not self._sending:  # e.g. a KeyUpdate answer
                # (while a send is in progress its bytes are still going out: never interleave
                # with them; that send's task flushes this with its next write)
                if await self._flush():
                    waited = True
            if parts:
                if n > _RECV and have < n and not eof and not self._drained:
                    got = self._recv_more()
                    if got > 0:  # one more read without a checkpoint (see receive_some)
                        view = _shared_buffer()
                        vpos = min(got, _TLS_CHUNK)
                        vend = got
                        bio_in.write(view[:vpos])
                        continue
                    if got < 0:  # EOF: TLS reports it on the next call, after these bytes
                        bio_in.write_eof()
                if not waited:
                    await _checkpoint()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if eof:
                self._eof = True
                if not waited:
                    await _checkpoint()
                return b""
            # When the last read left the socket empty, wait for readiness first instead of
            # paying for a recv that fails with EAGAIN.
            sock = self.socket
            want = _RECV if n >= _RECV else min(_RECV, max(n + 4096, 2 * _TLS_CHUNK))
            got = -1
            while got < 0:
                if self._drained:
                    await _wait_readable(sock)
                    waited = True
                try:
                    view = _shared_buffer()
                    got = sock.recv_into(view, want)
                except (BlockingIOError, InterruptedError):
                    self._drained = True
                except OSError as exc:
                    if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                        raise trio.BrokenResourceError(exc) from exc
                    got = 0
            self._drained = 0 < got < want
            if got:  # feed the first slice now (asking TLS first would only raise want-read)
                vpos = min(got, _TLS_CHUNK)
                vend = got
                bio_in.write(view[:vpos])
            else:
                view = None
                bio_in.write_eof()

    def _recv_more(self) -> int:
        """Ciphertext into the shared buffer if the socket has some now, never waiting: bytes read,
        0 when it would block (or the peer reset: the next read sees it), -1 at EOF."""
        try:
            got = self.socket.recv_into(_shared_buffer(), _RECV)
        except (BlockingIOError, InterruptedError):
            self._drained = True
            return 0
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                raise trio.BrokenResourceError(exc) from exc
            return 0
        if got == 0:
            return -1
        self._drained = got < _RECV
        return got

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            tls = self._tls
            if tls is not None:
                try:
                    if len(data) <= _TLS_CHUNK:
                        tls.write(data)
                        waited = await self._flush()
                    else:
                        waited = await self._send_tls_chunked(tls, data)
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(exc) from exc
            else:
                waited = await self._send_raw(data) if data else False
            if not waited:
                await _checkpoint()
        finally:
            self._sending = False

    async def _send_tls_chunked(self, tls: ssl.SSLObject, data: bytes | bytearray | memoryview) -> bool:
        view = memoryview(data)
        out = self._out
        parts: list[bytes] = []
        size = 0
        waited = False
        for off in range(0, len(view), _TLS_CHUNK):
            tls.write(view[off : off + _TLS_CHUNK])
            chunk = out.read()
            parts.append(chunk)
            size += len(chunk)
            if size >= _SEND_BATCH:
                waited = await self._send_parts(parts) or waited
                parts = []
                size = 0
        if parts:
            waited = await self._send_parts(parts) or waited
        return waited

    def send_nowait(self, data: bytes) -> int | None:
        """Plain TCP: give `data` to the kernel now, without waiting or a checkpoint; the number of
        bytes it took (0 when its buffer is full), or None when this stream cannot do that now
        (TLS, closed, or another task is sending: the caller uses `send_all`). The caller sends
        whatever was not taken, in order, before anything else. Raises BrokenResourceError."""
        if self._tls is not None or self._closed or self._sending:
            return None
        try:
            return self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc

    def buffered(self) -> int:
        """Bytes this stream holds now: ciphertext not yet decrypted or not yet sent."""
        n = len(self._backlog) - self._bpos if self._backlog is not None else 0
        if self._tls is not None:
            n += self._in.pending + self._out.pending
        return n

    async def wait_readable(self) -> None:
        """Until the peer has sent something (or closed)."""
        self._check_open()
        if self._tls is not None and (self._in.pending or self._backlog is not None):
            await _checkpoint()
            return
        await _wait_readable(self.socket)

    async def wait_send_all_might_not_block(self) -> None:
        await _wait_writable(self.socket)

    async def send_eof(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sock = self.socket
        if self._tls is not None:
            try:  # best effort close_notify, never waiting
                self._tls.unwrap()
            except (ssl.SSLError, ValueError, OSError):
                pass
            try:
                out = self._out.read()
                if out:
                    sock.send(out)
            except OSError:
                pass
        trio.lowlevel.notify_closing(sock)
        sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def getpeername(self) -> Any:
        return self.socket.getpeername()


def listen_socket(host: str, port: int, family: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (SO_REUSEPORT when asked, to share a port)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_tcp_raw(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket (TCP_NODELAY) to host:port, first address that works."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host}")
    last: Exception | None = None
    for family, type_, proto_, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto_)
        sock.setblocking(False)
        try:
            try:
                sock.connect(sockaddr)
            except (BlockingIOError, InterruptedError):
                await _wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"connect to {sockaddr}: {os.strerror(err)}")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except BaseException as exc:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            if not isinstance(exc, OSError):
                raise
            last = exc
    raise last or OSError(f"cannot connect to {host}:{port}")


async def close_at_once(stream: trio.abc.AsyncResource) -> None:
    """Close `stream` now, waking whatever waits on it. A RawStream closes without a cancel scope or a
    cancelled checkpoint (what `trio.aclose_forcefully` costs): a control connection is closed at
    three levels on its way out, and the second and third find it closed."""
    if isinstance(stream, RawStream):
        stream.close()
    else:
        await trio.aclose_forcefully(stream)
