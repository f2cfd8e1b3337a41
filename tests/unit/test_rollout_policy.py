"""Where rollouts meet the pure core: the planner gate (`plan(..., may_disturb=False)`), the
release state words `Waiting` and not-Ready-while-a-config-is-pending, `converged`, the
`rollout` policy in the model (schema, round trip, sparse body, `requires`), and the waves
`plan --hosts` shows."""

from __future__ import annotations

import json

import pytest

from erel_sync.core import reasons
from erel_sync.core.desired import host_releases
from erel_sync.core.matching import HostIdentity
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.plan_render import render_json, render_markdown, render_text
from erel_sync.core.reconcile import GATED, ActionKind, Plan, Skip, SkipReason, config_digest, plan
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.core.revdiff import plan_revisions
from erel_sync.core.status import converged, release_state
from erel_sync.model.canonical import canonical_body
from erel_sync.model.documents import group_from_document, group_to_document
from erel_sync.model.specs import DesiredState, RolloutSpec
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml
from tests.unit.test_loader_bad_inputs import WEB, edit, load

RELEASE = release_yaml(versions=("0.1.0", "0.2.0"), extra="  config: {vm_args: {'+A': '8'}}\n")


def state(group_extra: str = "", release: str = RELEASE) -> DesiredState:
    group = group_yaml(hosts="['web-*']", releases=(("hello", "0.2.0"),), extra=group_extra)
    return validate_sources(
        [SourceFile("r.yaml", release.encode()), SourceFile("g.yaml", group.encode())]
    ).require()


STATE = state()
DESIRED = host_releases(STATE, STATE.groups["web"])
APPLIED = {"hello": ReleaseStatus(applied_config=config_digest(DESIRED["hello"].config))}


def running(version: str = "0.2.0") -> ObservedRelease:
    return ObservedRelease(
        "hello", installed=True, running=True, current=version, permanent=version,
        reason=reasons.Running,
    )  # fmt: skip


NOTHING = ObservedRelease("hello", installed=False)
STOPPED = ObservedRelease("hello", installed=True, permanent="0.2.0", reason=reasons.Stopped)

# (case, desired?, observed, memory) -> the action planned with a grant
GATE = [
    ("upgrade", True, running("0.1.0"), APPLIED, ActionKind.UPGRADE),
    ("reconfigure", True, running(), {}, ActionKind.RECONFIGURE),
    ("delete", False, running(), {}, ActionKind.DELETE),
    ("first install", True, NOTHING, {}, ActionKind.INSTALL),
    ("start", True, STOPPED, APPLIED, ActionKind.START),
]


@pytest.mark.parametrize(
    ("want", "obs", "memory", "kind"), [c[1:] for c in GATE], ids=[c[0] for c in GATE]
)
def test_planner_gate(
    want: bool, obs: ObservedRelease, memory: dict[str, ReleaseStatus], kind: ActionKind
) -> None:
    desired = DESIRED if want else {}
    free = plan(desired, {"hello": obs}, memory, seq=3, now=0.0)
    assert [a.kind for a in free.actions] == [kind] and free.skipped == ()
    gated = plan(desired, {"hello": obs}, memory, seq=3, now=0.0, may_disturb=False)
    if kind in GATED:
        assert gated.actions == ()
        assert gated.skipped == (Skip("hello", SkipReason.ROLLOUT, "WaitingForRollout"),)
        assert SkipReason.ROLLOUT.value == "WaitingForRollout"
    else:
        assert gated == free


def test_gate_leaves_other_skips_alone() -> None:
    backoff = {"hello": ReleaseStatus(next_attempt_at=10.0, last_reason="RpcFailed")}
    old = {"hello": running("0.1.0")}
    p = plan(DESIRED, old, backoff, seq=3, now=0.0, may_disturb=False)
    assert [s.reason for s in p.skipped] == [SkipReason.BACKOFF]
    held = plan(DESIRED, old, {}, seq=3, now=0.0, holds=frozenset({"hello"}), may_disturb=False)
    assert [s.reason for s in held.skipped] == [SkipReason.HELD]


@pytest.mark.parametrize(
    ("obs", "skip", "pending", "expected"),
    [
        (running("0.1.0"), SkipReason.ROLLOUT, False, "Waiting"),
        (running(), SkipReason.ROLLOUT, False, "Waiting"),  # a config change waits
        (running(), None, True, "Progressing"),  # new config (vm_args) not applied yet
        (running(), SkipReason.BACKOFF, False, "Backoff"),  # a config change backing off
        (running(), None, False, "Ready"),
    ],
)
def test_release_state_with_work_left(
    obs: ObservedRelease, skip: SkipReason | None, pending: bool, expected: str
) -> None:
    skipped = {"hello": skip} if skip else {}
    left = frozenset({"hello"}) if pending else frozenset()
    want = DESIRED["hello"]
    assert (
        release_state("hello", want, obs, skipped=skipped, healthy=True, pending=left) == expected
    )


