"""The reconciler's failure transitions, against a scripted driver and an injected clock (no
sleeps): a transient failure backs off and is retried once its time has come, a stalled change
is not retried until a newer snapshot, a stalled start is transient, success clears the record.
"""

from __future__ import annotations

from collections.abc import Mapping

from erel_sync.agent.reconciler import Reconciler
from erel_sync.core import reasons
from erel_sync.core.matching import HostIdentity
from erel_sync.core.reconcile import config_digest, retry_backoff
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.model.specs import ReleaseConfig
from tests.unit.reconcilerkit import T0, Clock, FakeDriver, running, snapshot, stopped

APPLIED = ReleaseStatus(applied_config=config_digest(ReleaseConfig()))


def reconciler(
    driver: FakeDriver, clock: Clock, memory: dict[str, ReleaseStatus] | None = None
) -> Reconciler:
    return Reconciler(
        host=HostIdentity("web-1", {}),
        driver=driver,
        memory=memory if memory is not None else {},
        holds={},
        clock=clock,
    )


def hello_state(report: Mapping[str, object]) -> tuple[object, object]:
    releases = report["releases"]
    assert isinstance(releases, list)
    row = next(r for r in releases if r["name"] == "hello")
    return row["state"], row["reason"]


async def test_a_transient_failure_backs_off_and_is_retried_when_its_time_comes() -> None:
    clock = Clock()
    driver = FakeDriver()
    driver.script = [reasons.TransientError(reasons.RpcFailed, "boom")] * 2
    r = reconciler(driver, clock)
    r.snapshot = snapshot(1, "0.1.0")

    report = await r.tick("snapshot")
    assert driver.calls == ["install 0.1.0"]
    status = r.memory["hello"]
    assert status.failures == 1
    assert status.next_attempt_at == T0 + retry_backoff(1)
    assert (status.last_reason, status.failed_seq, status.applied_config) == (
        reasons.RpcFailed,
        None,
        None,
    )
    assert status.last_error.endswith("RpcFailed: boom")
    assert hello_state(report) == ("Backoff", reasons.RpcFailed)
    assert report["converged"] is False

    clock.now = status.next_attempt_at - 0.5
    report = await r.tick("timer")
    assert driver.calls == ["install 0.1.0"]  # not before its time
    assert r.memory["hello"] == status
    assert hello_state(report) == ("Backoff", reasons.RpcFailed)

    clock.now = status.next_attempt_at
    await r.tick("timer")
    assert driver.calls == ["install 0.1.0"] * 2
    again = r.memory["hello"]
    assert again.failures == 2
    assert again.next_attempt_at == clock.now + retry_backoff(2)  # the delay grows

    clock.now = again.next_attempt_at
    report = await r.tick("timer")  # the script is spent: install and start succeed
    assert driver.calls == ["install 0.1.0"] * 3 + ["start"]
    assert r.memory["hello"] == APPLIED  # success clears failures, backoff and error
    assert hello_state(report) == ("Ready", "")
    assert report["converged"] is True


async def test_a_transient_failure_waits_at_least_its_retry_after_hint() -> None:
    clock = Clock()
    driver = FakeDriver(stopped("0.1.0"))
    driver.script = [reasons.driver_error(reasons.StartTimeout, "slow")]
    r = reconciler(driver, clock, {"hello": APPLIED})
    r.snapshot = snapshot(1, "0.1.0")
    await r.tick("snapshot")
    hint = reasons.RETRY_AFTER[reasons.StartTimeout]
    assert hint is not None and hint > retry_backoff(1)
    status = r.memory["hello"]
    assert status.next_attempt_at == T0 + hint
    # A failed start keeps the config it rendered: a retry starts, it does not reconfigure.
    assert status.applied_config == APPLIED.applied_config
    clock.now = T0 + hint - 1
    await r.tick("timer")
    assert driver.calls == ["start"]
    clock.now = T0 + hint
    await r.tick("timer")
    assert driver.calls == ["start", "start"]
    assert r.memory["hello"] == APPLIED


async def test_a_stalled_change_is_not_retried_until_a_newer_snapshot() -> None:
    clock = Clock()
    driver = FakeDriver(running("0.1.0"))
    driver.script = [reasons.driver_error(reasons.UpgradeFailed, "bad appup")]
    r = reconciler(driver, clock, {"hello": APPLIED})
    r.snapshot = snapshot(2, "0.2.0")

    report = await r.tick("snapshot")
    assert driver.calls == ["upgrade 0.2.0"]
    status = r.memory["hello"]
    assert (status.failed_seq, status.failed_version, status.failures) == (2, "0.2.0", 0)
    assert (status.last_reason, status.next_attempt_at) == (reasons.UpgradeFailed, 0.0)
    assert hello_state(report) == ("Failed", reasons.UpgradeFailed)
    assert report["converged"] is False

    clock.now = T0 + 3600  # however long it waits: the same snapshot is not tried again
    report = await r.tick("timer")
    assert driver.calls == ["upgrade 0.2.0"]
    assert hello_state(report) == ("Failed", reasons.UpgradeFailed)

    r.snapshot = snapshot(3, "0.2.0")  # a newer commit, same version: tried once more
    report = await r.tick("snapshot")
    assert driver.calls == ["upgrade 0.2.0"] * 2
    assert r.memory["hello"] == APPLIED
    assert hello_state(report) == ("Ready", "")
    assert report["converged"] is True


async def test_a_stalled_start_is_transient() -> None:
    clock = Clock()
    driver = FakeDriver(stopped("0.1.0"))
    driver.script = [reasons.StalledError(reasons.StartFailed, "crashed at boot")]
    r = reconciler(driver, clock, {"hello": APPLIED})
    r.snapshot = snapshot(1, "0.1.0")

    report = await r.tick("snapshot")
    status = r.memory["hello"]
    # A node that did not come up may come up next time (a port freed, a disk cleaned).
    assert (status.failed_seq, status.failed_version) == (None, None)
    assert status.failures == 1
    assert status.next_attempt_at == T0 + retry_backoff(1)
    assert hello_state(report) == ("Backoff", reasons.StartFailed)

    clock.now = status.next_attempt_at
    report = await r.tick("timer")
    assert driver.calls == ["start", "start"]
    assert r.memory["hello"] == APPLIED
    assert hello_state(report) == ("Ready", "")
