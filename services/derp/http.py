"""The relay's HTTP front: what a connection says before it becomes a DERP session.

`HttpFront.serve` reads requests (h11) on a TLS connection and answers the ones a relay serves
over plain HTTP: the latency probes clients send (/derp/probe, /derp/latency-check), captive
portal detection (/generate_204 with its challenge), /health, /robots.txt, and /debug/stats to
loopback peers. A request for /derp that asks to upgrade (``Upgrade: DERP`` or a WebSocket
offering the ``derp`` subprotocol) ends the HTTP phase: `serve` returns an `Upgrade` for the
session to start from, and keeps no reference to the parser, so its buffers go before the
session starts.

Kept-alive connections may send several requests; each must arrive whole within
``upgrade_timeout`` of when we start waiting for it (the first one's deadline is the caller's,
counted from accept).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import h11
import trio

from trioscale.shared.net.wsstream import accept_token
from trioscale.shared.proto import derp as proto

from .stats import DerpStats

__all__ = ["HttpFront", "Upgrade", "RECV_SIZE"]

#: the most a connection reads at once, in the HTTP phase and in the session
RECV_SIZE = 1 << 18
_CHALLENGE_OK = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


class Upgrade(NamedTuple):
    """A client's request to turn the connection into a DERP session."""

    #: "derp" (DERP framing right on the TLS stream) or "websocket" (DERP frames in binary messages)
    kind: str
    #: the ``101`` to send before the server key (b"" for a DERP fast start)
    prefix: bytes
    #: bytes read past the request: the start of the client's DERP stream
    leftover: bytes
    #: the client said it is not connected to its home region (header Ideal-Node)
    not_ideal: bool


class HttpFront:
    """Answers HTTP requests until one asks to upgrade. `stats_dict` gives /debug/stats."""

    def __init__(self, stats: DerpStats, public_key: bytes, stats_dict: Callable[[], dict[str, Any]],
                 upgrade_timeout: float):
        self.stats = stats
        self.public_key = public_key
        self.stats_dict = stats_dict
        self.upgrade_timeout = upgrade_timeout

    async def serve(self, stream: Any, peer: tuple[str, int], conn: Any, deadline: float) -> Upgrade | None:
        """Serve `stream` until a request upgrades (the `Upgrade`) or the connection is done
        (None). `conn.http` holds the parser meanwhile, for the buffer accounting."""
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        conn.http = h
        while True:
            with trio.fail_at(deadline):
                upgrade = await self._request(h, stream, peer)
            if upgrade is None:
                if h.our_state is h11.DONE and h.their_state is h11.DONE:
                    h.start_next_cycle()
                    deadline = trio.current_time() + self.upgrade_timeout
                    continue
                return None
            if upgrade is False:
                return None
            conn.http = None
            return upgrade

    async def _request(self, h: h11.Connection, stream: Any, peer: tuple[str, int]) -> Upgrade | bool | None:
        """Read and answer one request. Returns None when it was answered (and read to its
        end), False to close, or the `Upgrade` it asks for."""
        req = await _next_event(h, stream)
        if req is None or type(req) is h11.ConnectionClosed:
            return False
        if type(req) is not h11.Request:
            return False
        self.stats.http_requests += 1
        path = req.target.split(b"?", 1)[0]
        headers = {k: v for k, v in req.headers}  # h11 lowercases names
        if path == b"/derp":
            upgrade = headers.get(b"upgrade", b"").strip().lower()
            if upgrade == b"websocket":
                protos = [p.strip().lower() for p in headers.get(b"sec-websocket-protocol", b"").split(b",")]
                if b"derp" in protos and b"sec-websocket-key" in headers:
                    key = headers[b"sec-websocket-key"].strip()
                    if not await _request_end(h, stream):
                        return False
                    switching = h.send(h11.InformationalResponse(
                        status_code=101, reason=b"Switching Protocols",
                        headers=[(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                                 (b"Sec-WebSocket-Accept", accept_token(key)), (b"Sec-WebSocket-Protocol", b"derp")],
                    ))
                    return Upgrade("websocket", switching, h.trailing_data[0], b"ideal-node" in headers)
            if upgrade in (b"derp", b"websocket"):
                if not await _request_end(h, stream):
                    return False
                fast = headers.get(b"derp-fast-start", b"").strip() == b"1"
                # fast start: the client knows our key and sends ClientInfo at once; no HTTP answer
                prefix = b"" if fast else h.send(h11.InformationalResponse(
                    status_code=101, reason=b"Switching Protocols",
                    headers=proto.switching_protocols_headers(self.public_key),
                ))
                return Upgrade("derp", prefix, h.trailing_data[0], b"ideal-node" in headers)
            await _respond(
                h,
                stream,
                req,
                426,
                b"DERP requires connection upgrade\n",
                [(b"content-type", b"text/plain; charset=utf-8")],
            )
        elif path in (b"/derp/probe", b"/derp/latency-check"):
            if req.method in (b"GET", b"HEAD"):
                await _respond(h, stream, req, 200, b"", [(b"access-control-allow-origin", b"*")])
            else:
                await _respond(h, stream, req, 405, b"bogus probe method\n", [])
        elif path == b"/generate_204":
            extra = [(b"cache-control", b"no-cache, no-store, must-revalidate, no-transform, max-age=0")]
            challenge = headers.get(b"x-tailscale-challenge")
            if challenge is not None and len(challenge) <= 64 and _CHALLENGE_OK.issuperset(challenge):
                extra.append((b"x-tailscale-response", b"response " + challenge))
            await _respond(h, stream, req, 204, b"", extra)
        elif path == b"/health":
            await _respond(h, stream, req, 200, b"ok\n", [(b"content-type", b"text/plain")])
        elif path == b"/robots.txt":
            await _respond(h, stream, req, 200, b"User-agent: *\nDisallow: /\n", [(b"content-type", b"text/plain")])
        elif path == b"/debug/stats" and _is_loopback(peer[0]):
            body = json.dumps(self.stats_dict()).encode()
            await _respond(h, stream, req, 200, body, [(b"content-type", b"application/json")])
        elif path == b"/":
            await _respond(h, stream, req, 200, b"trioscale DERP relay\n", [(b"content-type", b"text/plain")])
        else:
            await _respond(h, stream, req, 404, b"not found\n", [(b"content-type", b"text/plain")])
        # finish reading the request, then maybe serve another on this connection
        while True:
            ev = await _next_event(h, stream)
            if ev is None or type(ev) in (h11.EndOfMessage, h11.ConnectionClosed):
                break
        return None


async def _request_end(h: h11.Connection, stream: trio.abc.Stream) -> bool:
    """Read an upgrade request to its end (h11 switches protocols only after it); False if
    the connection closed first."""
    while True:
        ev = await _next_event(h, stream)
        if type(ev) is h11.EndOfMessage:
            return True
        if ev is None or type(ev) is h11.ConnectionClosed:
            return False


async def _next_event(h: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        ev = h.next_event()
        if ev is h11.NEED_DATA:
            data = await stream.receive_some(RECV_SIZE)
            h.receive_data(data)
            continue
        if ev is h11.PAUSED:
            return None
        return ev


async def _respond(h: h11.Connection, stream: Any, req: h11.Request, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    out = h.send(h11.Response(status_code=status, headers=headers))
    if body and req.method != b"HEAD":
        out += h.send(h11.Data(data=body))
    out += h.send(h11.EndOfMessage())
    await stream.send_all(out)


def _is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback
