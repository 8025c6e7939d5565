"""The DERP relay's Prometheus metrics, read from its counters (stats.py) when scraped.

The hot path keeps bumping plain integers; this collector turns them into metric families on
demand, so a scrape costs the relay nothing between scrapes. Drop reasons are derper's fixed set.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .stats import DROP_REASONS, DerpStats

__all__ = ["DerpCollector"]


class DerpCollector(Collector):
    def __init__(self, stats: DerpStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily("trioscale_derp_clients", "clients connected and admitted (mesh peers included)",
                                value=s.clients_current)
        yield GaugeMetricFamily("trioscale_derp_connections", "connections accepted and not yet closed",
                                value=s.connections_current)
        yield CounterMetricFamily("trioscale_derp_clients_accepted", "clients admitted since start",
                                  value=s.clients_total)
        yield CounterMetricFamily("trioscale_derp_clients_rejected", "clients refused at admission",
                                  value=s.clients_rejected)
        yield CounterMetricFamily("trioscale_derp_packets_received", "packets received from clients",
                                  value=s.packets_received)
        yield CounterMetricFamily("trioscale_derp_received_bytes", "bytes of packets received from clients",
                                  value=s.bytes_received)
        yield CounterMetricFamily("trioscale_derp_packets_relayed", "packets written to a client on this relay",
                                  value=s.packets_relayed)
        yield CounterMetricFamily("trioscale_derp_relayed_bytes", "bytes of packets written to a client on this relay",
                                  value=s.bytes_relayed)
        drops = CounterMetricFamily("trioscale_derp_packets_dropped", "packets dropped, by reason", labels=["reason"])
        for reason in DROP_REASONS:
            drops.add_metric([reason], getattr(s, "drop_" + reason))
        yield drops
        yield CounterMetricFamily("trioscale_derp_dropped_bytes", "bytes of packets dropped", value=s.bytes_dropped)
        forwards = CounterMetricFamily(
            "trioscale_derp_mesh_forwarded_packets",
            "packets forwarded over the mesh: out = to the peer relay that holds the destination, in = from one",
            labels=["direction"],
        )
        forwards.add_metric(["out"], s.packets_forwarded_out)
        forwards.add_metric(["in"], s.packets_forwarded_in)
        yield forwards
        fbytes = CounterMetricFamily("trioscale_derp_mesh_forwarded_bytes", "bytes of those packets",
                                     labels=["direction"])
        fbytes.add_metric(["out"], s.bytes_forwarded_out)
        fbytes.add_metric(["in"], s.bytes_forwarded_in)
        yield fbytes
        yield GaugeMetricFamily("trioscale_derp_mesh_peers", "mesh peer relays with a link up", value=s.mesh_links_up)
        yield CounterMetricFamily("trioscale_derp_write_timeouts", "writes to a client that timed out",
                                  value=s.write_timeouts)
