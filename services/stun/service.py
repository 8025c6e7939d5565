"""The STUN responder: UDP on ``derp.server.stun_listen_addr`` (`StunOptions`).

Answers Tailscale binding requests with the source address it saw, from the same socket, and
ignores every other datagram. ``[::]:port`` is one dual-stack socket (IPv4 clients are answered
as IPv4); ``0.0.0.0:port`` is IPv4 only. Reports a :class:`StunService` when started (counters in
``.stats``, bound port in ``.port``: the DERP relay in the same process publishes it).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

import trio

from trioscale.shared.proto import stun as proto

from .options import StunOptions

__all__ = ["serve", "StunOptions", "StunStats", "StunService"]

log = logging.getLogger("trioscale")


class StunStats:
    __slots__ = ("datagrams", "requests", "responses", "ignored", "send_errors")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class StunService:
    def __init__(self) -> None:
        self.stats = StunStats()
        self.port = 0
        self.address = ""

    @property
    def addresses(self) -> dict[str, str]:
        return {"stun": self.address}


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host.split("%", 1)[0]).version == 6 else socket.AF_INET
    except ValueError:
        return 0


async def _open_socket(host: str, port: int) -> trio.socket.SocketType:
    if host in ("", "*"):
        host = "0.0.0.0"
    family = _family(host)
    if not family:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        host = sockaddr[0]
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        await sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_socket(sock: trio.socket.SocketType, stats: StunStats) -> None:
    """Answer binding requests arriving on `sock` until cancelled."""
    parse = proto.parse_binding_request
    respond = proto.binding_response
    while True:
        try:
            data, addr = await sock.recvfrom(65536)
        except OSError:  # e.g. ICMP port unreachable reported on Linux: not our problem
            continue
        stats.datagrams += 1
        req = parse(data)
        if req is None:
            stats.ignored += 1
            continue
        stats.requests += 1
        try:
            await sock.sendto(respond(req.txid, addr[0], addr[1]), addr)
            stats.responses += 1
        except OSError:
            stats.send_errors += 1


async def serve(options: StunOptions, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    host, port = options.listen_host, options.listen_port
    sock = await _open_socket(host, port)
    with sock:
        bound = sock.getsockname()
        svc = StunService()
        svc.port = bound[1]
        shown = host or bound[0]
        svc.address = f"[{shown}]:{svc.port}" if ":" in shown else f"{shown}:{svc.port}"
        log.info("STUN listening on %s (udp)", svc.address)
        task_status.started(svc)
        await serve_socket(sock, svc.stats)
