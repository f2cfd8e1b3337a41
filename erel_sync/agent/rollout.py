"""The agent's side of a cluster-safe rollout: the newest rollout document, the gate a tick
plans under, and where this host stands (its `HostReport`).

Called by `agent.link` (deliveries of the `erel.rollout` stream go to `RolloutFollower.on_rollout`),
by `agent.daemon` (which wires the follower's `current` into the reconciler as its gate) and by
`agent.reconciler` (`gate` before planning, `next_report` after each tick, `changing` before
the first disruptive step). Lives apart from the reconciler because the report rules are a
protocol with the publisher's rollout controller (`core.rollout.step` reads them), kept in one
place and tested without a driver.

Report states (docs/status.md, the `rollout` key): `failed` while a gated action of the seq held
failed (until a newer seq, or an operator's `rollout retry` raises the group's `retry`);
`waiting` while a gated action waits for a grant; `converged` once nothing is left and every
desired release is Ready; `changing` from the first disruptive step on. Anything else (a first
install in progress, a release not healthy yet) keeps the previous report: a grant the
controller gave stays counted until the host says it is done with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from erel_sync.core.reconcile import Action, ActionKind, Plan, SkipReason
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.core.rollout import (
    HostReport,
    HostState,
    RolloutDoc,
    RolloutRejected,
    grant_retry,
    host_view,
    install_version,
    may_disturb,
    verify_rollout,
)
from erel_sync.core.status import HostStatus

log = logging.getLogger("erel_sync.agent")

RolloutSource = Callable[[], RolloutDoc | None]


@dataclass(frozen=True)
class Gate:
    """What the rollout document says this host may do in one tick, for the seq it holds.
    `enabled` False: not gated at all (unit tests, `erel-sync release`)."""

    enabled: bool = False
    may_disturb: bool = True
    group: str | None = None
    grant: str | None = None  # the grant id for this seq, when granted
    retry: int = 0  # the group's `retry` count, when its rollout is of this seq
    doc: RolloutDoc | None = None

    def install_version(self, release: str) -> str | None:
        """The version a first install uses instead of the desired one (Halted: `stable`)."""
        if not self.enabled or self.group is None:
            return None
        return install_version(self.doc, self.group, release)


def gate(source: RolloutSource | None, group: str | None, host: str, seq: int) -> Gate:
    """The gate of one tick: `source` None means no gating; a host without a group has nothing
    to gate (its plan touches nothing)."""
    if source is None or group is None:
        return Gate(enabled=source is not None, group=group)
    doc = source()
    rollout = doc.groups.get(group) if doc is not None else None
    granted = rollout.granted.get(host) if rollout is not None else None
    return Gate(
        enabled=True,
        may_disturb=may_disturb(doc, group, host, seq),
        group=group,
        grant=granted.id if granted is not None and granted.seq == seq else None,
        retry=rollout.retry if rollout is not None and rollout.seq == seq else 0,
        doc=doc,
    )


def first_install(action: Action, g: Gate) -> Action:
    """A first install while the group's rollout is Halted installs the version the group's
    unchanged hosts run (when the release still lists it): the upgrade after it waits for a
    grant like everyone else's."""
    if action.kind is not ActionKind.INSTALL or action.desired is None:
        return action
    version = g.install_version(action.release)
    if version is None or version == action.version:
        return action
    if action.desired.spec.version(version) is None:
        return action
    log.info("%s: rollout of %s halted; installing %s", action.release, g.group, version)
    return replace(action, version=version)


def retried(failure: HostReport | None, g: Gate, seq: int) -> bool:
    """Did an operator's `rollout retry` (a higher `retry` than the one the failure happened
    under) clear the failure recorded for `seq`?"""
    if failure is None or failure.seq != seq:
        return False
    under = grant_retry(failure.grant) if failure.grant is not None else None
    return g.retry > (under or 0)


def forget_retried(memory: dict[str, ReleaseStatus], g: Gate, seq: int) -> list[str]:
    """Forget the stalled changes of `seq` recorded under an older `retry` count, so that the
    host tries again once granted; the names of the releases it forgot."""
    forgot = [n for n, m in memory.items() if m.failed_seq == seq and g.retry > m.failed_retry]
    for name in forgot:
        memory[name] = memory[name].forget_failure()
    return forgot


def _stamped(previous: HostReport | None, report: HostReport) -> HostReport:
    """`at` is when the state began: kept while seq, state and grant stay the same."""
    if previous is not None and (previous.seq, previous.state, previous.grant) == (
        report.seq,
        report.state,
        report.grant,
    ):
        return replace(report, at=previous.at)
    return report


def changing(
    previous: HostReport | None, g: Gate, seq: int, revision: str, *, host: str, now: float
) -> HostReport:
    """Before the first disruptive step of a gated action."""
    report = HostReport(host, g.group, seq, HostState.CHANGING, "", now, g.grant, revision)
    return _stamped(previous, report)


