"""A host's history (core.history): a seq is recorded applied the first time the host is
converged on it, failed the first time a tick leaves a release failed at it; a failure then
fixed gets both entries; nothing else is news; the list is bounded and survives a round trip."""

from __future__ import annotations

from typing import Any

from erel_sync.core import history
from erel_sync.core.history import Entry, after_tick


def report(
    seq: int, *, converged: bool, applied: int | None = None, error: str = ""
) -> dict[str, Any]:
    release = {"name": "hello", "state": "Failed" if error else "Ready", "last_error": error}
    return {
        "snapshot": {"seq": seq, "revision": f"rev{seq}"},
        "applied": {"seq": applied if applied is not None else (seq if converged else seq - 1)},
        "converged": converged,
        "releases": [release],
    }


def test_applied_once_then_nothing_new() -> None:
    h = after_tick((), report(1, converged=True), now=110.0, arrived=100.0)
    assert h == (Entry(1, "rev1", 110.0, "applied", 10.0),)
    assert after_tick(h, report(1, converged=True), now=200.0, arrived=100.0) == h


def test_mid_change_is_not_news() -> None:
    assert after_tick((), report(2, converged=False), now=1.0, arrived=0.0) == ()


def test_a_failure_then_its_fix_are_both_recorded() -> None:
    h = after_tick(
        (), report(3, converged=False, error="UpgradeFailed: health"), now=5.0, arrived=1.0
    )
    assert [(e.seq, e.result, e.reason) for e in h] == [
        (3, "failed", "hello: UpgradeFailed: health")
    ]
    assert after_tick(h, report(3, converged=False, error="again"), now=6.0, arrived=1.0) == h
    h = after_tick(h, report(3, converged=True), now=9.0, arrived=1.0)
    assert [(e.seq, e.result) for e in h] == [(3, "failed"), (3, "applied")]
    assert h[-1].duration == 8.0


def test_unknown_arrival_and_no_snapshot() -> None:
    (e,) = after_tick((), report(4, converged=True), now=5.0, arrived=None)
    assert e.duration == 0.0
    assert after_tick((), {"converged": True}, now=1.0, arrived=None) == ()


def test_bounded_and_round_trips() -> None:
    h: tuple[Entry, ...] = ()
    for seq in range(1, 30):
        h = after_tick(h, report(seq, converged=True), now=float(seq), arrived=0.0)
    assert len(h) == history.LIMIT and h[-1].seq == 29 and h[0].seq == 29 - history.LIMIT + 1
    assert history.load([e.to_json() for e in h]) == h
    assert history.load([{"seq": "x"}, "junk", h[0].to_json()]) == (h[0],)
    assert history.load(None) == ()
