"""What the rollout controller knows of each host: its group, whether it lives, and its newest
rollout report, from the messages of `erel.status` it follows (heartbeats `host.*`, rollout
events `rollout.*`, presence records `presence.*`).

Used by `publisher.rollout` (one `HostBook` per controller). Each message counts only under its
own host's routing key. Liveness is on the controller's clock: the queue is private, so a
heartbeat arrives when it is sent, and the agents' clocks do not matter. A report's
`rollout_held` goes on to `publisher.delivery`, which sends a host whose view is stale the
current document.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from erel_sync.adapters.broker import topology as topo
from erel_sync.core.clusterview import parse_time
from erel_sync.core.liveness import HEARTBEAT_INTERVAL, MISSED_BEATS
from erel_sync.core.rollout import HostReport, HostState
from erel_sync.publisher.delivery import Delivery

# A host name, an FQDN or an address: the host part of an Erlang long node name.
HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.:-]{0,251}[A-Za-z0-9])?")


@dataclass
class SeenHost:
    group: str | None
    interval: float
    heard: float
    left: bool = False
    report: HostReport | None = None
    cluster_host: str = ""  # what other hosts reach it at (its heartbeats' `cluster_host`)

    def alive(self, now: float) -> bool:
        return not self.left and now - self.heard <= MISSED_BEATS * self.interval + 1.0

    def standing(self, now: float) -> tuple[Any, ...]:
        """What of this host the decisions read."""
        r = self.report
        fields = (r.group, r.seq, r.state, r.grant, r.reason) if r is not None else None
        return (self.group, self.alive(now), fields, self.cluster_host)


class HostBook:
    def __init__(self, counters: dict[str, int], delivery: Delivery) -> None:
        self.counters = counters
        self.delivery = delivery
        self.hosts: dict[str, SeenHost] = {}

    def take(self, key: str, body: bytes, now: float) -> bool:
        """One message; True when it changed what the decisions read. Most heartbeats do not,
        and need no step: a hundred hosts reporting at once used to cost a hundred steps, and
        the reports queued behind them."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(doc, dict) or not isinstance(host := doc.get("host_id"), str):
            return False
        seen = self.hosts.get(host)
        before = seen.standing(now) if seen is not None else None
        kind = doc.get("kind")
        if kind == "heartbeat" and key == topo.host_key(host):
            self._heartbeat(host, doc, now)
        elif kind == "rollout-event" and key == topo.rollout_key(host):
            report = HostReport.from_json(doc)
            if report is None:
                self.counters["rollout_reports_refused"] = (
                    self.counters.get("rollout_reports_refused", 0) + 1
                )
                return False
            seen = self.hosts.setdefault(host, SeenHost(report.group, HEARTBEAT_INTERVAL, now))
            seen.heard, seen.left = now, False
            self._take(seen, report)
            self.delivery.held(host, report.group, doc.get("rollout_held"))
        elif kind == "presence" and key == topo.presence_key(host) and seen is not None:
            seen.left = doc.get("state") == "left"
            if seen.left:
                seen.heard = 0.0  # gone at once, not after three missed beats
        else:
            return False
        return self.hosts[host].standing(now) != before

    def _heartbeat(self, host: str, doc: dict[str, Any], now: float) -> None:
        group = doc.get("group") if isinstance(doc.get("group"), str) else None
        interval = doc.get("heartbeat_interval")
        if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
            interval = HEARTBEAT_INTERVAL
        seen = self.hosts.setdefault(host, SeenHost(group, float(interval), now))
        seen.group, seen.interval, seen.heard, seen.left = group, float(interval), now, False
        if isinstance(ch := doc.get("cluster_host"), str) and HOST_RE.fullmatch(ch):
            seen.cluster_host = ch
        report: HostReport | None = None
        if isinstance(doc.get("rollout"), dict):
            report = HostReport.from_json({**doc["rollout"], "host_id": host, "group": group})
        elif isinstance(doc.get("snapshot"), dict) and isinstance(doc["snapshot"].get("seq"), int):
            # An agent that does not report rollouts (older): what its status says.
            state = HostState.CONVERGED if doc.get("converged") is True else HostState.WAITING
            at = parse_time(doc.get("sent")) or 0.0
            report = HostReport(host, group, doc["snapshot"]["seq"], state, at=at)
        if report is not None:
            self._take(seen, report)
        self.delivery.held(host, group, doc.get("rollout_held"))

    @staticmethod
    def _take(seen: SeenHost, report: HostReport) -> None:
        """The newest report by the agent's own clock (an event and the heartbeat after it
        say the same; a late heartbeat must not undo a newer event)."""
        if seen.report is None or report.at >= seen.report.at:
            seen.report = report

    def group_hosts(self, group: str, now: float) -> dict[str, HostReport]:
        """The group's live hosts, each with its newest report."""
        return {
            h: s.report
            for h, s in self.hosts.items()
            if s.group == group and s.report is not None and s.alive(now)
        }

    def members(self, group: str, now: float) -> dict[str, str]:
        """The group's live hosts that said where they are reached (`cluster_host`): a
        clustered release's expected peers."""
        return {
            h: s.cluster_host
            for h, s in sorted(self.hosts.items())
            if s.group == group and s.cluster_host and s.alive(now)
        }

    def groups_of(self) -> dict[str, str | None]:
        return {h: s.group for h, s in self.hosts.items() if not s.left}
