"""One process's metrics and readiness, as `trioscale serve` (and each one-service shape) wires them.

`ProcessOps` holds the process's Prometheus registry (prometheus-client's process, platform and GC
collectors, then each started service's collector), the readiness checks of what this process runs,
and the store wrapped so every store operation's latency is observed by its name. The services know
nothing of it: serve.py hands it what each service reported when it started.

Readiness, check by check:

- ``database``: the store answers a cheap read (the change log's head) within the check's bound;
- ``listeners``: every service of the process has bound its listeners (set once start-up is done);
- ``changelog.<follower>``: the follower (the coordinator, the DNS server) has applied the change
  log to within `MAX_LAG` changes of its head, so what it serves is not far behind the database;
- ``derp.registration``: the relay's row is in the store, so coordinators put it in the DERP map.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from trioscale.shared.net.ops import OpsEndpoints, Readiness
from trioscale.shared.store.base import Store

__all__ = ["ProcessOps", "TimedStore", "STORE_OPERATION_SECONDS", "STORE_OPERATIONS", "MAX_LAG"]

#: changes a follower may trail the log's head by and still be ready (a burst of writes is
#: applied in well under a second; a follower this far behind is stuck or cut off)
MAX_LAG = 1000

#: the operations timed: the Store contract's coroutine methods (a fixed set of names)
STORE_OPERATIONS = frozenset(
    name for name, attr in vars(Store).items() if not name.startswith("_") and inspect.iscoroutinefunction(attr)
)

STORE_OPERATION_SECONDS = Histogram(
    "trioscale_store_operation_seconds", "store operations by name (the Store contract's methods)",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=None,
)


class TimedStore:
    """The store, with each of its coroutine methods timed into STORE_OPERATION_SECONDS. The label
    is the method's name: the Store contract's fixed set, never a value. Everything else (subscribe,
    attributes) passes through untouched."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in STORE_OPERATIONS or not inspect.iscoroutinefunction(attr):
            return attr
        observe = STORE_OPERATION_SECONDS.labels(name).observe

        @functools.wraps(attr)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await getattr(self._store, name)(*args, **kwargs)
            finally:
                observe(time.perf_counter() - started)

        # kept on the instance, so later calls find it without coming here (a store call is
        # looked up a few times per request)
        setattr(self, name, timed)
        return timed

    @property
    def unwrapped(self) -> Any:
        return self._store


class _Lag(Collector):
    """trioscale_changelog_lag: how many changes each follower trails the log's head by, as of
    the last scrape's read of the head (ProcessOps.refresh)."""

    def __init__(self, ops: "ProcessOps") -> None:
        self.ops = ops

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily("trioscale_changelog_lag", "changes committed but not yet applied, by follower",
                                labels=["follower"])
        head = self.ops.head
        for name, seq in sorted(self.ops.followers.items()):
            lag.add_metric([name], max(0, head - seq()) if head is not None else 0)
        yield lag
        yield GaugeMetricFamily("trioscale_changelog_head", "the change log's last committed seq (at the last scrape)",
                                value=head or 0)


class _Store(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from STORE_OPERATION_SECONDS.collect()


class ProcessOps:
    """The registry, readiness checks and store timing of one process."""

    def __init__(self, store: Any) -> None:
        self.store = TimedStore(store)
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_Store())
        self.readiness = Readiness()
        self.endpoints = OpsEndpoints(self.registry, self.readiness)
        #: follower name -> its applied seq
        self.followers: dict[str, Any] = {}
        self.head: int | None = None
        self.readiness.add("database", self._database)
        self.listeners_bound = self.readiness.add_flag("listeners", "services are starting")
        self.endpoints.on_scrape(self.refresh)
        self.registry.register(_Lag(self))

    async def refresh(self) -> None:
        self.head = await self.store.unwrapped.latest_seq()

    async def _database(self) -> str | None:
        try:
            self.head = await self.store.unwrapped.latest_seq()
        except Exception as exc:
            return f"the store does not answer: {type(exc).__name__}: {exc}"
        return None

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def follow(self, name: str, seq: Any) -> None:
        """Add follower `name` (`seq()` = its last applied change) to the lag gauge and readiness."""
        self.followers[name] = seq

        async def caught_up() -> str | None:
            head = await self.store.unwrapped.latest_seq()
            lag = head - seq()
            if lag > MAX_LAG:
                return f"{lag} changes behind the change log (at most {MAX_LAG})"
            return None

        self.readiness.add(f"changelog.{name}", caught_up)

    def relay(self, derp: Any) -> None:
        """Ready once the relay's registration is in the store (its last write succeeded)."""

        async def registered() -> str | None:
            reg = derp.registration
            if reg is None or not getattr(reg, "registered", False):
                return "the relay's registration is not in the store (yet)"
            return None

        self.readiness.add("derp.registration", registered)

    def started(self, name: str, service: Any) -> None:
        """Expose what service `name` reported when it started (serve.py calls this for each).
        Each service's collector is imported here, when it runs: serve.py loads services the same
        way, so a build without one still starts the others."""
        if service is None:
            return
        if name == "stun":
            from trioscale.services.stun.metrics import StunCollector

            self.register(StunCollector(service.stats))
        elif name == "derp":
            from trioscale.services.derp.metrics import DerpCollector

            self.register(DerpCollector(service.stats))
            self.relay(service)
        elif name == "coord":
            from trioscale.services.coord.metrics import CoordCollector

            coordinator = service.coordinator
            self.register(CoordCollector(coordinator))
            self.follow("coord", lambda: coordinator.seq)
        elif name == "dns":
            from trioscale.services.dns.metrics import DnsCollector

            self.register(DnsCollector(service.stats))
            self.follow("dns", lambda: service.seq)
