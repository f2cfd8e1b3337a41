"""One host's reconcile loop: snapshot -> match -> observe -> plan -> execute -> report.

Called by `agent.daemon` on every trigger (new snapshot, reconnect, timer). Single-flight: a
trigger during a tick marks the state dirty and the tick runs once more afterwards, so two
reconciles never overlap and no trigger is lost. Execution is serial per release (one action per
release per tick) and parallel across releases. Transient driver failures back off; stalled ones
mark the snapshot's seq failed for that release so it is not retried in a loop.

Rollouts (`rollout`, a source of the newest rollout document; None: not gated): an action that
disturbs a running release (`core.reconcile.GATED`) runs only under a grant for the seq held;
otherwise the planner leaves it as a `WaitingForRollout` skip. The tick reports where the host
stands (`rollout_report`, `agent.rollout.next_report`) and hands every change of it to
`on_report` at once (the agent publishes it as a rollout event); a `changing` report goes out
before the first disruptive step.

Quiet by construction: a tick observes every release once, health included (one erl_call per
running release), and a release it acts on is reported as the driver's step left it
(`StepResult.observed`); only a release whose step failed is observed again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from erel_sync.adapters import logs
from erel_sync.adapters.clock import utc_now
from erel_sync.agent import rollout as gating
from erel_sync.agent.peering import keep_peers
from erel_sync.agent.secretcheck import SecretCheck
from erel_sync.core import reasons
from erel_sync.core.desired import HostReleaseSpec, host_releases
from erel_sync.core.matching import GroupMatch, HostIdentity, match_group
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.core.reconcile import (
    GATED,
    Action,
    ActionKind,
    Plan,
    config_digest,
    plan,
    retry_backoff,
)
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.core.rollout import HostReport, HostState
from erel_sync.core.snapshot import Snapshot
from erel_sync.core.status import HostStatus, host_status
from erel_sync.core.upgrade import RecoveryStep
from erel_sync.model.specs import ReleaseConfig, ReleaseSpec

log = logging.getLogger("erel_sync.agent")


class Driver(Protocol):
    """The part of `adapters.releases.driver.ReleaseDriver` the reconciler (and the agent's
    operator commands) use; fakes implement it in unit tests."""

    async def observe(self, name: str, *, health: bool = False) -> ObservedRelease: ...
    async def observe_all(self, *, health: bool = False) -> Mapping[str, ObservedRelease]: ...
    async def install(
        self, spec: ReleaseSpec, version: str, config: ReleaseConfig | None = None
    ) -> StepResult: ...
    async def start(self, name: str) -> StepResult: ...
    async def stop(self, name: str) -> StepResult: ...
    async def restart(self, name: str) -> StepResult: ...
    async def upgrade(
        self, spec: ReleaseSpec, to_version: str, config: ReleaseConfig | None = None
    ) -> StepResult: ...
    async def reconfigure(self, spec: ReleaseSpec, config: ReleaseConfig | None = None) -> bool: ...
    async def delete(self, name: str) -> StepResult: ...
    async def recover(self, name: str) -> RecoveryStep: ...


class Reconciler:
    """`memory`: each release's recorded status (status.json `memory`), updated in place;
    `holds`: operator holds by release (status.json `holds`); `clock`: wall-clock seconds, for
    the plan's `now`, the next attempt after a transient failure and the reports' `at` (tests
    pass a fake); `rollout`: the newest rollout document (None: no gating); `on_report`: called
    with each new rollout report (errors are its own to handle)."""

    def __init__(
        self,
        *,
        host: HostIdentity,
        driver: Driver,
        memory: dict[str, ReleaseStatus],
        holds: dict[str, dict[str, Any]],
        clock: Callable[[], float] = time.time,
        rollout: gating.RolloutSource | None = None,
        on_report: Callable[[HostReport], Awaitable[None]] | None = None,
        decrypt: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.host = host
        self.secrets = SecretCheck(host.host_id, decrypt)
        self.driver = driver
        self.memory = memory
        self.holds = holds
        self.clock = clock
        self.rollout = rollout
        self.on_report = on_report
        self.rollout_report: HostReport | None = None  # where this host stands (heartbeats)
        self.rollout_failure: HostReport | None = None  # the last gated action that failed
        self.snapshot: Snapshot | None = None
        self.applied: dict[str, Any] | None = None
        self.attempted: dict[str, Any] | None = None
        self.status: HostStatus | None = None  # the last tick's (None before the first)
        self.ticks = 0
        self._lock = asyncio.Lock()
        self._dirty = False

    @property
    def report(self) -> dict[str, Any]:
        """The last tick's host status as JSON ({} before the first tick)."""
        return self.status.to_json() if self.status is not None else {}

    def exclusive(self) -> asyncio.Lock:
        """Held by operator commands so they never interleave with a tick's steps."""
        return self._lock

    async def refresh(self) -> dict[str, Any]:
        """Observe and report without acting (a `status` query); under the tick lock. While a
        tick runs, its last report is the answer rather than waiting for the tick."""
        if self._lock.locked():
            return self.report
        async with self._lock:
            await self._tick_once("status", act=False)
        return self.report

    def desired_fingerprint(self, name: str) -> str | None:
        """What git wants for `name` here (version and config), to notice that it changed."""
        _, desired, _ = self.desired()
        want = (desired or {}).get(name)
        if want is None:
            return None
        return f"{want.version.version}:{config_digest(want.config, want.distribution)}"

    def _expire_holds(self) -> None:
        """A `delete` hold lasts until the desired state of that release changes (git wins
        again once someone changes it)."""
        for name, hold in list(self.holds.items()):
            if hold.get("kind") != "delete":
                continue
            if hold.get("desired") != self.desired_fingerprint(name):
                log.info("%s: desired %s changed; delete hold cleared", self.host.host_id, name)
                del self.holds[name]

    async def tick(self, why: str = "") -> dict[str, Any]:
        """Run one reconcile, or mark dirty if one is running (it then runs once more)."""
        if self._lock.locked():
            self._dirty = True
            async with self._lock:
                return self.report
        async with self._lock:
            while True:
                self._dirty = False
                await self._tick_once(why)
                if not self._dirty:
                    return self.report
                why = "coalesced"

    def desired(
        self, snap: Snapshot | None = None
    ) -> tuple[GroupMatch | None, Mapping[str, HostReleaseSpec] | None, bool]:
        """What `snap` (by default the one held now) wants on this host."""
        snap = snap or self.snapshot
        if snap is None:
            return None, None, False
        match = match_group(snap.state, self.host)
        if match.group is None:
            return match, None, False
        group = snap.state.groups[match.group]
        return match, host_releases(snap.state, group), group.suspend

    async def _observe(self) -> dict[str, ObservedRelease]:
        """Every release this host's driver installed, health included: one RPC each."""
        return dict(await self.driver.observe_all(health=True))

    async def _tick_once(self, why: str, *, act: bool = True) -> None:
        self.ticks += 1
        self._expire_holds()
        # One snapshot for the whole tick: a newer one stored while this tick awaits the driver
        # is the next tick's. Reading it again later would report a revision applied that
        # this tick never planned for (`wait` would count the host as converged on it).
        snap = self.snapshot
        seq = snap.seq if snap else 0
        revision = snap.revision if snap else ""
        match, desired, suspended = self.desired(snap)
        g = gating.gate(self.rollout, match.group if match else None, self.host.host_id, seq)
        observed = await self._observe()
        if act and await self._recover(observed):
            observed = await self._observe()
        if act:
            self._forget_retried(g, seq)
        holds = frozenset(self.holds)
        locked = self.secrets.locked(desired)

        def planned(now: float, may_disturb: bool = g.may_disturb) -> Plan:
            return plan(
                desired,
                observed,  # as the tick's steps left it
                self.memory,
                seq=seq,
                now=now,
                suspended=suspended,
                holds=holds,
                may_disturb=may_disturb,
                locked=locked,
            )

        first = planned(self.clock())
        actions = tuple(gating.first_install(a, g) for a in first.actions)
        if actions and act:
            steps = "; ".join(a.describe() for a in actions)
            log.info("%s: tick (%s) seq %d: %s", self.host.host_id, why, seq, steps)
            self.attempted = {"seq": seq, "revision": snap.revision if snap else None}
            if g.enabled and any(a.kind in GATED for a in actions):
                before, host, now = self.rollout_report, self.host.host_id, self.clock()
                await self._report(gating.changing(before, g, seq, revision, host=host, now=now))
            results = await asyncio.gather(*(self._execute(a, seq, g) for a in actions))
            await self._update(observed, actions, results)
        if act:
            await keep_peers(self.driver, self.host.host_id, desired, observed, g)
        after = planned(self.clock())
        if snap is not None and self.attempted is None:
            self.attempted = {"seq": seq, "revision": snap.revision}
        status = host_status(
            host=self.host,
            match=match,
            snapshot=snap,
            applied=self.applied,
            attempted=self.attempted,
            desired=desired,
            observed=observed,
            memory=self.memory,
            plan_after=after,
            holds=self.holds,
            now=utc_now(),
        )
        if status.converged and snap is not None:
            self.applied = {"seq": seq, "revision": snap.revision}
            status = replace(status, applied=dict(self.applied))
        report = gating.next_report(
            self.rollout_report,
            host=self.host.host_id,
            g=g,
            seq=seq,
            revision=revision,
            status=status,
            # Gated work left, backoff or not: without a grant, the host waits for one.
            waiting=not g.may_disturb and gating.waits(planned(math.inf, may_disturb=False)),
            failure=self.rollout_failure,
            now=self.clock(),
        )
        self.status = replace(status, rollout=report)
        await self._report(report)

    async def _report(self, report: HostReport | None) -> None:
        """Keep the new report, and hand it on at once when it changed."""
        if report == self.rollout_report:
            return
        self.rollout_report = report
        if self.status is not None:
            self.status = replace(self.status, rollout=report)
        if report is not None and self.on_report is not None:
            await self.on_report(report)

    def _forget_retried(self, g: gating.Gate, seq: int) -> None:
        """An operator's `rollout retry` for this seq: forget its failure, try again when
        granted. A failure of an older seq is forgotten too: a newer seq is a new rollout."""
        failure = self.rollout_failure
        if failure is not None and (failure.seq != seq or gating.retried(failure, g, seq)):
            self.rollout_failure = None
        for name in gating.forget_retried(self.memory, g, seq):
            log.info(
                "%s: %s: rollout retried; failure of seq %d forgotten", self.host.host_id, name, seq
            )

    async def _recover(self, observed: Mapping[str, ObservedRelease]) -> bool:
        """A step left `pending` by an agent that died mid-way is finished or undone first
        (the agent was killed mid-upgrade), before anything new is planned."""
        stuck = [n for n, o in observed.items() if o.pending and o.installed]
        for name in stuck:
            try:
                step = await self.driver.recover(name)
                log.warning(
                    "%s: recovered unfinished step of %s: %s", self.host.host_id, name, step
                )
            except reasons.DriverError as e:
                log.error("%s: recovery of %s failed: %s", self.host.host_id, name, e)
        return bool(stuck)

    async def _update(
        self,
        observed: dict[str, ObservedRelease],
        actions: tuple[Action, ...],
        results: list[StepResult | None],
    ) -> None:
        """Each acted-on release as its step left it; one whose step failed is observed again
        (what a failed step left is unknown). Others keep this tick's observation."""
        again = [a.release for a, r in zip(actions, results, strict=True) if r is None]
        seen = await asyncio.gather(*(self.driver.observe(n, health=True) for n in again))
        stepped = [r.observed for r in results if r is not None]
        for obs in (*stepped, *seen):
            # As `observe_all` lists them: only the releases this host's driver installed.
            if obs.managed:
                observed[obs.name] = obs
            else:
                observed.pop(obs.name, None)

    async def _execute(self, action: Action, seq: int, g: gating.Gate) -> StepResult | None:
        """Run one action; its final step's result, or None when it failed."""
        name = action.release
        mem = self.memory.get(name, ReleaseStatus())
        want = action.desired
        e: reasons.DriverError
        try:
            if action.kind is ActionKind.DELETE:
                result = await self.driver.delete(name)
                self.memory.pop(name, None)
                return result
            assert want is not None and action.version is not None
            if action.kind is ActionKind.INSTALL:
                await self.driver.install(want.effective, action.version, want.config)
                result = await self.driver.start(name)
            elif action.kind is ActionKind.UPGRADE:
                result = await self.driver.upgrade(want.effective, action.version, want.config)
            elif action.kind is ActionKind.RECONFIGURE:
                result = await self._reconfigure(action, mem)
            else:
                result = await self.driver.start(name)
            # Recorded only now: a vm.args change counts as applied once its restart is done.
            self.memory[name] = ReleaseStatus(
                applied_config=config_digest(want.config, want.distribution)
            )
            log.debug("%s: %s: %s", self.host.host_id, action.describe(), result.did)
            return result
        except reasons.DriverError as error:
            said = logs.fields("action_failed", release=name, seq=seq, reason=error.reason)
            log.warning(
                "%s: %s failed: %s", self.host.host_id, action.describe(), error, extra=said
            )
            e = error
        except Exception as error:  # a bug must not kill the loop; it is reported like a failure
            log.exception("%s: %s crashed", self.host.host_id, action.describe())
            e = reasons.TransientError("InternalError", f"{type(error).__name__}: {error}")
        mem = self.memory.get(name, mem)  # `_reconfigure` may have marked a restart pending
        self.memory[name] = self._failed(mem, action, e, seq, g.retry)
        if g.enabled and action.kind in GATED:
            reason = f"{e.reason}: {e.message}"
            failure = HostReport(self.host.host_id, g.group, seq, HostState.FAILED, reason)
            self.rollout_failure = replace(failure, at=self.clock(), grant=g.grant)
        return None

    async def _reconfigure(self, action: Action, mem: ReleaseStatus) -> StepResult:
        """Render the new config and apply it live; a vm.args change is applied by a restart
        of the release, within the same (gated) action. A restart that failed is tried again
        as one, though the files are rendered by then."""
        want = action.desired
        assert want is not None
        restart = await self.driver.reconfigure(want.effective, want.config) or mem.restart_pending
        if not restart:
            return await self.driver.start(action.release)
        self.memory[action.release] = replace(mem, restart_pending=True)
        return await self.driver.restart(action.release)

    def _failed(
        self, mem: ReleaseStatus, action: Action, e: reasons.DriverError, seq: int, retry: int = 0
    ) -> ReleaseStatus:
        applied = mem.applied_config
        if action.kind is ActionKind.INSTALL:
            applied = None
        message = f"{action.describe()}: {e.reason}: {e.message}"[:2000]
        if isinstance(e, reasons.StalledError) and action.kind is not ActionKind.START:
            return replace(
                mem,
                applied_config=applied,
                failed_seq=seq,
                failed_version=action.version,
                failed_retry=retry,
                last_error=message,
                last_reason=e.reason,
            )
        failures = mem.failures + 1
        delay = max(retry_backoff(failures), e.retry_after or 0.0)
        return replace(
            mem,
            applied_config=applied,
            failures=failures,
            next_attempt_at=self.clock() + delay,
            last_error=message,
            last_reason=e.reason,
        )
