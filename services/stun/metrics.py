"""The STUN server's Prometheus metrics, read from its counters when scraped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["StunCollector"]


class StunCollector(Collector):
    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield CounterMetricFamily("trioscale_stun_requests", "STUN binding requests received", value=s.requests)
        yield CounterMetricFamily("trioscale_stun_responses", "STUN binding responses sent", value=s.responses)
        yield CounterMetricFamily("trioscale_stun_ignored_datagrams", "datagrams that were not a binding request",
                                  value=s.ignored)
        yield CounterMetricFamily("trioscale_stun_send_errors", "responses the socket refused", value=s.send_errors)
