"""A release driver stand-in for the rollout benchmark: every release is installed and running,
and an upgrade takes a fixed time (upgrade + probation) and then reports the new version. So
the benchmark measures the rollout's coordination, not Erlang. Implements the reconciler's
`Driver` protocol; used by `bench/gitops_worker.py rollout`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from erel_sync.core import reasons
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.core.upgrade import RecoveryStep
from erel_sync.model.specs import ReleaseConfig, ReleaseSpec


class StubDriver:
    def __init__(
        self, versions: dict[str, str], step_time: float, on_step: Callable[[str, str], None]
    ) -> None:
        self.versions = dict(versions)  # release -> running version
        self.step_time = step_time  # one upgrade, probation included
        self.on_step = on_step  # ("start" | "done", release) as a step begins and ends

    def _seen(self, name: str) -> ObservedRelease:
        if name not in self.versions:
            return ObservedRelease(name, installed=False, reason=reasons.NotInstalled)
        v = self.versions[name]
        return ObservedRelease(
            name, installed=True, running=True, reachable=True, current=v, permanent=v,
            healthy=True, reason=reasons.Healthy, node=f"{name}@stub",
        )  # fmt: skip

    async def observe(self, name: str, *, health: bool = False) -> ObservedRelease:
        return self._seen(name)

    async def observe_all(self, *, health: bool = False) -> dict[str, ObservedRelease]:
        return {n: self._seen(n) for n in sorted(self.versions)}

    async def _change(self, name: str, version: str) -> StepResult:
        self.on_step("start", name)
        t0 = time.monotonic()
        await asyncio.sleep(self.step_time)  # the upgrade and its probation, stood in for
        self.versions[name] = version
        self.on_step("done", name)
        return StepResult(name, f"{version} in {time.monotonic() - t0:.3f}s", self._seen(name))

    async def install(
        self, spec: ReleaseSpec, version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        self.versions[spec.name] = version
        return StepResult(spec.name, f"installed {version}", self._seen(spec.name))

    async def start(self, name: str) -> StepResult:
        return StepResult(name, "already running", self._seen(name), changed=False)

    async def stop(self, name: str) -> StepResult:
        return StepResult(name, "stopped", self._seen(name))

    async def restart(self, name: str) -> StepResult:
        return await self._change(name, self.versions[name])

    async def upgrade(
        self, spec: ReleaseSpec, to_version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        return await self._change(spec.name, to_version)

    async def reconfigure(self, spec: ReleaseSpec, config: ReleaseConfig | None = None) -> bool:
        self.on_step("config", spec.name)
        return False  # vm.args never changes here

    async def delete(self, name: str) -> StepResult:
        seen = self._seen(name)
        self.versions.pop(name, None)
        return StepResult(name, "deleted", seen)

    async def recover(self, name: str) -> RecoveryStep:
        return RecoveryStep.CLEAR
