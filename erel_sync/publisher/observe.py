"""The publisher's Prometheus endpoint (`publisher --metrics-listen`): its counters through
`core.metrics`, its gauges (seq, active, connected, each group's rollout) at scrape time, and
the publish latency observed by the daemon. prometheus_client is imported only when served."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Protocol

from erel_sync.core.metrics import Reading, publisher_readings
from erel_sync.publisher.rollout import RolloutController
from erel_sync.publisher.settings import Counters, PublisherSettings

if TYPE_CHECKING:
    from erel_sync.adapters.metrics import Metrics


class Publisher(Protocol):
    """What is read of `publisher.daemon.Publisher` (a protocol: no import cycle)."""

    s: PublisherSettings
    counters: Counters
    seq: int
    epoch: int | None
    connected: bool
    rollout: RolloutController
    metrics: Metrics | None


def counters_of(pub: Publisher) -> dict[str, int]:
    c = pub.counters
    plain = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name != "extra"}
    return {**c.extra, **plain}


async def serve_metrics(pub: Publisher, stop: asyncio.Event) -> None:
    from erel_sync.adapters import metrics  # noqa: PLC0415

    def gauges() -> list[Reading]:
        doc = pub.rollout.doc
        active = pub.epoch is not None if pub.s.ha else True
        groups = dict(doc.groups) if doc is not None else {}
        return publisher_readings(pub.seq, active, pub.connected, groups)

    pub.metrics = pub.metrics or metrics.Metrics("publisher", lambda: counters_of(pub), gauges)
    await metrics.serve(pub.metrics, pub.s.metrics_listen, stop)
