"""`core.liveness`: who counts as alive, and the exit codes and stderr notes of `status` and
`members`, on canned entries and heartbeats with the clock passed in."""

from __future__ import annotations

from typing import Any

import pytest

from erel_sync.core import liveness
from erel_sync.core.clusterview import iso

NOW = 1_700_000_000.0


def entry(host: str, *, reachable: bool = True, seen: float = NOW, **extra: Any) -> dict[str, Any]:
    """A `status` entry (core.clusterview.host_entries) of a converged, healthy host."""
    doc: dict[str, Any] = {
        "host_id": host,
        "reachable": reachable,
        "group": "web",
        "match": "Matched",
        "duplicate": False,
        "instance": f"{host}-i1",
        "instances": [f"{host}-i1"],
        "last_seen": iso(seen),
        "converged": reachable,
        "releases": [{"name": "hello", "state": "Ready", "healthy": True}] if reachable else [],
        "error": None if reachable else "no answer",
        "snapshot_refused": None,
    }
    return {**doc, **extra}


FAILED = {"releases": [{"name": "hello", "state": "Failed", "reason": "StartFailed"}]}
MOVING = {"converged": False, "releases": [{"name": "hello", "state": "Installing"}]}


@pytest.mark.parametrize(
    ("entries", "code", "kinds"),
    [
        ([], 0, []),
        ([entry("web-1"), entry("web-2")], 0, []),
        ([entry("web-1", **FAILED)], 1, ["failed or degraded"]),
        ([entry("web-1", **MOVING)], 1, ["not converged yet"]),
        ([entry("web-1"), entry("web-2", reachable=False, seen=NOW - 90)], 3, ["did not answer"]),
        # Failed wins over Partial; Partial over Progressing; every kind is still named.
        (
            [entry("web-1", **FAILED), entry("web-2", reachable=False)],
            1,
            ["failed or degraded", "did not answer"],
        ),
        (
            [entry("web-1", **MOVING), entry("web-2", reachable=False)],
            3,
            ["not converged yet", "did not answer"],
        ),
        ([entry("web-1", error="disk full")], 1, ["failed or degraded"]),  # STORE-FAILED
    ],
)
def test_status_exit_code_and_notes(
    entries: list[dict[str, Any]], code: int, kinds: list[str]
) -> None:
    out = liveness.status_outcome(entries, NOW)
    assert out.code == code
    assert len(out.notes) == len(kinds)
    for note, kind in zip(out.notes, kinds, strict=True):
        assert kind in note


def test_the_notes_name_hosts_reasons_and_last_seen() -> None:
    out = liveness.status_outcome(
        [entry("web-1", **FAILED), entry("web-2", reachable=False, seen=NOW - 120)], NOW
    )
    assert out.notes == (
        "1 host(s) failed or degraded: web-1 (hello Failed: StartFailed)",
        "1 host(s) did not answer: web-2 (seen 2m ago)",
    )


def test_an_unknown_host_asked_for_by_name_is_partial() -> None:
    out = liveness.status_outcome([], NOW, host="nobody-1")
    assert out == liveness.Outcome(3, ("host nobody-1 did not answer (not seen within --since)",))
    assert liveness.status_outcome([entry("web-1")], NOW, host="web-1").code == 0


def test_unreachable_hosts_are_the_known_ones_that_did_not_answer() -> None:
    entries = [entry("a"), entry("b", reachable=False, seen=NOW - 5)]
    assert [e["host_id"] for e in liveness.unreachable(entries)] == ["b"]
    assert liveness.unreachable_note(entries, NOW) == "1 host(s) did not answer: b (seen 5s ago)"
    assert liveness.unreachable_note([entry("a")], NOW) is None


