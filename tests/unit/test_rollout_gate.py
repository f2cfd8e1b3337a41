"""The agent's side of a rollout, against a fake driver and an injected clock: gated actions
wait without a grant and run with one; a first install and a start are not gated; a first
install while the group's rollout is Halted takes the group's stable version; `rollout retry`
forgets the failure; a vm_args change is a reconfigure plus a restart; the host's reports go
waiting, changing, converged (or failed) in that order, each handed on once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from erel_sync.adapters.store import SlotFile
from erel_sync.agent.reconciler import Reconciler
from erel_sync.agent.rollout import RolloutFollower, newest_report, restore_report
from erel_sync.core import reasons
from erel_sync.core.matching import HostIdentity
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.reconcile import config_digest
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.core.rollout import (
    Grant,
    GroupRollout,
    HostReport,
    HostState,
    Phase,
    RolloutDoc,
    grant_id,
    sign_rollout,
)
from erel_sync.core.snapshot import (
    generate_key,
    load_private_key,
)
from erel_sync.model.specs import ReleaseConfig, freeze
from tests.unit.reconcilerkit import PEM, PUB, T0, Clock, FakeDriver, running, snapshot

HOST = "web-1"
VM_ARGS = "  config: {vm_args: {'+K': 'true'}}\n"
NEW_CONFIG = ReleaseConfig(vm_args=freeze({"+K": "true"}))


def rollout(
    seq: int,
    *,
    phase: Phase = Phase.PROGRESSING,
    granted: bool = False,
    retry: int = 0,
    stable: Mapping[str, str] | None = None,
    version: int = 1,
) -> RolloutDoc:
    grants = {HOST: Grant(HOST, seq, grant_id(seq, HOST, retry), T0)} if granted else {}
    group = GroupRollout(
        group="web", seq=seq, revision=f"{seq:040x}", phase=phase, max_unavailable=1,
        canaries=(), order=(HOST,), granted=MappingProxyType(grants), done=frozenset(),
        failed=MappingProxyType({}), waiting=() if granted else (HOST,), retry=retry,
        stable=MappingProxyType(dict(stable or {})),
    )  # fmt: skip
    return RolloutDoc(version, "2026-11-24T00:00:00Z", MappingProxyType({"web": group}))


class Gated:
    """A reconciler of web-1 gated by `doc`, recording every report it hands on."""

    def __init__(self, driver: FakeDriver, memory: dict[str, ReleaseStatus] | None = None) -> None:
        self.doc: RolloutDoc | None = None
        self.clock = Clock()
        self.sent: list[HostReport] = []
        self.r = Reconciler(
            host=HostIdentity(HOST, {}),
            driver=driver,
            memory=memory if memory is not None else {},
            holds={},
            clock=self.clock,
            rollout=lambda: self.doc,
            on_report=self._sent,
        )

    async def _sent(self, report: HostReport) -> None:
        self.sent.append(report)

    def states(self) -> list[str]:
        return [r.state.value for r in self.sent]

    def hello(self) -> dict[str, Any]:
        releases = self.r.report["releases"]
        return dict(next(r for r in releases if r["name"] == "hello"))


def applied() -> dict[str, ReleaseStatus]:
    """hello's memory after its current (default) config was applied."""
    return {"hello": ReleaseStatus(applied_config=config_digest(ReleaseConfig()))}


async def test_a_gated_upgrade_waits_without_a_grant_and_runs_with_one() -> None:
    driver = FakeDriver(running("0.1.0"))
    g = Gated(driver, applied())
    g.r.snapshot = snapshot(2, "0.2.0")
    await g.r.tick()  # no rollout document at all: wait
    g.doc = rollout(2)
    g.clock.now += 1
    await g.r.tick()  # a document, no grant for web-1: still wait
    assert driver.calls == []
    assert (g.hello()["state"], g.hello()["reason"]) == ("Waiting", "WaitingForRollout")
    assert g.r.report["rollout"] == {
        "seq": 2, "state": "waiting", "reason": "", "at": T0, "grant": None
    }  # fmt: skip

    g.doc = rollout(2, granted=True, version=2)
    g.clock.now += 1
    await g.r.tick()
    assert driver.calls == ["upgrade 0.2.0"]
    assert g.states() == ["waiting", "changing", "converged"]
    changing = g.sent[1]
    assert (changing.grant, changing.at, changing.group) == ("2:web-1:0", T0 + 2, "web")
    assert g.r.report["rollout"]["state"] == "converged"
    assert g.r.report["converged"] is True

    await g.r.tick()  # nothing new: no new report
    assert len(g.sent) == 3


