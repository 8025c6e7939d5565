"""What the STUN responder is told at start (built from the configuration by trioscale.options)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StunOptions"]


@dataclass(frozen=True)
class StunOptions:
    #: where to bind (``derp.server.stun_listen_addr``); port 0 picks a free port
    listen_host: str
    listen_port: int
