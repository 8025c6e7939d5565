"""The coordinator's Prometheus metrics.

Event metrics (deltas written, registrations, compile and fan-out times) are module-level objects
bumped where the event happens; they are registered in no registry of their own, so a process (or a
test) exposes them through `CoordCollector`, together with the gauges read from a running
coordinator at scrape time. Labels take values from small fixed sets only (methods, results):
never a node, key, id or name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CoordCollector",
    "DELTAS_SENT",
    "DELTA_BYTES_SENT",
    "FANOUT_SECONDS",
    "FLUSH_CPU_SECONDS",
    "FLUSH_PASSES",
    "FLUSH_SENT_BYTES",
    "KEEPALIVES_SENT",
    "POLICY_COMPILE_SECONDS",
    "REGISTRATIONS",
    "REGISTER_METHODS",
    "REGISTER_RESULTS",
    "FanoutWave",
    "count_registration",
]

#: how a node registers: a pre-auth key, the interactive URL (an admin or the CLI approves it),
#: OpenID Connect, or a logout (an expiry in the past)
REGISTER_METHODS = ("authkey", "interactive", "oidc", "logout")
#: what a RegisterRequest got: the node is authorized, told where to log in, or refused
REGISTER_RESULTS = ("success", "pending", "error")

# Buckets from a millisecond (one replica, a handful of nodes) to tens of seconds (a large fan-out
# behind a slow client or a lagging replica).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

DELTAS_SENT = Counter(
    "trioscale_coord_deltas_sent", "map responses written to map sessions after the first map",
    registry=None,
)
DELTA_BYTES_SENT = Counter(
    "trioscale_coord_delta_sent_bytes", "bytes of those map responses as framed on the stream (after compression)",
    registry=None,
)
FLUSH_PASSES = Counter(
    "trioscale_coord_flush_passes", "passes of the flusher, which writes every map session's queued deltas",
    registry=None,
)
FLUSH_CPU_SECONDS = Counter(
    "trioscale_coord_flush_cpu_seconds",
    "CPU time of the flusher's passes (its own thread time, not what runs while it yields)",
    registry=None,
)
FLUSH_SENT_BYTES = Counter(
    "trioscale_coord_flush_sent_bytes", "bytes of deltas the flusher's passes wrote (part of delta_sent_bytes)",
    registry=None,
)
KEEPALIVES_SENT = Counter(
    "trioscale_coord_keepalives_sent",
    "keepalives written to map sessions that had nothing else written to them for a keepalive interval",
    registry=None,
)
FANOUT_SECONDS = Histogram(
    "trioscale_coord_change_fanout_seconds",
    "from a change's commit in the store to the write of the last map session it reached on this replica",
    buckets=_LATENCY_BUCKETS, registry=None,
)
POLICY_COMPILE_SECONDS = Histogram(
    "trioscale_coord_policy_compile_seconds", "time to compile a policy for the tailnet (at start and on each change)",
    buckets=_LATENCY_BUCKETS, registry=None,
)
REGISTRATIONS = Counter(
    "trioscale_coord_registrations", "RegisterRequests answered, by method and result",
    ["method", "result"], registry=None,
)
for _m in REGISTER_METHODS:  # every series exists from the start, so rate() sees its first increase
    for _r in REGISTER_RESULTS:
        REGISTRATIONS.labels(_m, _r)


def count_registration(method: str, answer: dict[str, Any]) -> None:
    """Count one answered RegisterRequest; `answer` is the RegisterResponse sent."""
    if answer.get("Error"):
        result = "error"
    elif answer.get("AuthURL") and not answer.get("MachineAuthorized"):
        result = "pending"
    else:
        result = "success"
    REGISTRATIONS.labels(method if method in REGISTER_METHODS else "interactive", result).inc()


class FanoutWave:
    """One committed change on its way to map sessions: observed in FANOUT_SECONDS when the last
    session it reached has written it. A session closed before writing never finishes its waves;
    they are then simply forgotten with the session's queue."""

    __slots__ = ("committed", "remaining")

    def __init__(self, committed: datetime, receivers: int) -> None:
        self.committed = committed
        self.remaining = receivers

    def written(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            FANOUT_SECONDS.observe(max(0.0, time.time() - self.committed.timestamp()))


class CoordCollector(Collector):
    """What a coordinator exposes: gauges read from it when scraped, and the event metrics above."""

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        by_node = self.coordinator.sessions.by_node
        yield GaugeMetricFamily("trioscale_coord_connected_nodes",
                                "nodes with at least one map session on this replica", value=len(by_node))
        yield GaugeMetricFamily("trioscale_coord_map_sessions", "streaming map sessions open on this replica",
                                value=sum(len(s) for s in by_node.values()))
        yield GaugeMetricFamily("trioscale_coord_online_nodes", "nodes online in the tailnet (any replica)",
                                value=len(self.coordinator.tailnet.online))
        yield GaugeMetricFamily("trioscale_coord_nodes", "nodes in the tailnet",
                                value=len(self.coordinator.tailnet.nodes))
        for metric in (DELTAS_SENT, DELTA_BYTES_SENT, FLUSH_PASSES, FLUSH_CPU_SECONDS, FLUSH_SENT_BYTES,
                       KEEPALIVES_SENT, FANOUT_SECONDS, POLICY_COMPILE_SECONDS, REGISTRATIONS):
            yield from metric.collect()


def observe_written(waves: Iterable[FanoutWave | None], frames: int, nbytes: int) -> None:
    """A session wrote `frames` queued messages (`nbytes` on the stream) carrying `waves`."""
    observe_sent(frames, nbytes)
    waves_written(waves)


def observe_sent(frames: int, nbytes: int) -> None:
    """`frames` queued messages were written (`nbytes` on the streams), by one session or summed
    over many (the flusher counts once per slice of a pass: two counters a session cost a
    one-change pass at 5,000 sessions 6 % of its CPU)."""
    DELTAS_SENT.inc(frames)
    DELTA_BYTES_SENT.inc(nbytes)


def waves_written(waves: Iterable[FanoutWave | None]) -> None:
    for wave in waves:
        if wave is not None:
            wave.written()