async def test_first_install_and_start_are_not_gated() -> None:
    driver = FakeDriver()
    g = Gated(driver)
    g.r.snapshot = snapshot(1, "0.1.0")
    await g.r.tick()
    assert driver.calls == ["install 0.1.0", "start"]
    assert g.states() == ["converged"]  # never waited, never held a place

    driver.hello = ObservedRelease("hello", installed=True, permanent="0.1.0")  # it stopped
    await g.r.tick()
    assert driver.calls[-1] == "start"


async def test_without_a_gate_nothing_waits_and_nothing_is_reported() -> None:
    driver = FakeDriver(running("0.1.0"))
    r = Reconciler(host=HostIdentity(HOST, {}), driver=driver, memory=applied(), holds={})
    r.snapshot = snapshot(2, "0.2.0")
    await r.tick()
    assert driver.calls == ["upgrade 0.2.0"]
    assert r.report["rollout"] is None


async def test_a_first_install_while_halted_takes_the_stable_version() -> None:
    driver = FakeDriver()
    g = Gated(driver)
    g.doc = rollout(2, phase=Phase.HALTED, stable={"hello": "0.1.0"})
    g.r.snapshot = snapshot(2, "0.2.0")
    await g.r.tick()
    assert driver.calls == ["install 0.1.0", "start"]
    assert g.hello()["version"] == "0.1.0"
    assert g.states() == ["waiting"]  # its upgrade to 0.2.0 waits like everyone else's


async def test_a_failed_upgrade_reports_failed_until_retry_forgets_it() -> None:
    driver = FakeDriver(running("0.1.0"))
    g = Gated(driver, applied())
    g.r.snapshot = snapshot(2, "0.2.0")
    g.doc = rollout(2, granted=True)
    driver.fail["upgrade"] = reasons.StalledError(reasons.RolledBack, "health failed")
    await g.r.tick()
    assert g.states() == ["changing", "failed"]
    failed = g.sent[-1]
    assert (failed.reason, failed.grant) == ("RolledBack: health failed", "2:web-1:0")
    assert g.r.memory["hello"].failed_seq == 2
    assert g.hello()["state"] == "Failed"

    g.doc = rollout(2, phase=Phase.HALTED, version=2)  # the controller halted the group
    await g.r.tick()
    assert g.states() == ["changing", "failed"]  # still failed, nothing tried
    assert driver.calls == ["upgrade 0.2.0"]

    g.doc = rollout(2, retry=1, version=3)  # `rollout retry web`: no grant yet
    g.clock.now += 5
    await g.r.tick()
    assert g.r.memory["hello"].failed_seq is None
    assert g.states() == ["changing", "failed", "waiting"]
    assert driver.calls == ["upgrade 0.2.0"]

    g.doc = rollout(2, retry=1, granted=True, version=4)
    await g.r.tick()
    assert driver.calls == ["upgrade 0.2.0", "upgrade 0.2.0"]
    assert g.states() == ["changing", "failed", "waiting", "changing", "converged"]
    assert g.sent[-2].grant == "2:web-1:1"


async def test_a_transient_failure_of_a_gated_action_reports_failed_too() -> None:
    driver = FakeDriver(running("0.1.0"))
    g = Gated(driver, applied())
    g.r.snapshot = snapshot(2, "0.2.0")
    g.doc = rollout(2, granted=True)
    driver.fail["upgrade"] = reasons.TransientError(reasons.ArtifactUnavailable, "404")
    await g.r.tick()
    assert g.states() == ["changing", "failed"]
    assert g.sent[-1].reason == "ArtifactUnavailable: 404"

    g.r.snapshot = snapshot(3, "0.2.0")  # a newer revision is a new rollout
    g.doc = rollout(3, version=2)
    await g.r.tick()
    assert g.states()[-1] == "waiting" and g.sent[-1].seq == 3


