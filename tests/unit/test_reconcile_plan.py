"""The reconcile planner, table-driven, with the law: after the actions, plan again is empty."""

from __future__ import annotations

from dataclasses import replace

import pytest

from erel_sync.core import reasons
from erel_sync.core.desired import host_releases
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.reconcile import (
    ActionKind,
    Plan,
    SkipReason,
    config_digest,
    plan,
    retry_backoff,
)
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml

STATE = validate_sources(
    [
        SourceFile("r1.yaml", release_yaml(versions=("0.1.0", "0.2.0")).encode()),
        SourceFile("r2.yaml", release_yaml(name="ticker").encode()),
        SourceFile(
            "g.yaml", group_yaml(releases=(("hello", "0.2.0"), ("ticker", "0.1.0"))).encode()
        ),
    ]
).require()
DESIRED = host_releases(STATE, STATE.groups["web"])
CFG = {n: config_digest(e.config) for n, e in DESIRED.items()}


def running(version: str, managed: bool = True) -> ObservedRelease:
    reason = reasons.Running if managed else reasons.NotManaged
    return ObservedRelease("r", installed=True, running=True, current=version, reason=reason)


def applied(name: str) -> ReleaseStatus:
    return ReleaseStatus(applied_config=CFG[name])


def execute(
    p: Plan, observed: dict[str, ObservedRelease], memory: dict[str, ReleaseStatus]
) -> None:
    """What a successful executor leaves behind, for the idempotency law."""
    for a in p.actions:
        if a.kind is ActionKind.DELETE:
            observed.pop(a.release, None)
            memory.pop(a.release, None)
        else:
            assert a.desired is not None
            observed[a.release] = running(a.version or "")
            memory[a.release] = replace(
                memory.get(a.release, ReleaseStatus()),
                applied_config=config_digest(a.desired.config),
            )


CASES: list[
    tuple[str, dict[str, ObservedRelease], dict[str, ReleaseStatus], list[tuple[str, str]]]
] = [
    ("fresh host installs both", {}, {}, [("Install", "hello"), ("Install", "ticker")]),
    (
        "converged host does nothing",
        {"hello": running("0.2.0"), "ticker": running("0.1.0")},
        {"hello": applied("hello"), "ticker": applied("ticker")},
        [],
    ),
    (
        "older version is upgraded",
        {"hello": running("0.1.0"), "ticker": running("0.1.0")},
        {"hello": applied("hello"), "ticker": applied("ticker")},
        [("Upgrade", "hello")],
    ),
    (
        "stopped release is started (self-heal)",
        {"hello": replace(running("0.2.0"), running=False), "ticker": running("0.1.0")},
        {"hello": applied("hello"), "ticker": applied("ticker")},
        [("Start", "hello")],
    ),
    (
        "config change reconfigures",
        {"hello": running("0.2.0"), "ticker": running("0.1.0")},
        {"hello": ReleaseStatus(applied_config="old"), "ticker": applied("ticker")},
        [("Reconfigure", "hello")],
    ),
    (
        "managed but undesired is deleted",
        {"hello": running("0.2.0"), "ticker": running("0.1.0"), "old": running("1.0")},
        {"hello": applied("hello"), "ticker": applied("ticker")},
        [("Delete", "old")],
    ),
    (
        "unmanaged release is never touched",
        {"hello": running("0.2.0"), "ticker": running("0.1.0"), "theirs": running("1", False)},
        {"hello": applied("hello"), "ticker": applied("ticker")},
        [],
    ),
]


@pytest.mark.parametrize(
    ("observed", "memory", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan_and_second_pass_is_empty(
    observed: dict[str, ObservedRelease],
    memory: dict[str, ReleaseStatus],
    expected: list[tuple[str, str]],
) -> None:
    observed, memory = dict(observed), dict(memory)
    first = plan(DESIRED, observed, memory, seq=5, now=1000.0)
    assert [(a.kind.value, a.release) for a in first.actions] == expected
    execute(first, observed, memory)
    second = plan(DESIRED, observed, memory, seq=5, now=1000.0)
    assert second.actions == ()


def test_same_name_installed_by_someone_else_is_not_managed() -> None:
    p = plan(DESIRED, {"hello": running("0.1.0", managed=False)}, {}, seq=1, now=0)
    assert ("hello", SkipReason.NOT_MANAGED) in [(s.release, s.reason) for s in p.skipped]
    assert [a.release for a in p.actions] == ["ticker"]


def test_unassigned_and_suspended_touch_nothing() -> None:
    observed = {"hello": running("0.1.0"), "old": running("1")}
    for p in (
        plan(None, observed, {}, seq=1, now=0),
        plan(DESIRED, observed, {}, seq=1, now=0, suspended=True),
    ):
        assert p.actions == ()
        assert {s.release for s in p.skipped} >= {"hello", "old"}


def test_failed_revision_is_not_retried_until_a_newer_seq() -> None:
    observed = {"hello": running("0.1.0"), "ticker": running("0.1.0")}
    memory = {
        "hello": ReleaseStatus(applied_config=CFG["hello"], failed_seq=5, failed_version="0.2.0"),
        "ticker": applied("ticker"),
    }
    p = plan(DESIRED, observed, memory, seq=5, now=0)
    assert p.actions == ()
    assert p.skipped[0].reason is SkipReason.FAILED_REVISION
    assert [a.kind for a in plan(DESIRED, observed, memory, seq=6, now=0).actions] == [
        ActionKind.UPGRADE
    ]


def test_crash_loop_backs_off() -> None:
    observed = {"hello": replace(running("0.2.0"), running=False), "ticker": running("0.1.0")}
    memory = {
        "hello": ReleaseStatus(applied_config=CFG["hello"], failures=3, next_attempt_at=100.0),
        "ticker": applied("ticker"),
    }
    assert plan(DESIRED, observed, memory, seq=1, now=99.0).skipped[0].reason is SkipReason.BACKOFF
    assert plan(DESIRED, observed, memory, seq=1, now=100.0).actions[0].kind is ActionKind.START
    assert [retry_backoff(n) for n in (1, 2, 3, 20)] == [2.0, 4.0, 8.0, 300.0]


def test_holds_are_respected() -> None:
    observed = {"hello": replace(running("0.2.0"), running=False), "old": running("1")}
    p = plan(DESIRED, observed, {}, seq=1, now=0, holds=frozenset({"hello", "old"}))
    assert [a.release for a in p.actions] == ["ticker"]


def test_deterministic_order() -> None:
    a = plan(DESIRED, {}, {}, seq=1, now=0)
    b = plan(dict(reversed(list(DESIRED.items()))), {}, {}, seq=1, now=0)
    assert a == b
