"""A quiet driver: one erl_call per release per steady-state tick, health included; the fallback
for releases built with an older erel; and a tick with actions that reuses its steps' results.

The driver runs for real on a release root holding only its record (no node, no /proc match),
with a scripted `NodeRpc` answering what real erl_call runs printed (tests/unit/test_facts.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from erel_sync.adapters.releases.driver import DriverSettings, ReleaseDriver
from erel_sync.adapters.releases.erlcall import NodeRef
from erel_sync.adapters.releases.meta import ReleaseMeta, save_meta
from erel_sync.agent.reconciler import Reconciler
from erel_sync.core import reasons
from erel_sync.core.erlterm import Atom
from erel_sync.core.matching import HostIdentity
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.core.reconcile import config_digest
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.core.rpccodec import RpcOutcome, decode_erl_call
from erel_sync.core.upgrade import RecoveryStep
from erel_sync.model.specs import HealthSpec, ReleaseConfig, ReleaseSpec
from tests.unit.reconcilerkit import snapshot

HOST = "web-1"
OLD_EREL = "{badrpc, {'EXIT', {undef, [{erel_rpc, observe, [], []}]}}}"


def armour(value: Any) -> str:
    """What erel_rpc prints for an `ok:true` value."""
    raw = json.dumps({"ok": True, "value": value}).encode()
    return f'"erel1:{base64.b64encode(raw).decode()}"'


def status(current: str) -> dict[str, Any]:
    return {
        "release": "hello",
        "current": current,
        "permanent": current,
        "versions": [{"version": current, "status": "permanent"}],
        "uptime_ms": 1,
        "memory_bytes": 2,
        "processes": 3,
    }


class ScriptedRpc:
    """Answers erel_rpc calls like a node running `current` (with or without `observe`)."""

    def __init__(self, current: str = "0.1.0", *, has_observe: bool = True) -> None:
        self.current = current
        self.has_observe = has_observe
        self.calls: list[tuple[str, str, tuple[str | Atom, ...]]] = []

    async def call(
        self,
        node: NodeRef,
        module: str,
        function: str,
        args: Sequence[str | Atom] = (),
        *,
        within: float,
        envelope: bool = True,
    ) -> RpcOutcome:
        self.calls.append((node.name, function, tuple(args)))
        if function == "observe" and not self.has_observe:
            out = OLD_EREL
        elif function == "observe":
            out = armour({"status": status(self.current), "health": {"healthy": True}})
        elif function == "status":
            out = armour(status(self.current))
        elif function in ("health", "check"):
            out = armour({"healthy": True})
        else:
            raise AssertionError(f"unexpected call {function}")
        return decode_erl_call(0, out, "", envelope=True)

    def functions(self) -> list[str]:
        return [f for _, f, _ in self.calls]


def driver_with(
    tmp_path: Path, rpc: ScriptedRpc, names: Sequence[str] = ("hello",)
) -> ReleaseDriver:
    settings = DriverSettings(tmp_path / "releases", tmp_path / "cache", HOST)
    driver = ReleaseDriver(settings, rpc=rpc)
    for name in names:
        meta = ReleaseMeta(release=name, host_id=HOST, node=driver.node(name).name)
        meta.health = asdict(HealthSpec())
        save_meta(driver.root(name), meta)
    return driver


async def test_observing_with_health_is_one_observe_call(tmp_path: Path) -> None:
    rpc = ScriptedRpc()
    driver = driver_with(tmp_path, rpc)
    obs = await driver.observe("hello", health=True)
    assert rpc.functions() == ["observe"]
    assert rpc.calls[0][2] == ()  # erel's own checks: observe/0
    assert (obs.running, obs.current, obs.healthy, obs.reason) == (
        True,
        "0.1.0",
        True,
        reasons.Healthy,
    )
    rpc.calls.clear()
    plain = await driver.observe("hello")
    assert rpc.functions() == ["status"] and plain.healthy is None


async def test_an_older_erel_falls_back_to_status_and_health_and_is_remembered(
    tmp_path: Path,
) -> None:
    rpc = ScriptedRpc(has_observe=False)
    driver = driver_with(tmp_path, rpc)
    first = await driver.observe("hello", health=True)
    assert rpc.functions() == ["observe", "status", "health"]
    assert (first.running, first.healthy, first.reason) == (True, True, reasons.Healthy)
    rpc.calls.clear()
    await driver.observe("hello", health=True)
    assert rpc.functions() == ["status", "health"]  # remembered: no observe attempt
    # The node now runs another version (a newer erel, maybe): `observe` is tried again.
    rpc.current, rpc.has_observe = "0.2.0", True
    rpc.calls.clear()
    await driver.observe("hello", health=True)
    assert rpc.functions() == ["status", "health"]
    rpc.calls.clear()
    again = await driver.observe("hello", health=True)
    assert rpc.functions() == ["observe"] and again.current == "0.2.0"


async def test_a_release_specific_check_goes_with_the_observe_call(tmp_path: Path) -> None:
    rpc = ScriptedRpc()
    driver = driver_with(tmp_path, rpc)
    root = driver.root("hello")
    meta = driver.meta("hello")
    meta.health = asdict(HealthSpec(rpc="hello_health:check/0"))
    save_meta(root, meta)
    await driver.observe("hello", health=True)
    assert rpc.calls == [
        (driver.node("hello").name, "observe", (Atom("hello_health"), Atom("check")))
    ]


def converged_memory(*names: str) -> dict[str, ReleaseStatus]:
    return {n: ReleaseStatus(applied_config=config_digest(ReleaseConfig())) for n in names}


async def test_a_steady_state_tick_costs_one_erl_call_per_running_release(tmp_path: Path) -> None:
    rpc = ScriptedRpc()
    driver = driver_with(tmp_path, rpc, ("hello", "ticker"))
    r = Reconciler(
        host=HostIdentity(HOST, {}),
        driver=driver,
        memory=converged_memory("hello", "ticker"),
        holds={},
    )
    r.snapshot = snapshot(1, releases=(("hello", "0.1.0"), ("ticker", "0.1.0")))
    report = await r.tick("timer")
    assert report["converged"] is True
    assert [(n["name"], n["state"], n["healthy"]) for n in report["releases"]] == [
        ("hello", "Ready", True),
        ("ticker", "Ready", True),
    ]
    assert sorted(rpc.functions()) == ["observe", "observe"]  # one each, health included
    rpc.calls.clear()
    await r.refresh()  # a status query costs the same
    assert sorted(rpc.functions()) == ["observe", "observe"]


class StepDriver:
    """A fake driver that counts observations: hello runs 0.1.0, ticker is stopped."""

    def __init__(self, *, fail_start: bool = False) -> None:
        self.fail_start = fail_start
        self.observed_all = 0
        self.observed: list[str] = []
        self.state = {
            "hello": self._obs("hello", running=True),
            "ticker": self._obs("ticker", running=False),
        }

    @staticmethod
    def _obs(name: str, *, running: bool, version: str = "0.1.0") -> ObservedRelease:
        if running:
            return ObservedRelease(
                name, installed=True, running=True, reachable=True, current=version,
                permanent=version, healthy=True, reason=reasons.Healthy,
            )  # fmt: skip
        return ObservedRelease(name, installed=True, permanent=version, reason=reasons.Stopped)

    async def observe(self, name: str, *, health: bool = False) -> ObservedRelease:
        self.observed.append(name)
        return self.state[name]

    async def observe_all(self, *, health: bool = False) -> Mapping[str, ObservedRelease]:
        assert health, "a tick observes health with the status"
        self.observed_all += 1
        return dict(self.state)

    async def start(self, name: str) -> StepResult:
        if self.fail_start:
            raise reasons.driver_error(reasons.StartTimeout, f"{name} did not come up")
        self.state[name] = self._obs(name, running=True)
        return StepResult(name, "started 0.1.0", self.state[name])

    async def install(
        self, spec: ReleaseSpec, version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        raise AssertionError("not planned here")

    async def stop(self, name: str) -> StepResult:
        raise AssertionError("not planned here")

    async def restart(self, name: str) -> StepResult:
        raise AssertionError("not planned here")

    async def upgrade(
        self, spec: ReleaseSpec, to_version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        raise AssertionError("not planned here")

    async def reconfigure(self, spec: ReleaseSpec, config: ReleaseConfig | None = None) -> bool:
        raise AssertionError("not planned here")

    async def delete(self, name: str) -> StepResult:
        raise AssertionError("not planned here")

    async def recover(self, name: str) -> RecoveryStep:
        raise AssertionError("not planned here")


def reconciler(driver: StepDriver) -> Reconciler:
    r = Reconciler(
        host=HostIdentity(HOST, {}),
        driver=driver,
        memory=converged_memory("hello", "ticker"),
        holds={},
    )
    r.snapshot = snapshot(1, releases=(("hello", "0.1.0"), ("ticker", "0.1.0")))
    return r


async def test_a_tick_with_actions_reports_what_its_steps_left() -> None:
    driver = StepDriver()
    report = await reconciler(driver).tick("snapshot")
    assert driver.observed_all == 1 and driver.observed == []  # no second or third pass
    assert report["converged"] is True
    ticker = next(r for r in report["releases"] if r["name"] == "ticker")
    assert (ticker["running"], ticker["healthy"], ticker["state"]) == (True, True, "Ready")


async def test_only_a_release_whose_step_failed_is_observed_again() -> None:
    driver = StepDriver(fail_start=True)
    r = reconciler(driver)
    report = await r.tick("snapshot")
    assert driver.observed_all == 1 and driver.observed == ["ticker"]
    assert report["converged"] is False
    ticker = next(x for x in report["releases"] if x["name"] == "ticker")
    assert (ticker["running"], ticker["reason"]) == (False, reasons.StartTimeout)