async def test_a_vm_args_change_is_a_reconfigure_and_a_restart_under_a_grant() -> None:
    driver = FakeDriver(running("0.1.0"))
    driver.vm_changed = True
    g = Gated(driver, applied())
    g.r.snapshot = snapshot(2, "0.1.0", release_extra=VM_ARGS)
    await g.r.tick()
    assert driver.calls == []
    assert g.hello()["state"] == "Waiting"

    g.doc = rollout(2, granted=True)
    await g.r.tick()
    assert driver.calls == ["reconfigure", "restart"]
    assert g.r.memory["hello"] == ReleaseStatus(applied_config=config_digest(NEW_CONFIG))
    assert g.states() == ["waiting", "changing", "converged"]


async def test_a_failed_restart_leaves_the_config_unapplied_and_is_restarted_next_time() -> None:
    driver = FakeDriver(running("0.1.0"))
    driver.vm_changed = True
    g = Gated(driver, applied())
    g.r.snapshot = snapshot(2, "0.1.0", release_extra=VM_ARGS)
    g.doc = rollout(2, granted=True)
    driver.fail["restart"] = reasons.TransientError(reasons.StartTimeout, "slow")
    await g.r.tick()
    mem = g.r.memory["hello"]
    assert mem.applied_config == config_digest(ReleaseConfig())  # the old one
    assert mem.restart_pending
    assert g.hello()["state"] != "Ready"

    driver.vm_changed = False  # rendered already: only the pending restart applies them
    g.clock.now = mem.next_attempt_at
    await g.r.tick()
    assert driver.calls == ["reconfigure", "restart", "reconfigure", "restart"]
    assert g.r.memory["hello"] == ReleaseStatus(applied_config=config_digest(NEW_CONFIG))


async def test_a_config_change_without_vm_args_is_applied_live_without_a_restart() -> None:
    driver = FakeDriver(running("0.1.0"))
    g = Gated(driver, {"hello": ReleaseStatus(applied_config="old")})
    g.r.snapshot = snapshot(2, "0.1.0")
    g.doc = rollout(2, granted=True)
    await g.r.tick()
    assert driver.calls == ["reconfigure", "start"]


def test_a_saved_report_is_restored_with_its_time() -> None:
    saved = {
        "group": "web",
        "rollout": {"seq": 4, "state": "failed", "reason": "RolledBack: x", "at": 5.0,
                    "grant": "4:web-1:0"},
    }  # fmt: skip
    report = restore_report(saved, HOST)
    assert report == HostReport(HOST, "web", 4, HostState.FAILED, "RolledBack: x", 5.0, "4:web-1:0")
    assert restore_report({"rollout": None}, HOST) is None
    assert restore_report({"rollout": {"state": "bogus"}}, HOST) is None


def following() -> tuple[RolloutFollower, asyncio.Event, Counter[str]]:
    """web-1's follower of the rollout documents, with the event it wakes and its counters."""
    wake = asyncio.Event()
    counters: Counter[str] = Counter()
    follower = RolloutFollower(HOST, {"k": PUB}, counters, group=lambda: "web", reconcile_now=wake)
    return follower, wake, counters


async def test_the_follower_keeps_the_newest_verified_document_and_wakes_on_what_matters() -> None:
    follower, wake, counters = following()
    key = load_private_key(PEM)
    await follower.on_rollout(sign_rollout(rollout(2, version=5), key, "k"))
    assert follower.current() is not None and wake.is_set()

    wake.clear()
    await follower.on_rollout(sign_rollout(rollout(2, granted=True, version=4), key, "k"))
    current = follower.current()
    assert current is not None and current.version == 5  # an older one is ignored
    assert not wake.is_set()

    other = rollout(2, version=6)
    await follower.on_rollout(sign_rollout(other, key, "k"))  # same for web-1: no reconcile
    assert not wake.is_set()

    await follower.on_rollout(sign_rollout(rollout(2, granted=True, version=7), key, "k"))
    assert wake.is_set()
    # What its reports say it holds; the publisher sends the current document again when
    # that differs from the current view.
    assert follower.held() == {"version": 7, "view": [[f"2:{HOST}:0", 2], None, None, []]}
    assert not follower.direct  # a document that does not say so: the stream is followed

    wake.clear()
    bad_pem, _ = generate_key()
    forged = sign_rollout(rollout(2, version=8), load_private_key(bad_pem), "k")
    await follower.on_rollout(forged)
    current = follower.current()
    assert current is not None and current.version == 7 and not wake.is_set()
    assert counters["rollout_rejected.BadSignature"] == 1


