"""A daemon's Prometheus endpoint (`--metrics-listen ADDR`; off by default): GET /metrics in
the text format, from a registry of the daemon's own.

Served by asyncio on the daemon's event loop, not by prometheus_client's threaded server:
a scrape then reads the counters and the last report between two steps of the loop, never
while a step is changing them. Counters are mapped through `core.metrics` (one declaration
each); gauges are `core.metrics.Reading`s made at scrape time; histograms are observed where
the time is taken (`Metrics.reconcile`, `Metrics.publish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from erel_sync.core.metrics import CATALOGUE, Daemon, Reading, metric_for
from erel_sync.model.names import listen_address

log = logging.getLogger("erel_sync.metrics")

# Reconcile ticks take milliseconds when nothing changes and minutes for an upgrade.
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class DaemonCollector(Collector):
    def __init__(
        self,
        daemon: Daemon,
        counters: Callable[[], Mapping[str, int]],
        gauges: Callable[[], Iterable[Reading]],
    ) -> None:
        self.daemon, self.counters, self.gauges = daemon, counters, gauges

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily] = {}
        for decl in CATALOGUE[self.daemon]:
            fam = CounterMetricFamily(decl.metric(self.daemon), decl.help, labels=decl.labels)
            families[decl.name] = fam
            if not decl.family:  # a plain counter is there from the start, at 0
                fam.add_metric([], 0.0)
        plain = {decl.key: decl for decl in CATALOGUE[self.daemon] if not decl.family}
        for key, value in sorted(self.counters().items()):
            found = metric_for(self.daemon, key)
            if found is None:
                continue  # tests/unit/test_metrics.py keeps every counted key declared
            decl, values = found
            if decl.key in plain:
                families[decl.name].samples.clear()
            families[decl.name].add_metric(list(values), float(value))
        yield from families.values()
        gauges: dict[str, GaugeMetricFamily] = {}
        for r in self.gauges():
            name = f"erel_sync_{self.daemon}_{r.name}"
            gauge = gauges.get(name)
            if gauge is None:
                labels = [k for k, _ in r.labels]
                gauge = gauges[name] = GaugeMetricFamily(name, r.help, labels=labels)
            gauge.add_metric([v for _, v in r.labels], r.value)
        yield from gauges.values()


class Metrics:
    """One daemon's registry, its collector and its histograms."""

    def __init__(
        self,
        daemon: Daemon,
        counters: Callable[[], Mapping[str, int]],
        gauges: Callable[[], Iterable[Reading]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon, counters, gauges))
        self.reconcile = Histogram(
            "erel_sync_agent_reconcile_duration_seconds",
            "Time one reconcile tick took.",
            buckets=TICK_BUCKETS,
            registry=self.registry if daemon == "agent" else None,
        )
        self.publish = Histogram(
            "erel_sync_publisher_publish_duration_seconds",
            "From a new head seen to its snapshot confirmed on the config stream.",
            buckets=PUBLISH_BUCKETS,
            registry=self.registry if daemon == "publisher" else None,
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)


async def serve(metrics: Metrics, listen: str, stop: asyncio.Event) -> None:
    """Serve GET /metrics on `listen` until `stop`. Anything else gets 404; a request larger
    than 8 KiB or slower than 10 s is dropped."""
    host, port = listen_address(listen)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            if (
                len(parts) == 3
                and parts[0] in (b"GET", b"HEAD")
                and parts[1].split(b"?")[0] == b"/metrics"
            ):
                body, status, ctype = metrics.text(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found: try /metrics\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + (body if parts[:1] != [b"HEAD"] else b"")
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(on_client, host, port, limit=8192)
    log.info("metrics on http://%s:%d/metrics", host, port)
    async with server:
        await stop.wait()
