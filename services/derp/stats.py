"""Counters of the DERP relay (plain ints bumped on the hot path; read via as_dict())."""

from __future__ import annotations

from typing import Any

#: drop reasons, as derper names them
DROP_REASONS = (
    "unknown_dest",  # no client with that key here (and no mesh peer knows it)
    "unknown_dest_on_fwd",  # a mesh peer forwarded a packet for a key not connected here
    "dup_client",  # several connections for the key and none active
    "queue_head",  # the destination's queue was full: its oldest packet was dropped
    "gone_disconnected",  # still queued when the destination's connection ended
    "write_error",  # lost with a failed or timed-out write
)


class DerpStats:
    __slots__ = (
        "accepts",
        "connections_current",  # accepted and not yet closed, authenticated or not
        "handshake_timeouts",  # closed by a deadline before the client was admitted
        "tls_errors",
        "http_requests",
        "clients_current",
        "clients_total",
        "clients_rejected",
        "clients_expired",  # refused, or closed, because their node expired
        "home_clients",
        "watchers",
        "mesh_clients",
        "mesh_peers",
        "mesh_links_up",
        "mesh_packets_sent",
        "protocol_errors",
        "packets_received",
        "bytes_received",
        "packets_relayed",
        "bytes_relayed",
        "packets_forwarded_in",
        "bytes_forwarded_in",
        "packets_forwarded_out",
        "bytes_forwarded_out",
        "packets_dropped",
        "bytes_dropped",
        "drop_unknown_dest",
        "drop_unknown_dest_on_fwd",
        "drop_dup_client",
        "drop_queue_head",
        "drop_gone_disconnected",
        "drop_write_error",
        "frames_written",
        "writes",
        "write_timeouts",
        "pings_received",
        "pongs_sent",
        "pongs_received",
        "keepalives_sent",
        "peer_gone_sent",
        "peer_present_sent",
        "unknown_frames",
        "restarting_sent",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def drop(self, reason: str, nbytes: int, count: int = 1) -> None:
        """Record `count` dropped packets totalling `nbytes` (not the hot path's fast inline form)."""
        self.packets_dropped += count
        self.bytes_dropped += nbytes
        name = "drop_" + reason
        setattr(self, name, getattr(self, name) + count)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__ if not name.startswith("drop_")}
        out["drops"] = {reason: getattr(self, "drop_" + reason) for reason in DROP_REASONS}
        return out