async def test_a_document_that_changes_nothing_here_is_dropped_unverified_never_trusted() -> None:
    """Most documents of a rollout are about other hosts: an agent drops them before checking
    their signature (the cost of a wave, times a hundred agents). Such a document never becomes
    the one the agent acts on, so a forged one gains nothing; one that would change this host's
    grant is verified first, and a forged one is refused."""
    follower, wake, counters = following()
    key = load_private_key(PEM)
    await follower.on_rollout(sign_rollout(rollout(2, version=5), key, "k"))
    wake.clear()
    bad_pem, _ = generate_key()
    forger = load_private_key(bad_pem)
    await follower.on_rollout(sign_rollout(rollout(2, version=6), forger, "k"))  # same view
    assert counters["rollout_documents_unchanged"] == 1
    current = follower.current()
    assert current is not None and current.version == 5 and not wake.is_set()
    await follower.on_rollout(sign_rollout(rollout(2, granted=True, version=9), forger, "k"))
    assert counters["rollout_rejected.BadSignature"] == 1
    current = follower.current()
    assert current is not None and current.version == 5 and not wake.is_set()
    await follower.on_rollout(sign_rollout(rollout(2, granted=True, version=7), key, "k"))
    current = follower.current()
    assert current is not None and current.version == 7 and wake.is_set()


async def test_a_new_seq_or_phase_alone_wakes_nobody_and_direct_is_read_from_the_document() -> None:
    """A hundred agents re-verifying and reconciling on every new seq or phase was the cost of
    a rollout's first wave: only what the gate reads wakes an agent."""
    follower, wake, counters = following()
    key = load_private_key(PEM)
    await follower.on_rollout(sign_rollout(rollout(2, version=5), key, "k"))
    wake.clear()
    await follower.on_rollout(sign_rollout(rollout(3, phase=Phase.CANARY, version=6), key, "k"))
    assert not wake.is_set() and counters["rollout_documents_unchanged"] == 1
    halted = rollout(3, phase=Phase.HALTED, stable={"hello": "0.1.0"}, version=7)
    await follower.on_rollout(sign_rollout(replace(halted, direct=True), key, "k"))
    assert wake.is_set() and follower.direct
    assert follower.held()["view"] == [None, [["hello", "0.1.0"]], None, []]


def test_the_durable_rollout_record_is_what_a_restart_restores() -> None:
    """status.json keeps the host's rollout report durably (written before a gated step):
    an agent killed mid-step comes back `changing`, with the time it began."""
    changing = HostReport(HOST, "web", 4, HostState.CHANGING, "", 5.0, "4:web-1:0")
    saved = changing.to_json(time="")
    assert restore_report(saved, HOST) == replace(changing, revision="")


def test_the_step_record_wins_over_an_older_status_json_and_loses_to_a_newer_one(
    tmp_path: Path,
) -> None:
    """The `changing` record is written alone before a gated step (status.json follows after
    the tick): a restart takes whichever of the two is newer, by seq, then `at`."""
    waiting = HostReport(HOST, "web", 4, HostState.WAITING, "", 4.0)
    changing = HostReport(HOST, "web", 4, HostState.CHANGING, "", 5.0, "4:web-1:0")
    converged = HostReport(HOST, "web", 4, HostState.CONVERGED, "", 6.0, "4:web-1:0")
    slot = SlotFile(tmp_path / "rollout-step")
    slot.write(json.dumps(changing.to_json(time="")).encode())
    slot.close()
    kept = restore_report(SlotFile(tmp_path / "rollout-step").read_json(), HOST)
    assert kept == replace(changing, revision="")
    assert newest_report(waiting, kept) == kept  # killed mid-step: comes back changing
    assert newest_report(converged, kept) == converged  # the step ended and was recorded
    newer_seq = HostReport(HOST, "web", 5, HostState.WAITING, "", 1.0)
    assert newest_report(newer_seq, kept) == newer_seq
    assert newest_report(None, None) is None
    assert SlotFile(tmp_path / "nothing").read_json() is None
