"""Host status reports: what an agent publishes as its heartbeat and keeps in status.json.

Pure. Built by the agent after every reconcile tick from the match, the plan and fresh
observations; read back by `erel-sync status`/`members`/`wait`. One document shape everywhere so
the CLI never has to guess (documented in docs/status.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from erel_sync.core.matching import GroupMatch
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.reconcile import Memory, Plan, SkipReason
from erel_sync.core.revdiff import EffectiveRelease

STATUS_FORMAT = 1


def release_state(
    name: str,
    want: EffectiveRelease | None,
    obs: ObservedRelease | None,
    *,
    skipped: Mapping[str, SkipReason],
    healthy: bool | None,
) -> str:
    """One word per release: Ready, Progressing, Failed, Held, Suspended, Stopped, Orphaned …"""
    if name in skipped and skipped[name] in (SkipReason.HELD, SkipReason.SUSPENDED):
        return skipped[name].value
    if name in skipped and skipped[name] is SkipReason.FAILED_REVISION:
        return "Failed"
    if want is None:
        return "Unmanaged" if obs and not obs.managed else "Orphaned"
    if obs is None or not obs.installed:
        return "Backoff" if name in skipped else "Pending"
    if not obs.running:
        return "Backoff" if name in skipped else "Stopped"
    if obs.version != want.version.version:
        return "Progressing"
    if healthy is False:
        return "Degraded"
    return "Ready"


def converged(
    desired: Mapping[str, EffectiveRelease] | None,
    observed: Mapping[str, ObservedRelease],
    plan_after: Plan,
) -> bool:
    """Every desired release runs at its version and nothing is left to do."""
    if desired is None:
        return False
    if plan_after.actions or any(
        s.reason in (SkipReason.FAILED_REVISION, SkipReason.BACKOFF) for s in plan_after.skipped
    ):
        return False
    return all(
        (o := observed.get(n)) is not None and o.running and o.version == w.version.version
        for n, w in desired.items()
    )


def host_report(
    *,
    host_id: str,
    labels: Mapping[str, str],
    match: GroupMatch | None,
    snapshot: Mapping[str, Any] | None,
    applied: Mapping[str, Any] | None,
    attempted: Mapping[str, Any] | None,
    desired: Mapping[str, EffectiveRelease] | None,
    observed: Mapping[str, ObservedRelease],
    health: Mapping[str, bool | None],
    memory: Mapping[str, Memory],
    plan_after: Plan,
    holds: Mapping[str, Mapping[str, Any]],
    extra: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    skipped = {s.release: s.reason for s in plan_after.skipped}
    names = sorted(set(desired or {}) | set(observed) | set(holds))
    releases = []
    for n in names:
        want = (desired or {}).get(n)
        obs = observed.get(n)
        mem = memory.get(n, Memory())
        releases.append(
            {
                "name": n,
                "desired_version": want.version.version if want else None,
                "version": obs.version if obs else None,
                "installed": bool(obs and obs.installed),
                "managed": bool(obs and obs.managed),
                "running": bool(obs and obs.running),
                "healthy": health.get(n),
                "state": release_state(n, want, obs, skipped=skipped, healthy=health.get(n)),
                "hold": dict(holds[n]) if n in holds else None,
                "reason": mem.last_reason or (skipped[n].value if n in skipped else ""),
                "last_error": mem.last_error,
            }
        )
    return {
        "format": STATUS_FORMAT,
        "kind": "heartbeat",
        "host_id": host_id,
        "labels": dict(labels),
        "group": match.group if match else None,
        "match": match.how if match else "NoSnapshot",
        "candidates": list(match.candidates) if match else [],
        "snapshot": dict(snapshot) if snapshot else None,
        "applied": dict(applied) if applied else None,
        "attempted": dict(attempted) if attempted else None,
        "converged": converged(desired, observed, plan_after),
        "releases": releases,
        "time": now,
        **dict(extra),
    }


def memory_to_json(memory: Mapping[str, Memory]) -> dict[str, Any]:
    return {n: asdict(m) for n, m in memory.items()}


def memory_from_json(doc: Mapping[str, Any] | None) -> dict[str, Memory]:
    out: dict[str, Memory] = {}
    for n, m in (doc or {}).items():
        known = {k: v for k, v in m.items() if k in Memory.__dataclass_fields__}
        out[n] = Memory(**known)
    return out