def test_not_converged_while_waiting_for_the_rollout() -> None:
    waiting = Plan((), (Skip("hello", SkipReason.ROLLOUT, "WaitingForRollout"),))
    assert not converged(DESIRED, {"hello": running()}, waiting)
    assert converged(DESIRED, {"hello": running()}, Plan())


def test_vm_args_change_is_pending_until_applied() -> None:
    """A vm_args change plans a Reconfigure (the executor restarts for it), so the release is
    Progressing, not Ready, until its config is applied."""
    newer = state(release=RELEASE.replace("'+A': '8'", "'+A': '16'"))
    desired = host_releases(newer, newer.groups["web"])
    p = plan(desired, {"hello": running()}, APPLIED, seq=4, now=0.0)
    assert [a.kind for a in p.actions] == [ActionKind.RECONFIGURE]
    assert not converged(desired, {"hello": running()}, p)
    word = release_state(
        "hello", desired["hello"], running(), skipped={}, healthy=True, pending=frozenset({"hello"})
    )
    assert word == "Progressing"


POLICY = (
    "  rollout:\n    max_unavailable: '25%'\n    canary: 1\n    pause_after_canary: true\n"
    "    progress_deadline: 90s\n"
)


def test_rollout_policy_round_trip_and_requires() -> None:
    s = state(POLICY)
    assert s.groups["web"].rollout == RolloutSpec(
        max_unavailable="25%", canary=1, pause_after_canary=True, progress_deadline=90.0
    )
    doc = group_to_document(s.groups["web"])
    assert doc["spec"]["rollout"] == {
        "max_unavailable": "25%", "canary": 1, "pause_after_canary": True,
        "progress_deadline": "90s",
    }  # fmt: skip
    assert group_from_document(doc) == s.groups["web"]
    assert canonical_body(s)["requires"] == "0.2.0"


def test_rollout_defaults_stay_out_of_the_body() -> None:
    s = state(
        "  rollout: {max_unavailable: 1, canary: 0, pause_after_canary: false,"
        " progress_deadline: 10m}\n"
    )
    assert s.groups["web"].rollout == RolloutSpec()
    body = canonical_body(s)
    assert "rollout" not in body["groups"][0]["spec"] and "requires" not in body
    only_limit = canonical_body(state("  rollout: {max_unavailable: 3}\n"))
    assert only_limit["groups"][0]["spec"]["rollout"] == {"max_unavailable": 3}
    assert "requires" not in only_limit  # max_unavailable is as old as the baseline


@pytest.mark.parametrize(
    ("rollout", "path", "message"),
    [
        ("{canary: -1}", "$.spec.rollout.canary", "take a change alone"),
        ("{canary: '150%'}", "$.spec.rollout.canary", "take a change alone"),
        ("{pause_after_canary: 'yes'}", "$.spec.rollout.pause_after_canary", "expected a boolean"),
        ("{progress_deadline: 10}", "$.spec.rollout.progress_deadline", "expected a string"),
        ("{progress_deadline: soon}", "$.spec.rollout.progress_deadline", "duration"),
        ("{progress_deadline: 0s}", "$.spec.rollout.progress_deadline", "fails every host"),
        ("{max_parallel: 2}", "$.spec.rollout.max_parallel", "allowed: canary"),
    ],
)
def test_bad_rollout_policy_is_refused_with_location(rollout: str, path: str, message: str) -> None:
    result = load(edit(WEB, "  hosts: [web-1]", f"  hosts: [web-1]\n  rollout: {rollout}"))
    assert not result.ok
    matching = [p for p in result.problems if p.file == WEB and message in p.message]
    assert matching, result.problems
    assert (matching[0].line, matching[0].path) == (7, path), str(matching[0])


INVENTORY = [HostIdentity(f"web-{i}", {}) for i in (3, 1, 5, 2, 4)] + [HostIdentity("db-1", {})]


def test_plan_shows_waves_and_restarts() -> None:
    base = state()
    head = state(
        "  rollout: {max_unavailable: 2, canary: 1}\n",
        release=RELEASE.replace("'+A': '8'", "'+A': '16'"),
    )
    p = plan_revisions(base, head, INVENTORY, base_revision="a" * 40, head_revision="b" * 40)
    text = render_text(p)
    assert "rollout:\n  web: canary [web-1]; wave 1 [web-2, web-3]; wave 2 [web-4, web-5]" in text
    assert "~ rollout canary: 0 -> 1" in text
    assert "ConfigChanged (vm_args +A): needs a restart" in text
    doc = json.loads(render_json(p))
    assert doc["rollout"]["web"] == {
        "canaries": ["web-1"], "waves": [["web-2", "web-3"], ["web-4", "web-5"]],
        "max_unavailable": 2, "pause_after_canary": False, "changes": True,
    }  # fmt: skip
    assert "| `web` | canary [web-1]; wave 1 [web-2, web-3]" in render_markdown(p)
    assert json.loads(render_json(plan_revisions(base, head)))["rollout"] is None


def test_plan_without_changes_shows_no_waves() -> None:
    p = plan_revisions(state(), state(), INVENTORY)
    assert "rollout:" not in render_text(p) and not p.changed
