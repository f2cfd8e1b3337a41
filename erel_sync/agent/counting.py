"""The agent's driver, counted: every step that changes a release (install, start, stop,
restart, upgrade, reconfigure, delete, recover) adds one to `actions.<step>.ok` or
`actions.<step>.failed` in the agent's counters, whoever asked for it (a reconcile tick, an
operator command). They go out with the heartbeats and as `erel_sync_agent_actions_total`
(core.metrics). Observing is not an action and is not counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from erel_sync.agent.reconciler import Driver
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.core.upgrade import RecoveryStep
from erel_sync.model.specs import ReleaseConfig, ReleaseSpec

T = TypeVar("T")


class CountingDriver:
    def __init__(self, inner: Driver, counters: Counter[str]) -> None:
        self.inner, self.counters = inner, counters

    def __getattr__(self, name: str) -> Any:
        # What the driver offers beyond the Driver protocol (set_peers: peering checks for
        # it), as the driver has it or not.
        return getattr(self.inner, name)

    async def _count(self, step: str, call: Awaitable[T]) -> T:
        try:
            result = await call
        except Exception:
            self.counters[f"actions.{step}.failed"] += 1
            raise
        self.counters[f"actions.{step}.ok"] += 1
        return result

    async def observe(self, name: str, *, health: bool = False) -> ObservedRelease:
        return await self.inner.observe(name, health=health)

    async def observe_all(self, *, health: bool = False) -> Mapping[str, ObservedRelease]:
        return await self.inner.observe_all(health=health)

    async def install(
        self, spec: ReleaseSpec, version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        return await self._count("install", self.inner.install(spec, version, config))

    async def start(self, name: str) -> StepResult:
        return await self._count("start", self.inner.start(name))

    async def stop(self, name: str) -> StepResult:
        return await self._count("stop", self.inner.stop(name))

    async def restart(self, name: str) -> StepResult:
        return await self._count("restart", self.inner.restart(name))

    async def upgrade(
        self, spec: ReleaseSpec, to_version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        return await self._count("upgrade", self.inner.upgrade(spec, to_version, config))

    async def reconfigure(self, spec: ReleaseSpec, config: ReleaseConfig | None = None) -> bool:
        return await self._count("reconfigure", self.inner.reconfigure(spec, config))

    async def delete(self, name: str) -> StepResult:
        return await self._count("delete", self.inner.delete(name))

    async def recover(self, name: str) -> RecoveryStep:
        return await self._count("recover", self.inner.recover(name))