def next_report(
    previous: HostReport | None,
    *,
    host: str,
    g: Gate,
    seq: int,
    revision: str,
    status: HostStatus,
    waiting: bool,
    failure: HostReport | None,
    now: float,
) -> HostReport | None:
    """This host's report after a tick (module docstring). `failure`: the last gated action
    that failed, as a `failed` report (None when none failed, or it was retried since);
    `waiting`: an action that needs a grant is left and the host holds none."""
    if not g.enabled or g.group is None or status.group is None:
        return None
    desired = {r.name for r in status.releases if r.desired_version is not None}

    def made(state: HostState, reason: str = "", grant: str | None = None) -> HostReport:
        report = HostReport(host, g.group, seq, state, reason, now, grant, revision)
        return _stamped(previous, report)

    if failure is not None and failure.seq == seq:
        return made(HostState.FAILED, failure.reason, failure.grant)
    if waiting:
        return made(HostState.WAITING)
    ready = all(r.state == "Ready" for r in status.releases if r.name in desired)
    if status.converged and ready:
        grant = previous.grant if previous is not None and previous.seq == seq else None
        return made(HostState.CONVERGED, grant=grant)
    return previous


def waits(unhurried: Plan) -> bool:
    """`unhurried`: planned without a grant and past every backoff. Does an action that needs
    a grant remain?"""
    return any(s.reason is SkipReason.ROLLOUT for s in unhurried.skipped)


def restore_report(saved: Mapping[str, Any] | None, host: str) -> HostReport | None:
    """The report status.json kept (its durable `rollout`, or `report.rollout` of an older
    agent), so that `at` and a failure survive an agent restart. None when absent or
    unreadable."""
    if not isinstance(saved, Mapping):
        return None
    if saved.get("kind") == "rollout-event":  # status.json's own record (`rollout`)
        return HostReport.from_json({**saved, "host_id": host})
    rollout = saved.get("rollout")
    if not isinstance(rollout, Mapping):
        return None
    return HostReport.from_json(
        {**rollout, "host_id": host, "group": saved.get("group"), "revision": ""}
    )


def newest_report(*reports: HostReport | None) -> HostReport | None:
    """The newest of the reports kept in several places (by seq, then the time its state
    began); on a tie the first, status.json's."""
    found = [r for r in reports if r is not None]
    return max(found, key=lambda r: (r.seq, r.at)) if found else None


def failure_of(report: HostReport | None) -> HostReport | None:
    return report if report is not None and report.state is HostState.FAILED else None


class RolloutFollower:
    """The newest verified rollout document this agent has seen (`current`), fed by the
    `erel.rollout` stream. Not persisted: after a restart gated actions wait until the stream's
    tail arrives, which is the safe side."""

    def __init__(
        self,
        host_id: str,
        trusted: Mapping[str, str],
        counters: Counter[str],
        *,
        group: Callable[[], str | None],
        reconcile_now: asyncio.Event,
    ) -> None:
        self.host_id = host_id
        self.trusted = trusted
        self.counters = counters
        self.group = group  # this host's group as of the last tick
        self.reconcile_now = reconcile_now
        self.doc: RolloutDoc | None = None
        self._held_key: tuple[int, str | None] | None = None
        self._held: list[Any] | None = None

    def current(self) -> RolloutDoc | None:
        return self.doc

    def _view(self, groups: Mapping[str, Any] | None) -> list[Any] | None:
        """What of a document (its groups, as JSON) changes what this host may do: a new
        seq or Canary -> Progressing changes nothing here (`core.rollout.host_view`), and a
        hundred agents re-verifying and reconciling on each such document was what made a
        rollout's first wave slow."""
        group = self.group()
        return host_view(groups.get(group) if groups is not None and group else None, self.host_id)

    def held(self) -> dict[str, Any]:
        """What this agent holds, for its heartbeats and rollout events: the publisher sends
        the current document again to a host whose view differs (a copy lost, a new host)."""
        return {"version": self.doc.version if self.doc else 0, "view": self._held_view()}

    @property
    def direct(self) -> bool:
        """The publisher sends this host what concerns it: the stream need not be followed."""
        return self.doc is not None and self.doc.direct

    def _held_view(self) -> list[Any] | None:
        """The held document's view, computed once per document and group (every delivery
        compares against it)."""
        held, group = self.doc, self.group()
        if held is None:
            return None
        key = (held.version, group)
        if self._held_key != key:
            self._held_key, self._held = key, self._view(held.to_json()["groups"])
        return self._held

    def _unchanged(self, raw: bytes) -> bool:
        """Whether a document is not newer than the held one, or says the same about this
        host (most do: each host's progress makes a new document for every agent). Such a
        document is dropped before its signature is checked: it would change nothing, and a
        hundred agents verifying every document of a rollout was the cost of a wave. Anything
        that does change this host's view is verified first."""
        held = self.doc
        if held is None or self.group() is None:
            return False
        try:
            body = json.loads(raw)
            if not isinstance(body["version"], int):
                return False
            if body["version"] <= held.version:
                return True  # held already (the publisher's direct copy came first), or older
            return self._view(body["groups"]) == self._held_view()
        except (ValueError, KeyError, TypeError, AttributeError):
            return False  # not the shape we know: the verification says what is wrong

    async def on_rollout(self, raw: bytes) -> None:
        """A delivery of the rollout stream: verify, keep the newest `version`, and reconcile
        when it changes this host's grant, its group's phase or retry."""
        if self._unchanged(raw):
            self.counters["rollout_documents_unchanged"] += 1
            return
        try:
            doc = verify_rollout(raw, self.trusted)
        except RolloutRejected as e:
            self.counters[f"rollout_rejected.{e.reason}"] += 1
            log.warning("%s: rollout document refused: %s", self.host_id, e)
            return
        if self.doc is not None and doc.version <= self.doc.version:
            return
        before = self._held_view()
        self.doc = doc
        self.counters["rollout_documents"] += 1
        if self.group() is None or before != self._held_view():
            self.reconcile_now.set()