def test_members_exit_3_only_for_silent_hosts_and_name_duplicates() -> None:
    dup = {"host_id": "web-1", "duplicate": True}
    live = {"host_id": "web-2", "duplicate": False}
    out = liveness.members_outcome([dup, live], [entry("web-1"), entry("web-2")], NOW)
    assert out == liveness.Outcome(0, ("more than one agent claims host id(s): web-1",))
    silent = [entry("web-1"), entry("web-2", reachable=False, seen=NOW - 30)]
    out = liveness.members_outcome([live], silent, NOW)
    assert out.code == 3 and out.notes == ("1 host(s) did not answer: web-2 (seen 30s ago)",)


def beat(instance: str, received: float, interval: float | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"host_id": "web-1", "instance": instance, "received": received}
    if interval is not None:
        doc["heartbeat_interval"] = interval
    return doc


@pytest.mark.parametrize(
    ("beats", "first", "now", "alive"),
    [
        # Heard within 3 intervals (+1 s) of the default 5 s: alive; later: gone.
        ({"a": beat("a", NOW - 16)}, {"a": NOW - 60}, NOW, ["a"]),
        ({"a": beat("a", NOW - 16.5)}, {"a": NOW - 60}, NOW, []),
        # A heartbeat's own interval counts instead of the default.
        ({"a": beat("a", NOW - 40, interval=15)}, {"a": NOW - 60}, NOW, ["a"]),
        # Two instances beating at once: both count (a duplicate host id).
        (
            {"a": beat("a", NOW - 1), "b": beat("b", NOW - 2)},
            {"a": NOW - 60, "b": NOW - 50},
            NOW,
            ["a", "b"],
        ),
        # `a` missed a beat and fell silent before `b` first spoke: restarted, not duplicated.
        (
            {"a": beat("a", NOW - 11), "b": beat("b", NOW - 1)},
            {"a": NOW - 60, "b": NOW - 8},
            NOW,
            ["b"],
        ),
        # `a` silent as long, but `b` spoke before `a` stopped: still a duplicate.
        (
            {"a": beat("a", NOW - 11), "b": beat("b", NOW - 1)},
            {"a": NOW - 60, "b": NOW - 30},
            NOW,
            ["a", "b"],
        ),
    ],
)
def test_live_heartbeats(
    beats: dict[str, dict[str, Any]], first: dict[str, float], now: float, alive: list[str]
) -> None:
    assert [d["instance"] for d in liveness.live_heartbeats(beats, first, now)] == alive


def test_watch_replies_from_heartbeats_and_the_first_answers() -> None:
    hb = beat("web-1-i1", NOW - 2)
    replies = liveness.watch_replies(
        {"web-1": {"web-1-i1": hb}}, {"web-1": {"web-1-i1": 0}}, [], NOW
    )
    assert replies == {
        "web-1": [
            {
                "ok": True,
                "host_id": "web-1",
                "instance": "web-1-i1",
                "received": NOW - 2,
                "result": hb,
            }
        ]
    }
    # An instance that answered the first query and has not sent a heartbeat yet: its answer
    # stands for as long as a heartbeat would (3 x 5 s + 1 s), then the host goes silent.
    fresh, old = entry("web-2", seen=NOW - 10), entry("web-3", seen=NOW - 17)
    silent = entry("web-4", reachable=False, seen=NOW - 1)
    replies = liveness.watch_replies({}, {}, [fresh, old, silent], NOW)
    assert list(replies) == ["web-2"]
    (reply,) = replies["web-2"]
    assert reply["received"] == pytest.approx(NOW - 10)
    assert reply["result"]["instance"] == "web-2-i1" and reply["result"]["host_id"] == "web-2"
    # Once that instance heartbeats, the heartbeat replaces the old answer.
    hb2 = {**beat("web-2-i1", NOW - 1), "host_id": "web-2"}
    replies = liveness.watch_replies(
        {"web-2": {"web-2-i1": hb2}}, {"web-2": {"web-2-i1": NOW - 1}}, [fresh], NOW
    )
    assert [r["result"] for r in replies["web-2"]] == [hb2]
