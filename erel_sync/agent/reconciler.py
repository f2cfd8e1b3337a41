"""One host's reconcile loop: snapshot -> match -> observe -> plan -> execute -> report.

Called by `agent.daemon` on every trigger (new snapshot, reconnect, timer). Single-flight: a
trigger during a tick marks the state dirty and the tick runs once more afterwards, so two
reconciles never overlap and no trigger is lost. Execution is serial per release (one action per
release per tick) and parallel across releases. Transient driver failures back off; stalled ones
mark the snapshot's seq failed for that release so it is not retried in a loop.

Quiet by construction: a tick observes every release once, health included (one erl_call per
running release), and a release it acts on is reported as the driver's step left it
(`StepResult.observed`); only a release whose step failed is observed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from erel_sync.adapters.clock import utc_now
from erel_sync.core import reasons
from erel_sync.core.desired import HostReleaseSpec, host_releases
from erel_sync.core.matching import GroupMatch, HostIdentity, match_group
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.core.reconcile import Action, ActionKind, config_digest, plan, retry_backoff
from erel_sync.core.releasestatus import ReleaseStatus
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
    the plan's `now` and the next attempt after a transient failure (tests pass a fake)."""

    def __init__(
        self,
        *,
        host: HostIdentity,
        driver: Driver,
        memory: dict[str, ReleaseStatus],
        holds: dict[str, dict[str, Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.driver = driver
        self.memory = memory
        self.holds = holds
        self.clock = clock
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
        return f"{want.version.version}:{config_digest(want.config)}"

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
        match, desired, suspended = self.desired(snap)
        observed = await self._observe()
        if act and await self._recover(observed):
            observed = await self._observe()
        holds = frozenset(self.holds)
        first = plan(
            desired,
            observed,
            self.memory,
            seq=seq,
            now=self.clock(),
            suspended=suspended,
            holds=holds,
        )
        if first.actions and act:
            log.info(
                "%s: tick (%s) seq %d: %s",
                self.host.host_id,
                why,
                seq,
                "; ".join(a.describe() for a in first.actions),
            )
            self.attempted = {"seq": seq, "revision": snap.revision if snap else None}
            results = await asyncio.gather(*(self._execute(a, seq) for a in first.actions))
            await self._update(observed, first.actions, results)
        after = plan(
            desired,
            observed,
            self.memory,
            seq=seq,
            now=self.clock(),
            suspended=suspended,
            holds=holds,
        )
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
        self.status = status

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

    async def _execute(self, action: Action, seq: int) -> StepResult | None:
        """Run one action; its final step's result, or None when it failed."""
        name = action.release
        mem = self.memory.get(name, ReleaseStatus())
        want = action.desired
        try:
            if action.kind is ActionKind.DELETE:
                result = await self.driver.delete(name)
                self.memory.pop(name, None)
                return result
            assert want is not None and action.version is not None
            if action.kind is ActionKind.INSTALL:
                await self.driver.install(want.spec, action.version, want.config)
                result = await self.driver.start(name)
            elif action.kind is ActionKind.UPGRADE:
                result = await self.driver.upgrade(want.spec, action.version, want.config)
            elif action.kind is ActionKind.RECONFIGURE:
                await self.driver.reconfigure(want.spec, want.config)
                result = await self.driver.start(name)
            else:
                result = await self.driver.start(name)
            self.memory[name] = ReleaseStatus(applied_config=config_digest(want.config))
            log.debug("%s: %s: %s", self.host.host_id, action.describe(), result.did)
            return result
        except reasons.DriverError as e:
            log.warning("%s: %s failed: %s", self.host.host_id, action.describe(), e)
            self.memory[name] = self._failed(mem, action, e, seq)
        except Exception as e:  # a bug must not kill the loop; it is reported like a failure
            log.exception("%s: %s crashed", self.host.host_id, action.describe())
            err = reasons.TransientError("InternalError", f"{type(e).__name__}: {e}")
            self.memory[name] = self._failed(mem, action, err, seq)
        return None

    def _failed(
        self, mem: ReleaseStatus, action: Action, e: reasons.DriverError, seq: int
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
