"""The client end of a control connection, for fuzz_upgrade and fuzz_h2noise.

The real listener code (services/coord/control_server.py ``_ControlServer.handle_connection``) serves
an in-memory stream whose reads are prepared from the fuzz input; for HTTP/2 inside Noise the
records are made by a real Noise client once the server has answered the upgrade. All inputs run
in one long-lived Trio loop (a thread) under a mock clock, so deadlines fire as soon as every task
waits and no input sleeps.

Invariants checked after every connection: it ended (a hang is caught by libFuzzer's -timeout);
nothing was logged at ERROR (the listener's "unexpected error" path, a traceback in the log); the
listener's accounting is back to zero (no body bytes, streams or connections left counted).
"""

from __future__ import annotations

import base64
import copy
import inspect
import logging
import threading
import traceback

import trio
import trio.testing
from _fuzzutil import chunks, size_byte

from trioscale.services.coord import control_server
from trioscale.shared.proto import keys, noise

_SERVER = bytes(range(1, 33))
_MACHINE = bytes(range(33, 65))
_EPH = bytes(range(65, 97))
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_errors = _Errors()
logging.getLogger("trioscale").addHandler(_errors)
logging.getLogger("trioscale").setLevel(logging.INFO)
logging.getLogger("trioscale").propagate = False


def _upgrade_request(initiation: bytes) -> bytes:
    return (
        b"POST /ts2021 HTTP/1.1\r\nHost: control.example\r\nUpgrade: tailscale-control-protocol\r\n"
        b"Connection: upgrade\r\nX-Tailscale-Handshake: " + base64.b64encode(initiation) + b"\r\n\r\n"
    )


class _Peer(trio.abc.Stream):
    """The client end: hands out prepared reads; `then(sent)` makes the rest once the server has
    answered (the Noise records need the handshake's keys)."""

    def __init__(self, reads: list[bytes], then=None) -> None:
        self.reads = reads
        self.then = then
        self.sent = bytearray()
        self.closed = False

    async def send_all(self, data) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes=None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError
        if not self.reads and self.then is not None:
            then, self.then = self.then, None
            self.reads = then(bytes(self.sent))
        return self.reads.pop(0) if self.reads else b""

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def _noise_handler(request, response) -> None:
    if request.path == "/machine/map":
        await response.start(200, [("content-type", "application/json")])
        await response.write(b"{}")
        await response.end()
    else:
        await response.send(200, b"{}")


async def _http_handler(method, path, headers, body):
    return 200, [("content-type", "text/plain")], b"ok\n"


_SERVER_OBJ = None


def _server() -> tuple[object, object]:
    """The listener's per-process object (made once: its key setup costs an X25519 operation), with
    fresh accounting for this input."""
    global _SERVER_OBJ
    stats = control_server.TransportStats() if hasattr(control_server, "TransportStats") else None
    if _SERVER_OBJ is None:
        params = inspect.signature(control_server._ControlServer).parameters  # noqa: SLF001
        args = [_SERVER, _noise_handler, _http_handler, control_server.TransportConfig()]
        if "stats" in params:
            args.append(stats)
        _SERVER_OBJ = control_server._ControlServer(*args)  # noqa: SLF001
    if stats is not None:
        _SERVER_OBJ.stats = stats
    return _SERVER_OBJ, stats


_INITIATOR = None


def _initiator() -> noise.Initiator:
    """A fresh copy of one prepared Initiator (its three X25519 operations done once)."""
    global _INITIATOR
    if _INITIATOR is None:
        _INITIATOR = noise.Initiator(keys.public_key(_SERVER), _MACHINE, 130, ephemeral_private_key=_EPH)
    return copy.deepcopy(_INITIATOR)


def _after_upgrade(plain: bytes, size: bytes, encrypt: bool):
    ini = _initiator()

    def then(sent: bytes) -> list[bytes]:
        end = sent.find(b"\r\n\r\n")
        if not sent.startswith(b"HTTP/1.1 101") or end < 0:
            return []
        if not encrypt:
            return list(chunks(size + plain))
        conn = ini.receive_response(sent[end + 4 : end + 4 + noise.RESPONSE_LEN]).connection
        return list(chunks(size + conn.encrypt(_PREFACE + plain)))

    return [_upgrade_request(ini.initiation)], then


_TOKEN = None


def _loop() -> trio.lowlevel.TrioToken:
    """One Trio run for the whole fuzzing process, in a thread (a trio.run per input costs more
    than the input): under the mock clock, deadlines fire as soon as every task waits."""
    global _TOKEN
    if _TOKEN is None:
        ready = threading.Event()

        async def main() -> None:
            global _TOKEN
            _TOKEN = trio.lowlevel.current_trio_token()
            ready.set()
            await trio.sleep_forever()

        threading.Thread(
            target=trio.run, args=(main,), kwargs={"clock": trio.testing.MockClock(autojump_threshold=0)}, daemon=True
        ).start()
        ready.wait()
    return _TOKEN


def run_connection(peer: _Peer) -> None:
    """Serve one connection to the end and check what must hold afterwards."""
    server, stats = _server()
    del _errors.records[:]
    trio.from_thread.run(server.handle_connection, peer, trio_token=_loop())
    if _errors.records:
        r = _errors.records[0]
        tb = "".join(traceback.format_exception(*r.exc_info)) if r.exc_info else ""
        raise AssertionError(f"logged at {r.levelname}: {r.getMessage()}\n{tb}")
    if stats is not None:
        for name in ("buffered_body_bytes", "open_streams", "connections", "sessions"):
            assert getattr(stats, name, 0) == 0, (name, stats.as_dict())


def h2_frames() -> bytes:
    """A client's HTTP/2 frames after the preface: SETTINGS, a map request, its body."""
    import h2.config
    import h2.connection

    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.data_to_send()  # the preface is added by the harness
    c.send_headers(1, [(":method", "POST"), (":path", "/machine/map"), (":scheme", "http"),
                       (":authority", "control.example"), ("content-type", "application/json")])
    c.send_data(1, b'{"Version":130,"Stream":true}', end_stream=True)
    return c.data_to_send()
