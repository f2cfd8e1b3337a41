"""The reconciler's tick against a scripted driver: which snapshot a tick reports as applied.

A tick awaits the driver (RPC to the nodes) several times. A newer snapshot stored meanwhile
belongs to the next tick; the running one must neither plan for it nor report it applied
(`erel-sync wait` would count the host as converged on a revision it never acted on).
"""

from __future__ import annotations

import asyncio

from erel_sync.agent.reconciler import Reconciler
from erel_sync.core import reasons
from erel_sync.core.matching import HostIdentity
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.reconcile import config_digest
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.model.specs import ReleaseConfig
from tests.unit.reconcilerkit import snapshot


class PausingDriver:
    """hello 0.1.0 installed and running; the first observation waits for `go`."""

    def __init__(self) -> None:
        self.observing = asyncio.Event()
        self.go = asyncio.Event()

    async def observe_all(self, *, health: bool = False) -> dict[str, ObservedRelease]:
        if not self.observing.is_set():
            self.observing.set()
            await self.go.wait()
        hello = ObservedRelease(
            "hello", installed=True, running=True, reachable=True, current="0.1.0",
            permanent="0.1.0", reason=reasons.Healthy, healthy=True,
        )  # fmt: skip
        return {"hello": hello}


async def test_a_snapshot_stored_during_a_tick_is_not_reported_applied_by_it() -> None:
    driver = PausingDriver()
    # hello's empty config was rendered already, so 0.1.0 running is all seq 1 wants.
    memory = {"hello": ReleaseStatus(applied_config=config_digest(ReleaseConfig()))}
    r = Reconciler(host=HostIdentity("web-1", {}), driver=driver, memory=memory, holds={})  # type: ignore[arg-type]
    r.snapshot = snapshot(1, "0.1.0")
    refresh = asyncio.create_task(r.refresh())
    await asyncio.wait_for(driver.observing.wait(), 5)
    r.snapshot = snapshot(2, "0.2.0")  # stored by the intake while the tick awaits the driver
    driver.go.set()
    report = await asyncio.wait_for(refresh, 5)
    # The tick planned for seq 1 (0.1.0 running: converged) and says so, for seq 1 only.
    assert report["snapshot"]["seq"] == 1
    assert r.applied is not None and r.applied["seq"] == 1
    # The next pass sees seq 2: 0.2.0 wanted, 0.1.0 running, so not converged on it.
    again = await asyncio.wait_for(r.refresh(), 5)
    assert again["snapshot"]["seq"] == 2 and again["converged"] is False
    assert r.applied["seq"] == 1
