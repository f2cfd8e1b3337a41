"""What the daemons export as Prometheus metrics, without Prometheus (a pure core module).

Every counter the daemons keep, declared once: its key in the counters dict (what heartbeats,
status.json and `status -o json` carry), the Prometheus metric it is exported as (named after
Prometheus's guide: `erel_sync_<daemon>_..._total`), its help text, and for a family of keys
(`rejected.<Reason>`) the label the suffix becomes.

The daemons count with plain string keys (a Counter, a dict); `metric_for` maps each key to
its declaration, and a unit test (tests/unit/test_counters.py) finds every key counted in the
source and fails on one not declared here, so a new counter cannot go unexported or unnamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Daemon = Literal["agent", "publisher"]


@dataclass(frozen=True)
class CounterDecl:
    key: str  # the dict key; ending in "." it is a family: `key + suffix`
    name: str  # the metric's name without `erel_sync_<daemon>_` and without `_total`
    help: str
    labels: tuple[str, ...] = ()  # for a family: the labels taking the suffix's dotted parts

    @property
    def family(self) -> bool:
        return self.key.endswith(".")

    def metric(self, daemon: Daemon) -> str:
        return f"erel_sync_{daemon}_{self.name}"


def _c(key: str, name: str, help: str, *labels: str) -> CounterDecl:
    return CounterDecl(key, name, help, labels)


# Counted by both daemons (their broker-side supervision and streams).
COMMON = (
    _c("task_restarts.", "task_restarts", "Long-lived tasks restarted after they died.", "task"),
    _c("stream_unavailable", "stream_unavailable", "Sessions opened without the config stream."),
    _c("commands.", "commands", "Signed operator commands carried out.", "command"),
    _c("commands_refused.", "commands_refused", "Operator commands refused.", "reason"),
    _c("rollout_reports_refused", "rollout_reports_refused", "Rollout reports refused."),
)

AGENT = (
    *COMMON,
    _c("connects", "broker_connects", "Broker sessions opened (a join each)."),
    _c("broker_errors", "broker_errors", "Broker sessions lost or refused."),
    _c("received", "snapshots_received", "Snapshots received (stream, join answers)."),
    _c("applied_snapshots", "snapshots_stored", "Snapshots verified and stored as current."),
    _c("duplicate", "snapshots_duplicate", "Snapshots received again (the seq held)."),
    _c("stale", "snapshots_stale", "Snapshots older than the one held, refused."),
    _c("rejected.", "snapshots_refused", "Snapshots refused, by reason.", "reason"),
    _c("store_failures", "store_failures", "Writes of a snapshot or state that failed."),
    _c("joins_via_peers", "joins_via_peers", "Joins answered by peers (no publisher answer)."),
    _c("stream_silence_checks", "stream_silence_checks", "Quiet config stream checks."),
    _c("stream_stalled", "stream_stalled", "Config stream behind the cluster: re-consumed."),
    _c("rollout_stream_unavailable", "rollout_stream_unavailable", "No rollout stream."),
    _c("rollout_stream_left", "rollout_stream_left", "Rollout stream left for direct copies."),
    _c("rollout_documents", "rollout_documents", "Rollout documents taken."),
    _c("rollout_documents_unchanged", "rollout_documents_unchanged", "Unchanged documents."),
    _c("rollout_rejected.", "rollout_documents_refused", "Rollout documents refused.", "reason"),
    _c("actions.", "actions", "Steps that changed a release.", "action", "result"),
)

PUBLISHER = (
    *COMMON,
    _c("signed", "revisions_published", "Valid revisions signed (a new seq each)."),
    _c("published", "snapshot_publishes", "Snapshots published, republishes included."),
    _c("rejected", "revisions_rejected", "Revisions refused as invalid."),
    _c("publish_failures", "publish_failures", "Publishes that failed (retried)."),
    _c("answered_requests", "state_requests_answered", "State requests answered."),
    _c("stream_recreated", "stream_recreated", "Config streams re-declared after a crash."),
    _c("rollout_steps", "rollout_steps", "Rollout decisions taken."),
    _c("rollouts_published", "rollout_documents_published", "Rollout documents published."),
    _c("rollout_publish_failures", "rollout_publish_failures", "Rollout publishes failed."),
    _c("rollout_persist_failures", "rollout_persist_failures", "Rollout state writes failed."),
    _c("rollout_copies", "rollout_copies", "Rollout documents sent to one host directly."),
)

CATALOGUE: dict[Daemon, tuple[CounterDecl, ...]] = {"agent": AGENT, "publisher": PUBLISHER}


def metric_for(daemon: Daemon, key: str) -> tuple[CounterDecl, tuple[str, ...]] | None:
    """The declaration of counter `key` and, for a family, its label values (the suffix split
    on dots, the last label taking what is left)."""
    for decl in CATALOGUE[daemon]:
        if decl.family and key.startswith(decl.key) and len(key) > len(decl.key):
            values = key[len(decl.key) :].split(".", len(decl.labels) - 1)
            if len(values) == len(decl.labels):
                return decl, tuple(values)
        elif key == decl.key:
            return decl, ()
    return None


@dataclass(frozen=True)
class Reading:
    """One gauge sample: `erel_sync_<daemon>_<name>{labels} value`."""

    name: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


def _seq(report: Mapping[str, Any], part: str) -> float:
    seq = (report.get(part) or {}).get("seq")
    return float(seq) if isinstance(seq, int) else 0.0


def agent_readings(report: Mapping[str, Any], connected: bool) -> list[Reading]:
    """An agent's gauges, from its last host report (the heartbeat's JSON)."""
    out = [
        Reading("broker_connected", "1 while a broker session is up.", float(connected)),
        Reading("snapshot_seq", "Seq of the snapshot held.", _seq(report, "snapshot")),
        Reading("applied_seq", "Seq last applied in full.", _seq(report, "applied")),
        Reading("attempted_seq", "Seq last attempted.", _seq(report, "attempted")),
        Reading(
            "converged", "1 when every release is as desired.", float(bool(report.get("converged")))
        ),
    ]
    for r in report.get("releases") or []:
        name = str(r.get("name", ""))
        out.append(
            Reading(
                "release_info",
                "1 per release: its running and desired version, its state.",
                1.0,
                (
                    ("release", name),
                    ("version", str(r.get("version") or "")),
                    ("desired_version", str(r.get("desired_version") or "")),
                    ("state", str(r.get("state") or "")),
                ),
            )
        )
        out.append(
            Reading(
                "release_healthy",
                "1 when the release answers healthy.",
                float(bool(r.get("healthy"))),
                (("release", name),),
            )
        )
        out.append(
            Reading(
                "release_running",
                "1 when the release's node runs.",
                float(bool(r.get("running"))),
                (("release", name),),
            )
        )
    rollout = report.get("rollout") or {}
    if report.get("group") and rollout.get("state"):
        out.append(
            Reading(
                "rollout_state",
                "1 for this host's state in its group's rollout.",
                1.0,
                (("group", str(report["group"])), ("state", str(rollout["state"]))),
            )
        )
    return out


def publisher_readings(
    seq: int, active: bool, connected: bool, rollouts: Mapping[str, Any]
) -> list[Reading]:
    """A publisher's gauges: its seq, whether it is the active one and connected, and each
    group's rollout (`rollouts`: group -> `core.rolloutdoc.GroupRollout`)."""
    out = [
        Reading("seq", "Seq of the current snapshot.", float(seq)),
        Reading("active", "1 while this publisher signs (0: standing by).", float(active)),
        Reading("broker_connected", "1 while a broker session is up.", float(connected)),
    ]
    for group, g in sorted(rollouts.items()):
        out.append(
            Reading(
                "rollout_phase",
                "1 for the phase of each group's rollout.",
                1.0,
                (("group", group), ("phase", str(g.phase.value))),
            )
        )
        flight = g.in_flight
        for state, n in (
            ("done", len(g.done)),
            ("in_progress", len(flight)),
            ("waiting", len(g.waiting)),
            ("failed", len(g.failed)),
        ):
            out.append(
                Reading(
                    "rollout_hosts",
                    "Hosts of each group's rollout, by state.",
                    float(n),
                    (("group", group), ("state", state)),
                )
            )
    return out
