"""The outcome -> status mapping of `core.status`, table-driven: each release state word, when a
host counts as converged, and the host status and heartbeat JSON against docs/status.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from erel_sync.core import reasons
from erel_sync.core.desired import host_releases
from erel_sync.core.matching import GroupMatch, HostIdentity
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.reconcile import Action, ActionKind, Plan, Skip, SkipReason
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.core.snapshot import Refusal
from erel_sync.core.status import Heartbeat, HostStatus, converged, host_status, release_state
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml

STATE = validate_sources(
    [
        SourceFile("r.yaml", release_yaml(versions=("0.1.0", "0.2.0")).encode()),
        SourceFile("g.yaml", group_yaml(releases=(("hello", "0.2.0"),)).encode()),
    ]
).require()
DESIRED = host_releases(STATE, STATE.groups["web"])
WANT = DESIRED["hello"]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "status.md"


def running(version: str = "0.2.0", healthy: bool | None = True) -> ObservedRelease:
    return ObservedRelease(
        "hello", installed=True, running=True, reachable=True, current=version,
        permanent=version, healthy=healthy, reason=reasons.Healthy,
    )  # fmt: skip


def stopped(version: str = "0.2.0") -> ObservedRelease:
    return ObservedRelease("hello", installed=True, permanent=version, reason=reasons.Stopped)


NOT_INSTALLED = ObservedRelease("hello", installed=False)
NOT_OURS = ObservedRelease("hello", installed=True, running=True, current="0.2.0",
                           reason=reasons.NotManaged)  # fmt: skip

# (case, desired?, observed, skip reason, health) -> state word
STATES: list[tuple[str, bool, ObservedRelease | None, SkipReason | None, bool | None, str]] = [
    ("held wins over running", True, running(), SkipReason.HELD, True, "Held"),
    ("held while not desired", False, running(), SkipReason.HELD, None, "Held"),
    ("suspended group", True, stopped(), SkipReason.SUSPENDED, None, "Suspended"),
    ("failed revision", True, running("0.1.0"), SkipReason.FAILED_REVISION, True, "Failed"),
    ("not desired, not ours", False, NOT_OURS, SkipReason.UNASSIGNED, None, "Unmanaged"),
    ("not desired, ours", False, running(), None, True, "Orphaned"),
    ("not desired, only a hold left", False, None, None, None, "Orphaned"),
    ("unassigned host keeps what runs", False, running(), SkipReason.UNASSIGNED, True, "Orphaned"),
    ("not installed yet", True, NOT_INSTALLED, None, None, "Pending"),
    ("never observed", True, None, None, None, "Pending"),
    ("install backing off", True, NOT_INSTALLED, SkipReason.BACKOFF, None, "Backoff"),
    ("start backing off", True, stopped(), SkipReason.BACKOFF, None, "Backoff"),
    ("stopped, nothing planned", True, stopped(), None, None, "Stopped"),
    ("another version runs", True, running("0.1.0"), None, True, "Progressing"),
    ("upgrade waits for the rollout", True, running("0.1.0"), SkipReason.ROLLOUT, True, "Waiting"),
    ("health check fails", True, running(healthy=False), None, False, "Degraded"),
    ("healthy", True, running(), None, True, "Ready"),
    ("not probed", True, running(healthy=None), None, None, "Ready"),
]


@pytest.mark.parametrize(
    ("desired", "obs", "skip", "healthy", "state"),
    [c[1:] for c in STATES],
    ids=[c[0] for c in STATES],
)
def test_release_state(
    desired: bool,
    obs: ObservedRelease | None,
    skip: SkipReason | None,
    healthy: bool | None,
    state: str,
) -> None:
    skipped = {"hello": skip} if skip else {}
    want = WANT if desired else None
    assert release_state("hello", want, obs, skipped=skipped, healthy=healthy) == state


def test_every_documented_state_word_is_covered() -> None:
    text = DOCS.read_text()
    section = text[text.index("Release `state` values:") : text.index("Counter names:")]
    documented = set(re.findall(r"`([A-Z][a-z]+)`", section))
    assert documented == {case[-1] for case in STATES}


START = Action(ActionKind.START, "hello", "0.2.0", "0.2.0", WANT)
# (case, desired?, observed, plan left after the tick) -> converged
CONVERGED: list[tuple[str, bool, dict[str, ObservedRelease], Plan, bool]] = [
    ("runs at its version", True, {"hello": running()}, Plan(), True),
    ("unhealthy still converged", True, {"hello": running(healthy=False)}, Plan(), True),
    ("held, but running at its version", True, {"hello": running()},
     Plan((), (Skip("hello", SkipReason.HELD),)), True),
    ("no group", False, {"hello": running()}, Plan(), False),
    ("an action left", True, {"hello": stopped()}, Plan((START,)), False),
    ("backing off", True, {"hello": stopped()},
     Plan((), (Skip("hello", SkipReason.BACKOFF),)), False),
    ("failed revision", True, {"hello": running()},
     Plan((), (Skip("hello", SkipReason.FAILED_REVISION),)), False),
    ("stopped", True, {"hello": stopped()}, Plan(), False),
    ("another version", True, {"hello": running("0.1.0")}, Plan(), False),
    ("missing", True, {}, Plan(), False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("desired", "observed", "after", "expected"),
    [c[1:] for c in CONVERGED],
    ids=[c[0] for c in CONVERGED],
)
def test_converged(
    desired: bool, observed: dict[str, ObservedRelease], after: Plan, expected: bool
) -> None:
    assert converged(DESIRED if desired else None, observed, after) is expected


def documented_heartbeat() -> dict[str, Any]:
    """The first JSON example of docs/status.md (the heartbeat), its `//` comments dropped."""
    text = DOCS.read_text()
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    return dict(json.loads(re.sub(r"//.*$", "", block, flags=re.MULTILINE)))


AGENT_FIELDS = {
    "agent_version", "instance", "pid", "hostname", "cluster_host", "broker", "store_error",
    "snapshot_refused", "heartbeat_interval", "counters", "sent",
}  # fmt: skip


def web_1_status() -> HostStatus:
    """web-1 after a tick that left hello 0.2.0 running and a stopped, held `ticker`."""
    ticker = ObservedRelease("ticker", installed=True, permanent="0.1.0", reason=reasons.Stopped)
    return host_status(
        host=HostIdentity("web-1", {"role": "web"}),
        match=GroupMatch("web", "glob"),
        snapshot=None,
        applied={"seq": 7, "revision": "a" * 40},
        attempted={"seq": 7, "revision": "a" * 40},
        desired=DESIRED,
        observed={"hello": running(), "ticker": ticker},
        memory={"ticker": ReleaseStatus(last_reason=reasons.StopTimeout, last_error="slow")},
        plan_after=Plan((), (Skip("ticker", SkipReason.HELD),)),
        holds={"ticker": {"kind": "stop", "since": 1.0, "by": "local", "command": "c1"}},
        now="2026-11-24T17:00:00.000000Z",
    )


def test_host_status_json_is_the_documented_report() -> None:
    doc = web_1_status().to_json()
    documented = documented_heartbeat()
    assert set(doc) == set(documented) - AGENT_FIELDS
    assert [set(r) for r in doc["releases"]] == [set(documented["releases"][0])] * 2
    assert doc == {
        "format": 1,
        "kind": "heartbeat",
        "host_id": "web-1",
        "labels": {"role": "web"},
        "group": "web",
        "match": "glob",
        "candidates": [],
        "snapshot": None,
        "applied": {"seq": 7, "revision": "a" * 40},
        "attempted": {"seq": 7, "revision": "a" * 40},
        "converged": True,
        "releases": [
            {
                "name": "hello", "desired_version": "0.2.0", "version": "0.2.0",
                "installed": True, "managed": True, "running": True, "healthy": True,
                "state": "Ready", "hold": None, "reason": "", "last_error": "", "peers": None,
            },
            {
                "name": "ticker", "desired_version": None, "version": "0.1.0",
                "installed": True, "managed": True, "running": False, "healthy": None,
                "state": "Held",
                "hold": {"kind": "stop", "since": 1.0, "by": "local", "command": "c1"},
                "reason": reasons.StopTimeout, "last_error": "slow", "peers": None,
            },
        ],
        "time": "2026-11-24T17:00:00.000000Z",
        "rollout": None,
    }  # fmt: skip


def test_a_host_without_a_snapshot_reports_no_snapshot() -> None:
    status = host_status(
        host=HostIdentity("web-1"), match=None, snapshot=None, applied=None, attempted=None,
        desired=None, observed={}, memory={}, plan_after=Plan(), holds={}, now="t",
    )  # fmt: skip
    doc = status.to_json()
    assert (doc["group"], doc["match"], doc["converged"], doc["releases"]) == (
        None,
        "NoSnapshot",
        False,
        [],
    )


def heartbeat(status: HostStatus | None) -> Heartbeat:
    return Heartbeat(
        host_id="web-1", labels={"role": "web"}, status=status, agent_version="0.1.0",
        instance="3f9c0d2a1b7e", pid=12345, hostname="web-1.example.com", broker="connected",
        store_error=None,
        snapshot_refused=Refusal(reasons.AgentTooOld, "needs 9.0", 8, "b" * 40, "9.0", 3),
        heartbeat_interval=5.0, counters={"applied_snapshots": 7},
        sent="2026-11-24T17:00:01.000000Z",
    )  # fmt: skip


def test_heartbeat_json_is_the_documented_heartbeat() -> None:
    doc = heartbeat(web_1_status()).to_json()
    assert set(doc) == set(documented_heartbeat())
    assert {k: doc[k] for k in AGENT_FIELDS} == {
        "agent_version": "0.1.0",
        "instance": "3f9c0d2a1b7e",
        "pid": 12345,
        "hostname": "web-1.example.com",
        "cluster_host": "",
        "broker": "connected",
        "store_error": None,
        "snapshot_refused": {
            "reason": reasons.AgentTooOld, "message": "needs 9.0", "seq": 8,
            "revision": "b" * 40, "needs": "9.0",
        },
        "heartbeat_interval": 5.0,
        "counters": {"applied_snapshots": 7},
        "sent": "2026-11-24T17:00:01.000000Z",
    }  # fmt: skip
    assert {k: v for k, v in doc.items() if k not in AGENT_FIELDS} == web_1_status().to_json()


def test_a_heartbeat_before_the_first_tick_carries_only_who_sends_it() -> None:
    doc = heartbeat(None).to_json()
    assert set(doc) == {"format", "kind", "host_id", "labels"} | AGENT_FIELDS
    assert (doc["format"], doc["kind"], doc["host_id"], doc["labels"]) == (
        1,
        "heartbeat",
        "web-1",
        {"role": "web"},
    )
