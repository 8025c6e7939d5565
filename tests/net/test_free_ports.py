"""The test helpers' free ports never collide with the ports tests bind by number (tests/util.py)."""

from __future__ import annotations

import socket

import util


class _Rigged:
    """Offers the reserved ports first, then 23456."""

    def __init__(self) -> None:
        self.offers = [*sorted(util.RESERVED_PORTS), 23456]

    def randrange(self, low: int, high: int) -> int:
        return self.offers.pop(0) if self.offers else 23457


def test_a_free_port_is_never_one_the_caddy_clients_bind(monkeypatch):
    monkeypatch.setattr(util, "_random", _Rigged())
    monkeypatch.setattr(util, "_recently_picked", {})
    monkeypatch.setattr(util, "_PICK_LOW", 15000)
    monkeypatch.setattr(util, "_PICK_HIGH", 15000 + 8192)
    port = util._pick((socket.SOCK_STREAM, socket.SOCK_DGRAM), "127.0.0.1")
    assert port not in util.RESERVED_PORTS
    assert not set(util._random.offers) & util.RESERVED_PORTS  # they were offered, and refused
