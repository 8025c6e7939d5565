"""``host:port`` text ↔ (host, port): the one parser for every listen and dial address.

Listeners of every service (control, DERP, STUN, DNS, admin) and the config check take their
addresses through `split_host_port`, so an address means the same everywhere and a mistake reads
the same everywhere: one line naming the text that was given.
"""

from __future__ import annotations

from typing import Any

__all__ = ["split_host_port", "join_host_port", "format_sockaddr"]


def split_host_port(addr: str) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``":port"`` → ``(host, port)``; port 0..65535.

    An IPv6 address must be in brackets: without them the last colon cannot be told from the
    address's own. Raises ValueError with a one-line message."""
    if not isinstance(addr, str) or ":" not in addr:
        raise ValueError(f"expected host:port, got {addr!r}")
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0 or addr[end + 1 : end + 2] != ":":
            raise ValueError(f"expected [v6-address]:port, got {addr!r}")
        host, port_text = addr[1:end], addr[end + 2 :]
    else:
        host, port_text = addr.rsplit(":", 1)
        if ":" in host:
            raise ValueError(f"write IPv6 addresses as [addr]:port, got {addr!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {addr!r}")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    """The inverse of `split_host_port`: brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_sockaddr(sockaddr: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket address tuple."""
    return join_host_port(str(sockaddr[0]), sockaddr[1])
