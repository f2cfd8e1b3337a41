"""Host status: what an agent publishes as its heartbeat and keeps in status.json.

Pure. `host_status` builds the typed `HostStatus` after every reconcile tick from the match, the
snapshot held, the desired releases, fresh observations, the recorded release statuses, the
plan left over and the holds; `Heartbeat` adds what the agent process says of itself. Each has
one `to_json`, the wire format documented in docs/status.md. The agent's reconciler and reporter
build them; readers (`erel-sync status`/`members`/`wait`, `core.clusterview`,
`core.conditions`, `core.liveness`) read the JSON, since they read other agents' heartbeats,
older or newer than their own code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from erel_sync.core.desired import HostReleaseSpec
from erel_sync.core.matching import GroupMatch, HostIdentity
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.reconcile import Plan, SkipReason
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.core.rollout import HostReport
from erel_sync.core.snapshot import Refusal, Snapshot

STATUS_FORMAT = 1


def release_state(
    name: str,
    want: HostReleaseSpec | None,
    obs: ObservedRelease | None,
    *,
    skipped: Mapping[str, SkipReason],
    healthy: bool | None,
    pending: frozenset[str] = frozenset(),
) -> str:
    """One word per release: Ready, Progressing, Waiting, Failed, Held, Suspended, Stopped,
    Orphaned … `pending`: releases with an action left after the tick (a new config not yet
    applied runs the old one: not Ready)."""
    if name in skipped and skipped[name] in (SkipReason.HELD, SkipReason.SUSPENDED):
        return skipped[name].value
    if name in skipped and skipped[name] is SkipReason.ROLLOUT:
        return "Waiting"
    if name in skipped and skipped[name] in (SkipReason.FAILED_REVISION, SkipReason.SECRET):
        return "Failed"
    if want is None:
        return "Unmanaged" if obs and not obs.managed else "Orphaned"
    if obs is None or not obs.installed:
        return "Backoff" if name in skipped else "Pending"
    if not obs.running:
        return "Backoff" if name in skipped else "Stopped"
    if obs.version != want.version.version or name in pending:
        return "Progressing"
    if name in skipped and skipped[name] is SkipReason.BACKOFF:
        return "Backoff"  # a config change that failed, retried later
    if healthy is False:
        return "Degraded"
    return "Ready"


def converged(
    desired: Mapping[str, HostReleaseSpec] | None,
    observed: Mapping[str, ObservedRelease],
    plan_after: Plan,
) -> bool:
    """Every desired release runs at its version and nothing is left to do."""
    if desired is None:
        return False
    if plan_after.actions or any(
        s.reason
        in (SkipReason.FAILED_REVISION, SkipReason.BACKOFF, SkipReason.ROLLOUT, SkipReason.SECRET)
        for s in plan_after.skipped
    ):
        return False
    return all(
        (o := observed.get(n)) is not None and o.running and o.version == w.version.version
        for n, w in desired.items()
    )


@dataclass(frozen=True)
class ReleaseReport:
    """One release in a host status (an entry of `releases`)."""

    name: str
    desired_version: str | None  # None when not desired (orphaned or unmanaged)
    version: str | None  # running version, else the one a boot would start
    installed: bool
    managed: bool
    running: bool
    healthy: bool | None  # None: not probed
    state: str  # a `release_state` word
    hold: Mapping[str, Any] | None
    reason: str  # CamelCase reason of the last failure or skip
    last_error: str
    # A clustered release's peers: {expected, connected, missing} (node names); None otherwise.
    peers: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "desired_version": self.desired_version,
            "version": self.version,
            "installed": self.installed,
            "managed": self.managed,
            "running": self.running,
            "healthy": self.healthy,
            "state": self.state,
            "hold": dict(self.hold) if self.hold is not None else None,
            "reason": self.reason,
            "last_error": self.last_error,
            "peers": dict(self.peers) if self.peers is not None else None,
        }


@dataclass(frozen=True)
class HostStatus:
    """What one host reports after a tick: its group, the snapshots it holds, applied and
    attempted, and each release's state."""

    host_id: str
    labels: Mapping[str, str]
    group: str | None  # None when unassigned or ambiguous
    match: str  # host | glob | selector | Unassigned | Ambiguous | NoSnapshot
    candidates: tuple[str, ...]  # the tied groups when Ambiguous
    snapshot: Mapping[str, Any] | None  # {seq, revision, digest} of the snapshot held
    applied: Mapping[str, Any] | None  # {seq, revision} last fully converged here
    attempted: Mapping[str, Any] | None  # {seq, revision} last acted upon
    converged: bool
    releases: tuple[ReleaseReport, ...]
    time: str  # when it was built (the end of a tick)
    # Where this host stands in its group's rollout (set by the agent's reconciler after the
    # tick; None when it reports none: no group, or rollouts not gated here).
    rollout: HostReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATUS_FORMAT,
            "kind": "heartbeat",
            "host_id": self.host_id,
            "labels": dict(self.labels),
            "group": self.group,
            "match": self.match,
            "candidates": list(self.candidates),
            "snapshot": _copy(self.snapshot),
            "applied": _copy(self.applied),
            "attempted": _copy(self.attempted),
            "converged": self.converged,
            "releases": [r.to_json() for r in self.releases],
            "time": self.time,
            "rollout": _rollout_json(self.rollout),
        }


