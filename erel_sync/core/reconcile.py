"""The reconcile planner: desired (for this host) + observed + recorded status -> the few
actions needed.

Pure and deterministic: `plan` reads no clock (`now` is passed), touches nothing,
and returns actions sorted by release name plus a recorded reason for every release it leaves
alone. The law, tested: after the actions succeed, planning again yields no actions.
Called by `agent.reconciler` on every tick; the executor turns actions into driver calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from erel_sync.core.desired import HostReleaseSpec
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.model.specs import DistributionSpec, ReleaseConfig, canonical_json, thaw


class ActionKind(StrEnum):
    INSTALL = "Install"  # install the version and start it
    UPGRADE = "Upgrade"  # change version (hot / restart / auto)
    RECONFIGURE = "Reconfigure"  # same version, new config: render files + apply live
    START = "Start"  # installed, same version, not running: self-heal
    DELETE = "Delete"  # managed by us, no longer desired


class SkipReason(StrEnum):
    UNASSIGNED = "Unassigned"
    SUSPENDED = "Suspended"
    HELD = "Held"
    FAILED_REVISION = "FailedRevision"
    BACKOFF = "Backoff"
    NOT_MANAGED = "NotManaged"
    ROLLOUT = "WaitingForRollout"  # a disruptive action waits for a rollout grant
    SECRET = "SecretUnavailable"  # a secret of its config is not encrypted to this host


# Actions that make a running release unavailable for a while: they wait for a place in the
# group's rollout (`core.rollout`). A first Install disturbs nothing that runs, and Start heals
# a release that is down already, so neither waits.
GATED = frozenset({ActionKind.UPGRADE, ActionKind.RECONFIGURE, ActionKind.DELETE})


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    release: str
    version: str | None = None  # target version
    from_version: str | None = None
    desired: HostReleaseSpec | None = None

    def describe(self) -> str:
        if self.kind is ActionKind.UPGRADE:
            return f"{self.kind.value} {self.release} {self.from_version} -> {self.version}"
        return f"{self.kind.value} {self.release}" + (f" {self.version}" if self.version else "")


@dataclass(frozen=True)
class Skip:
    release: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    skipped: tuple[Skip, ...] = field(default=())


def config_digest(config: ReleaseConfig, distribution: DistributionSpec | None = None) -> str:
    """What the node was rendered from. A private release's digest is the config's alone, as
    before clustering existed: an agent upgraded to this version re-applies nothing."""
    doc: dict[str, Any] = {"sys_config": thaw(config.sys_config), "vm_args": dict(config.vm_args)}
    if distribution is not None and distribution != DistributionSpec():
        doc["distribution"] = distribution.to_json()
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def retry_backoff(failures: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Seconds to wait before the next attempt after `failures` consecutive transient failures."""
    return float(min(cap, base * 2 ** max(0, failures - 1)))


def plan(
    desired: Mapping[str, HostReleaseSpec] | None,
    observed: Mapping[str, ObservedRelease],
    memory: Mapping[str, ReleaseStatus],
    *,
    seq: int,
    now: float,
    suspended: bool = False,
    holds: frozenset[str] = frozenset(),
    may_disturb: bool = True,
    locked: Mapping[str, str] | None = None,
) -> Plan:
    """`desired` is None while the host has no group: then nothing is touched. Of `observed`
    (observed right before planning), only `installed`, `managed`, `running` and `version`
    count. `may_disturb`: whether this host holds a rollout grant for `seq`; without one, the
    actions in `GATED` become `WaitingForRollout` skips. `locked`: desired releases whose
    config holds a secret this host cannot decrypt (name -> where): nothing is done to them."""
    names = sorted(set(desired or {}) | {n for n, o in observed.items() if o.managed})
    if desired is None:
        return Plan((), tuple(Skip(n, SkipReason.UNASSIGNED) for n in names))
    if suspended:
        return Plan((), tuple(Skip(n, SkipReason.SUSPENDED) for n in names))
    actions: list[Action] = []
    skipped: list[Skip] = []
    for name in names:
        obs = observed.get(name) or ObservedRelease(name, installed=False)
        mem = memory.get(name, ReleaseStatus())
        want = desired.get(name)
        if name in holds:
            skipped.append(Skip(name, SkipReason.HELD))
            continue
        if want is not None and locked and name in locked:
            skipped.append(Skip(name, SkipReason.SECRET, locked[name]))
            continue
        if want is None:
            delete = Action(ActionKind.DELETE, name, from_version=obs.version)
            _gate(delete, may_disturb, actions, skipped)
            continue
        target = want.version.version
        if obs.installed and not obs.managed:
            skipped.append(Skip(name, SkipReason.NOT_MANAGED, "installed by someone else"))
            continue
        if mem.failed_seq == seq and mem.failed_version == target:
            skipped.append(Skip(name, SkipReason.FAILED_REVISION, f"{target} failed at seq {seq}"))
            continue
        action: Action | None = None
        if not obs.installed:
            action = Action(ActionKind.INSTALL, name, target, None, want)
        elif obs.version != target:
            action = Action(ActionKind.UPGRADE, name, target, obs.version, want)
        elif mem.applied_config != config_digest(want.config, want.distribution):
            action = Action(ActionKind.RECONFIGURE, name, target, target, want)
        elif not obs.running:
            action = Action(ActionKind.START, name, target, target, want)
        if action is None:
            continue
        if now < mem.next_attempt_at:
            wait = mem.next_attempt_at - now
            detail = f"{action.describe()} in {wait:.0f}s ({mem.last_reason or 'retry'})"
            skipped.append(Skip(name, SkipReason.BACKOFF, detail))
        else:
            _gate(action, may_disturb, actions, skipped)
    return Plan(tuple(actions), tuple(skipped))


def _gate(action: Action, may_disturb: bool, actions: list[Action], skipped: list[Skip]) -> None:
    if may_disturb or action.kind not in GATED:
        actions.append(action)
    else:
        skipped.append(Skip(action.release, SkipReason.ROLLOUT, "WaitingForRollout"))
