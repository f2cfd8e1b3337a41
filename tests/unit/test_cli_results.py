"""Honest results, pure parts (issue 10): `status`'s exit verdict and ERROR column, "trying" only
for a newer revision, who a revision concerns in `wait`, where a sha stands at the publisher,
host-level problems from a canned heartbeat, and the `dev` table and title. Table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from erel_sync.core import clusterview as view
from erel_sync.core import conditions, revisions
from erel_sync.dev.progress import Progress, host_row

NOW = 1_800_000_000.0
SHA = "abcdef0123456789abcdef0123456789abcdef01"
LATER = "1234567890abcdef1234567890abcdef12345678"
OLD = "0000000aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


def rel(name: str = "hello", state: str = "Ready", **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "desired_version": "0.2.0",
        "version": "0.2.0",
        "state": state,
        "healthy": state not in ("Pending", "Backoff", "Stopped"),
        "hold": None,
        "reason": "",
        "last_error": "",
        **kw,
    }


def at(seq: int, rev: str) -> dict[str, Any]:
    return {"seq": seq, "revision": rev}


def answer(host: str, *, group: str | None = "web", **hb: Any) -> dict[str, Any]:
    result = {
        "host_id": host,
        "group": group,
        "match": "glob" if group else "Unassigned",
        "labels": {},
        "instance": "i1",
        "agent_version": "0.1.0",
        "snapshot": at(5, SHA),
        "applied": at(5, SHA),
        "attempted": at(5, SHA),
        "releases": [rel()],
        "converged": True,
        **hb,
    }
    return {"ok": True, "host_id": host, "instance": "i1", "result": result, "received": NOW}


def entries(*answers: dict[str, Any], silent: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    known = view.known_hosts(
        [
            {
                "kind": "presence",
                "host_id": h,
                "instance": "i0",
                "group": "web",
                "sent": view.iso(NOW),
            }
            for h in silent
        ]
    )
    return view.host_entries(known, {a["host_id"]: [a] for a in answers}, now=NOW)


ARTIFACT_ERROR = rel(
    state="Backoff",
    version=None,
    reason="ArtifactUnavailable",
    last_error="install hello 0.2.0: ArtifactUnavailable: GET file:///x/hello.tar.gz: "
    "No such file or directory",
)
REFUSED = {
    "reason": "AgentTooOld",
    "message": "snapshot format 2 needs a newer agent",
    "seq": 6,
    "revision": LATER,
    "needs": "0.2.0",
}


@pytest.mark.parametrize(
    ("hosts", "silent", "state", "named"),
    [
        ([answer("a"), answer("b")], (), "Ok", ""),
        ([answer("a", releases=[rel(state="Failed")], converged=False)], (), "Failed", "a"),
        ([answer("a", releases=[rel(state="Degraded", healthy=False)])], (), "Failed", "a"),
        ([answer("a", releases=[ARTIFACT_ERROR], converged=False)], (), "Failed", "a"),
        ([answer("a", store_error="No space left on device")], (), "Failed", "a"),
        ([answer("a", snapshot_refused=REFUSED)], (), "Failed", "a"),
        ([answer("a", duplicate=True)], (), "Ok", ""),  # entries recompute duplicates
        (
            [answer("a", releases=[rel(state="Progressing")], converged=False)],
            (),
            "Progressing",
            "a",
        ),
        (
            [answer("a", group=None, match="NoSnapshot", releases=[], converged=False)],
            (),
            "Progressing",
            "a",
        ),
        ([answer("a", group=None, releases=[], converged=False)], (), "Ok", ""),  # unassigned
        ([answer("a", releases=[rel(state="Held", healthy=None)], converged=False)], (), "Ok", ""),
        ([answer("a")], ("z",), "Partial", "z"),
        # A known failure outranks hosts that did not answer.
        ([answer("a", releases=[rel(state="Failed")], converged=False)], ("z",), "Failed", "a"),
    ],
)
def test_status_verdict_says_the_state(
    hosts: list[dict[str, Any]], silent: tuple[str, ...], state: str, named: str
) -> None:
    es = entries(*hosts, silent=silent)
    v = conditions.status_verdict(
        (
            e["host_id"],
            conditions.host_condition(e, store_error=e["error"] if e["reachable"] else None),
        )
        for e in es
    )
    assert v.state == state
    if named:
        assert named in {**v.failed, **v.progressing, **dict.fromkeys(v.unreachable)}


def test_status_table_shows_the_last_error_without_wide() -> None:
    es = entries(answer("a", releases=[ARTIFACT_ERROR], converged=False))
    headers = view.STATUS_HEADERS
    row = dict(zip(headers, view.status_rows(es, now=NOW, wide=False)[0], strict=True))
    assert row["STATE"] == "Backoff"
    assert row["ERROR"].startswith("ArtifactUnavailable: install hello 0.2.0: GET")
    assert len(row["ERROR"]) <= conditions.ERROR_WIDTH and row["ERROR"].endswith("…")
    wide = dict(
        zip(view.STATUS_WIDE_HEADERS, view.status_rows(es, now=NOW, wide=True)[0], strict=True)
    )
    assert wide["ERROR"].endswith("No such file or directory")


def test_a_refused_snapshot_is_flagged_from_a_canned_heartbeat() -> None:
    es = entries(answer("a", snapshot_refused=REFUSED))
    assert es[0]["snapshot_refused"] == REFUSED
    row = dict(zip(view.STATUS_HEADERS, view.status_rows(es, now=NOW, wide=False)[0], strict=True))
    assert row["STATE"] == "Ready AGENT-TOO-OLD needs >= 0.2.0"
    assert "AgentTooOld: snapshot format 2 needs a newer agent" in row["ERROR"]
    other = entries(answer("a", snapshot_refused={"reason": "BadSignature", "message": "x"}))
    assert view.status_rows(other, now=NOW, wide=False)[0][5] == "Ready BAD-SIGNATURE"
    # The same heartbeat in the dev table.
    beat = dict(answer("a", snapshot_refused=REFUSED)["result"])
    assert "AGENT-TOO-OLD needs >= 0.2.0" in host_row(beat)[-1]


@pytest.mark.parametrize(
    ("applied", "attempted", "shown"),
    [
        (at(5, SHA), at(5, SHA), "abcdef0"),
        (at(5, SHA), at(4, OLD), "abcdef0"),  # applied later without acting: not "trying"
        (at(4, OLD), at(5, SHA), "0000000 (trying abcdef0)"),
        (None, at(5, SHA), "- (trying abcdef0)"),
        (at(5, SHA), None, "abcdef0"),
    ],
)
def test_trying_only_a_newer_revision(
    applied: dict[str, Any] | None, attempted: dict[str, Any] | None, shown: str
) -> None:
    assert view.revision_cell({"applied": applied, "attempted": attempted}) == shown


def verdict(
    *hosts: dict[str, Any], group: str | None = "web", seq: int | None = 5, sha: str = SHA[:7]
) -> view.WaitVerdict:
    return view.wait_verdict(entries(*hosts), sha, group=group, target_seq=seq)


OLD_SNAP = {"snapshot": at(4, OLD), "applied": at(4, OLD), "attempted": at(4, OLD)}


@pytest.mark.parametrize(
    ("hosts", "group", "seq", "state", "pending"),
    [
        ([answer("a")], "web", 5, "Converged", set()),
        # Holds no snapshot yet: the revision may concern it.
        (
            [
                answer("a"),
                answer(
                    "n",
                    group=None,
                    match="NoSnapshot",
                    snapshot=None,
                    applied=None,
                    attempted=None,
                    releases=[],
                    converged=False,
                ),
            ],
            None,
            5,
            "Pending",
            {"n"},
        ),
        # Unassigned under its old snapshot; the awaited one may put it in a group.
        (
            [answer("a"), answer("s", group=None, **OLD_SNAP, releases=[])],
            "web",
            5,
            "Pending",
            {"s"},
        ),
        # It holds the awaited snapshot and the revision put it in web: it must converge.
        (
            [
                answer("a"),
                answer(
                    "s",
                    releases=[rel(state="Pending", version=None)],
                    converged=False,
                    applied=at(4, OLD),
                ),
            ],
            "web",
            5,
            "Pending",
            {"s"},
        ),
        # Under the awaited snapshot it is unassigned, or in another group: not concerned.
        ([answer("a"), answer("s", group=None, releases=[])], None, 5, "Converged", set()),
        ([answer("a"), answer("b", group="batch")], "web", 5, "Converged", set()),
        # A later snapshot that contains the sha counts (seq 6 >= the sha's seq 5).
        (
            [answer("a", snapshot=at(6, LATER), applied=at(6, LATER), attempted=at(6, LATER))],
            "web",
            5,
            "Converged",
            set(),
        ),
        # Without the publisher's record only the revision itself is recognised.
        (
            [answer("a", snapshot=at(6, LATER), applied=at(6, LATER), attempted=at(6, LATER))],
            "web",
            None,
            "Pending",
            {"a"},
        ),
        # Refused the snapshot that carries it (agent too old): fails the wait.
        ([answer("a", snapshot_refused=REFUSED, **OLD_SNAP)], "web", 5, "Failed", set()),
    ],
)
def test_wait_counts_every_host_the_revision_concerns(
    hosts: list[dict[str, Any]], group: str | None, seq: int | None, state: str, pending: set[str]
) -> None:
    v = verdict(*hosts, group=group, seq=seq)
    assert v.state == state, v
    assert set(v.pending) == pending
    if state == "Failed":
        assert "AgentTooOld" in v.failed["a"] and "0.2.0" in v.failed["a"]


PUB_A = {"kind": "published", "seq": 5, "revision": LATER, "commits": [LATER, SHA]}
PUB_B = {"kind": "published", "seq": 9, "revision": "f" * 40, "commits": ["f" * 40, SHA]}
REJ = {
    "kind": "rejected",
    "reason": "Invalid",
    "revision": SHA,
    "published_revision": OLD,
    "problems": [
        {"file": "groups/web.yaml", "line": 3, "col": 7, "path": "$.spec", "message": "bad"},
        {"file": "<git>", "line": 0, "col": 0, "path": "", "message": "whole"},
    ],
}


@pytest.mark.parametrize(
    ("records", "sha", "state", "seq"),
    [
        ([], SHA, "Unknown", None),
        ([PUB_A], SHA[:7], "Published", 5),  # brought by a later revision
        ([PUB_A], LATER.upper()[:10], "Published", 5),
        ([PUB_B, PUB_A], SHA, "Published", 5),  # the first seq that carries it
        ([REJ], SHA[:8], "Rejected", None),
        ([REJ, PUB_A], SHA, "Published", 5),  # rejected, then published inside a fix
        ([{"kind": "published", "seq": "x", "revision": SHA}], SHA, "Unknown", None),
    ],
)
def test_locate_a_revision_in_the_publishers_records(
    records: list[dict[str, Any]], sha: str, state: str, seq: int | None
) -> None:
    found = revisions.locate(records, sha)
    assert (found.state, found.seq) == (state, seq)


def test_rejection_problems_read_like_validate() -> None:
    assert revisions.problem_lines(REJ) == [
        "groups/web.yaml:3:7: $.spec: bad",
        "<git>: whole",
    ]
    many = {**REJ, "problems_total": 250}
    assert revisions.problem_lines(many, limit=1)[-1] == "… and 249 more"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (SHA, True),
        (SHA[:7], True),
        ("ABCDEF0", True),
        (SHA[:6], False),
        ("not-a-sha", False),
        (SHA + "0", False),
    ],
)
def test_shas_need_seven_hex_digits(text: str, ok: bool) -> None:
    assert revisions.is_sha(text) is ok


def beat(host: str, seq: int, *, converged: bool = True, **kw: Any) -> dict[str, Any]:
    return {
        "host_id": host,
        "snapshot": at(seq, SHA),
        "applied": at(seq, SHA) if converged else at(seq - 1, OLD),
        "converged": converged,
        "releases": [rel()],
        **kw,
    }


def test_dev_title_stops_saying_converged_when_a_new_rollout_starts() -> None:
    hosts = ["a", "b"]
    p = Progress(started=0.0)
    assert p.update({"a": beat("a", 1)}, hosts, 1.0).startswith("converging… 1s")
    assert (
        p.update({"a": beat("a", 1), "b": beat("b", 1)}, hosts, 4.0) == "converged in 4.0s (seq 1)"
    )
    # The publisher announces seq 2; the heartbeats still say seq 1, converged.
    p.published(2, 10.0)
    assert p.update({"a": beat("a", 1), "b": beat("b", 1)}, hosts, 11.0) == "converging… 1s"
    assert (
        p.update({"a": beat("a", 2), "b": beat("b", 2)}, hosts, 13.0) == "converged in 3.0s (seq 2)"
    )
    # A host seen holding a newer snapshot (its event was missed) starts a new count as well.
    assert (
        p.update({"a": beat("a", 3, converged=False), "b": beat("b", 2)}, hosts, 20.0)
        == "converging… 0s"
    )
    # A host falling out of convergence without a new snapshot: not converged either.
    q = Progress(started=0.0)
    q.update({"a": beat("a", 1)}, ["a"], 2.0)
    assert q.update({"a": beat("a", 1, converged=False)}, ["a"], 5.0).startswith("converging")
    # A failing release says so instead of "converging".
    failed = beat("a", 1, converged=False, releases=[ARTIFACT_ERROR])
    assert q.update({"a": failed}, ["a"], 9.0) == "not converged, failing on a — 4s"


def test_dev_says_converged_for_a_clustered_release_once_its_cluster_formed() -> None:
    hosts = ["a", "b", "c"]

    def peers(host: str, expected: list[str], connected: list[str]) -> dict[str, Any]:
        row = {**rel(), "peers": {"expected": expected, "connected": connected, "missing": []}}
        return beat(host, 1, group="web", releases=[row])

    nodes = {h: f"hello@{h}" for h in hosts}
    others = {h: sorted(n for o, n in nodes.items() if o != h) for h in hosts}
    p = Progress(started=0.0)
    # Before the agents hear the group's members, each node expects no peer: not formed.
    alone = {h: peers(h, [], []) for h in hosts}
    assert p.update(alone, hosts, 1.0).startswith("converging")
    half = {h: peers(h, others[h], others[h][:1]) for h in hosts}
    assert p.update(half, hosts, 2.0).startswith("converging")
    assert "(1/2 peers)" in host_row(half["a"])[5]
    formed = {h: peers(h, others[h], others[h]) for h in hosts}
    assert p.update(formed, hosts, 3.0) == "converged in 3.0s (seq 1)"
    assert "hello 0.2.0 Ready (2/2 peers)" in host_row(formed["a"])[5]


def test_dev_row_shows_the_last_error() -> None:
    row = host_row(
        beat("a", 1, converged=False, releases=[ARTIFACT_ERROR], store_error="disk full")
    )
    assert row[-1].startswith("hello: ArtifactUnavailable: install hello 0.2.0")
    assert len(row[-1]) <= 80
    row = host_row(beat("a", 1, releases=[], store_error="disk full"))
    assert row[-1] == "STORE-FAILED: disk full"


def test_status_json_with_host_level_problems_follows_its_schema() -> None:
    import json
    from pathlib import Path

    import jsonschema

    schema_file = Path(__file__).resolve().parents[2] / "schemas" / "cli" / "status.schema.json"
    es = entries(
        answer("a", snapshot_refused=REFUSED, store_error="disk full"),
        answer("b", group=None, match="Ambiguous", candidates=["web", "edge"]),
        silent=("z",),
    )
    jsonschema.validate(es, json.loads(schema_file.read_text()))
    assert [e["candidates"] for e in es] == [[], ["web", "edge"], []]
