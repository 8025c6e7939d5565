"""The DNS server's Prometheus metrics, read from its counters (resolver.DnsStats) when scraped.

Query types are the ones the zone serves plus "other", response codes DNS's own small set: both
label sets are bounded whatever a client sends.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .resolver import QUERY_TYPES, DnsStats

__all__ = ["DnsCollector"]


class DnsCollector(Collector):
    def __init__(self, stats: DnsStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        queries = CounterMetricFamily("trioscale_dns_queries", "questions answered or forwarded, by query type",
                                      labels=["type"])
        for qtype in QUERY_TYPES:
            queries.add_metric([qtype], s.qtypes.get(qtype, 0))
        yield queries
        responses = CounterMetricFamily("trioscale_dns_responses", "responses sent, by response code",
                                        labels=["rcode"])
        for rcode, count in sorted(s.rcodes.items()):
            responses.add_metric([rcode], count)
        yield responses
        yield CounterMetricFamily("trioscale_dns_messages_received", "UDP datagrams and TCP messages received",
                                  value=s.queries)
        yield CounterMetricFamily("trioscale_dns_dropped", "messages not answered (runts, responses, bad headers)",
                                  value=s.dropped)
        yield CounterMetricFamily("trioscale_dns_rate_limited", "queries refused by the per-source rate limit",
                                  value=s.rate_limited)
        yield CounterMetricFamily("trioscale_dns_forwarded", "queries forwarded upstream", value=s.forwarded)
        yield CounterMetricFamily("trioscale_dns_forward_failures", "forwarded queries without an upstream answer",
                                  value=s.forward_failures)
