"""Grants ahead of reports (`core.rollout.step(disturbs=True)`): when a seq changes what a
group's hosts run, a settled host is granted in its turn before it reports on the seq, so that
the snapshot and its grant reach it together; and which changes count as disturbing
(`core.desired.disturbing`)."""

from __future__ import annotations

import json
from pathlib import Path

from erel_sync.adapters.broker import topology as topo
from erel_sync.core.desired import disturbing
from erel_sync.core.rollout import TURN_GRACE, GroupRollout, HostReport, Phase, step
from erel_sync.model.specs import DesiredState, RolloutSpec
from erel_sync.model.validate import SourceFile, validate_sources
from erel_sync.publisher.rollout import RolloutController
from tests.configrepo import group_yaml, release_yaml
from tests.unit.test_rollout import OK, SEQ, VERSIONS, C, F, W, reports, run
from tests.unit.test_snapshot import KEY, TRUSTED

POLICY = RolloutSpec(max_unavailable=2)


def ahead(
    states: dict[str, HostReport], *, now: float = 100.0, previous: GroupRollout | None = None
) -> GroupRollout:
    return step(
        previous, group="web", seq=SEQ, revision="r7", policy=POLICY, versions=VERSIONS,
        hosts=states, now=now, disturbs=True,
    )  # fmt: skip


def test_settled_hosts_are_granted_in_order_before_they_report_on_the_seq() -> None:
    settled = reports({f"web-{i}": OK for i in range(1, 6)}, seq=SEQ - 1)
    first = ahead(settled)
    assert list(first.granted) == ["web-1", "web-2"]
    assert first.phase is Phase.PROGRESSING
    # The same step without `disturbs` waits for the reports (the host keeps its turn).
    assert run(None, settled, POLICY).granted == {}
    # Stepping again grants nothing new: the limit holds.
    assert list(ahead(settled, previous=first).granted) == ["web-1", "web-2"]


def test_a_host_granted_ahead_with_nothing_to_do_frees_its_place_at_once() -> None:
    settled = reports({f"web-{i}": OK for i in range(1, 6)}, seq=SEQ - 1)
    first = ahead(settled)
    # web-1 had nothing the seq disturbs: it reports converged; web-2 is changing.
    heard = {**settled, **reports({"web-1": OK, "web-2": C})}
    second = ahead(heard, previous=first)
    assert list(second.granted) == ["web-2", "web-3"]
    assert second.done == {"web-1"}


def test_only_a_settled_host_of_the_group_is_granted_ahead() -> None:
    """A host whose newest report failed or is mid-change, or is of another group, keeps its
    turn and holds the others back for TURN_GRACE, as without `disturbs`."""
    for report in (
        HostReport("web-1", "web", SEQ - 1, F, reason="Boom"),
        HostReport("web-1", "web", SEQ - 1, C),
        HostReport("web-1", "db", SEQ - 1, OK),
    ):
        hosts = {"web-1": report, **reports({"web-2": OK, "web-3": OK}, seq=SEQ - 1)}
        assert ahead(hosts).granted == {}, report
        later = ahead(hosts, now=100.0 + TURN_GRACE + 1, previous=ahead(hosts))
        assert list(later.granted) == ["web-2", "web-3"], report


def test_a_host_that_reported_waiting_on_the_seq_goes_as_before() -> None:
    hosts = {**reports({"web-1": W}), **reports({"web-2": OK, "web-3": OK}, seq=SEQ - 1)}
    assert list(ahead(hosts).granted) == ["web-1", "web-2"]


def test_a_halt_takes_back_the_grants_ahead_that_had_not_begun() -> None:
    settled = reports({f"web-{i}": OK for i in range(1, 4)}, seq=SEQ - 1)
    first = ahead(settled)
    failed = {**settled, **reports({"web-1": F})}
    halted = ahead(failed, previous=first)
    assert halted.phase is Phase.HALTED
    assert halted.granted == {}


def state(version: str = "0.2.0", extra: str = "", release_extra: str = "") -> DesiredState:
    release = release_yaml(versions=("0.1.0", "0.2.0", "0.3.0"), extra=release_extra)
    group = group_yaml(hosts="['web-*']", releases=(("hello", version),), extra=extra)
    return validate_sources(
        [SourceFile("r.yaml", release.encode()), SourceFile("g.yaml", group.encode())]
    ).require()


def test_what_disturbs_a_groups_hosts() -> None:
    base = disturbing(state(), "web")
    assert disturbing(state(), "web") == base
    assert disturbing(state("0.3.0"), "web") != base  # an upgrade
    assert disturbing(state("0.1.0"), "web") != base  # a downgrade
    vm_args = "  config: {vm_args: {'+A': '16'}}\n"
    assert disturbing(state(release_extra=vm_args), "web") != base
    # The rollout policy alone disturbs nobody.
    assert disturbing(state(extra="  rollout: {max_unavailable: 3}\n"), "web") == base
    assert disturbing(state(), "nope") == {}


def controller(state_dir: Path) -> RolloutController:
    """A controller past its warm-up, on a fixed clock, without a broker."""
    ctl = RolloutController(
        state_dir=state_dir, key=KEY, key_id="pub-1", trusted=TRUSTED, operator_keys={},
        warmup=0.0, counters={}, clock=lambda: 100.0,
    )  # fmt: skip
    ctl._warm_at = 0.0  # as after a session's warm-up
    return ctl


async def test_the_controller_grants_ahead_only_once_the_snapshot_is_on_the_stream(
    tmp_path: Path,
) -> None:
    """A grant ahead of reports must not name a seq that never reaches its host: the
    controller waits for the snapshot's confirm on the config stream. After a restart (no seq
    before to compare with) it waits for the reports."""
    ctl = controller(tmp_path)
    for i in range(1, 5):
        settled = HostReport(f"web-{i}", "web", 1, OK).to_json(time="t")
        await ctl.on_status(topo.rollout_key(f"web-{i}"), json.dumps(settled).encode())
    ctl.set_target(1, "r1", state("0.2.0"))
    ctl.on_stream(1)
    ctl.set_target(2, "r2", state("0.3.0"))
    assert ctl.refresh()
    assert ctl.doc is not None and dict(ctl.doc.groups["web"].granted) == {}
    ctl.on_stream(2)
    ctl.refresh()
    assert list(ctl.doc.groups["web"].granted) == ["web-1"]  # the group's default limit: 1

    restarted = controller(tmp_path / "other")
    restarted.book = ctl.book
    restarted.set_target(2, "r2", state("0.3.0"))
    restarted.on_stream(2)
    restarted.refresh()
    assert restarted.doc is not None and dict(restarted.doc.groups["web"].granted) == {}


async def test_the_controller_takes_an_older_publishers_rollout_json_once(tmp_path: Path) -> None:
    """State written by an older publisher (rollout.json, tmp + rename) is loaded; the first
    write goes to the slot files and removes it, so that nothing stale is read later."""
    older = controller(tmp_path)
    older.set_target(1, "r1", state("0.2.0"))
    assert older.refresh() and older.signed is not None
    legacy = {"format": 1, "kind": "rollout-state", "signed": older.signed.decode(), "commands": {}}
    (tmp_path / "rollout.json").write_text(json.dumps(legacy))

    ctl = controller(tmp_path)
    assert ctl.version == older.version
    ctl.set_target(2, "r2", state("0.3.0"))
    ctl.refresh()
    await ctl._persist()
    assert not (tmp_path / "rollout.json").exists()
    again = controller(tmp_path)
    assert again.version == ctl.version > older.version