def _rollout_json(report: HostReport | None) -> dict[str, Any] | None:
    """The heartbeat's `rollout` key: the rollout event's fields that say where this host stands
    (the rest, host and group, are the heartbeat's own)."""
    if report is None:
        return None
    return {
        "seq": report.seq,
        "state": report.state.value,
        "reason": report.reason,
        "at": report.at,
        "grant": report.grant,
    }


def _copy(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(doc) if doc else None


def host_status(
    *,
    host: HostIdentity,
    match: GroupMatch | None,
    snapshot: Snapshot | None,
    applied: Mapping[str, Any] | None,
    attempted: Mapping[str, Any] | None,
    desired: Mapping[str, HostReleaseSpec] | None,
    observed: Mapping[str, ObservedRelease],
    memory: Mapping[str, ReleaseStatus],
    plan_after: Plan,
    holds: Mapping[str, Mapping[str, Any]],
    now: str,
) -> HostStatus:
    """The host's status after a tick. `observed`: this tick's observations (health
    included); `plan_after`: planning again after the tick's steps, what is left to do."""
    skipped = {s.release: s.reason for s in plan_after.skipped}
    # Only the path of a secret that cannot be read, never its content.
    locked = {s.release: s.detail for s in plan_after.skipped if s.reason is SkipReason.SECRET}
    pending = frozenset(a.release for a in plan_after.actions)
    health = _health(observed)
    releases = []
    for n in sorted(set(desired or {}) | set(observed) | set(holds)):
        want = (desired or {}).get(n)
        obs = observed.get(n)
        status = memory.get(n, ReleaseStatus())
        releases.append(
            ReleaseReport(
                name=n,
                desired_version=want.version.version if want else None,
                version=obs.version if obs else None,
                installed=bool(obs and obs.installed),
                managed=bool(obs and obs.managed),
                running=bool(obs and obs.running),
                healthy=health.get(n),
                state=release_state(
                    n, want, obs, skipped=skipped, healthy=health.get(n), pending=pending
                ),
                hold=dict(holds[n]) if n in holds else None,
                reason=SkipReason.SECRET.value
                if n in locked
                else status.last_reason or (skipped[n].value if n in skipped else ""),
                last_error=locked.get(n, status.last_error),
                peers=obs.details.get("peers")
                if obs is not None and want is not None and want.distribution.clustered
                else None,
            )
        )
    return HostStatus(
        host_id=host.host_id,
        labels=dict(host.labels),
        group=match.group if match else None,
        match=match.how if match else "NoSnapshot",
        candidates=tuple(match.candidates) if match else (),
        snapshot={"seq": snapshot.seq, "revision": snapshot.revision, "digest": snapshot.digest}
        if snapshot
        else None,
        applied=_copy(applied),
        attempted=_copy(attempted),
        converged=converged(desired, observed, plan_after),
        releases=tuple(releases),
        time=now,
    )


def _health(observed: Mapping[str, ObservedRelease]) -> dict[str, bool | None]:
    """Each release's verdict from this tick's observations (None: not running, or no check)."""
    if not any(o.running for o in observed.values()):
        return {}
    return {n: o.healthy for n, o in observed.items()}


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat: the host status (None before the first tick) and what the agent process
    says of itself."""

    host_id: str
    labels: Mapping[str, str]
    status: HostStatus | None
    agent_version: str
    instance: str  # random per agent process: two agents claiming one host id show up as two
    pid: int
    hostname: str
    broker: str  # "connected" or BrokerDisconnected
    store_error: str | None  # why the newest snapshot could not be written (the old one holds)
    snapshot_refused: Refusal | None  # the newest snapshot refused, while in force
    heartbeat_interval: float  # seconds a reader may expect between two heartbeats
    counters: Mapping[str, int]
    sent: str
    # What other hosts reach this one at: a clustered release's nodes are `<release>@<this>`.
    cluster_host: str = ""

    def to_json(self) -> dict[str, Any]:
        doc = (
            self.status.to_json()
            if self.status is not None
            else {
                "format": STATUS_FORMAT,
                "kind": "heartbeat",
                "host_id": self.host_id,
                "labels": dict(self.labels),
            }
        )
        doc.update(
            {
                "agent_version": self.agent_version,
                "instance": self.instance,
                "pid": self.pid,
                "hostname": self.hostname,
                "cluster_host": self.cluster_host,
                "broker": self.broker,
                "store_error": self.store_error,
                "snapshot_refused": self.snapshot_refused.to_json()
                if self.snapshot_refused is not None
                else None,
                "heartbeat_interval": self.heartbeat_interval,
                "counters": dict(self.counters),
                "sent": self.sent,
            }
        )
        return doc
