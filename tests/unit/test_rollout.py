"""The pure rollout decisions (`core.rollout`), table-driven: counts, waves, and `step` over
group size x max_unavailable x canary x host states, with the second-pass law: stepping again
with the result as `previous` and the same reports grants nothing new, and once everyone is
done nobody may go. Plus the signed rollout document and the agent's two questions."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import replace

import pytest

from erel_sync.core.rollout import (
    GroupRollout,
    HostReport,
    HostState,
    Phase,
    ProgressDeadlineExceeded,
    RolloutDoc,
    RolloutRejected,
    install_version,
    may_disturb,
    resolve_count,
    sign_rollout,
    step,
    verify_rollout,
    waves,
)
from erel_sync.model.specs import RolloutSpec
from tests.unit.test_snapshot import KEY, TRUSTED

W, C, OK, F = HostState.WAITING, HostState.CHANGING, HostState.CONVERGED, HostState.FAILED
SEQ = 7
VERSIONS = {"hello": "0.2.0"}


@pytest.mark.parametrize(
    ("value", "hosts", "round_up", "expected"),
    [
        (1, 10, False, 1),
        (3, 2, False, 3),  # more than the group: everyone may go
        ("25%", 10, False, 2),  # floor
        ("25%", 10, True, 3),  # ceil
        ("10%", 5, False, 1),  # floor 0 -> at least 1
        ("10%", 5, True, 1),
        ("0%", 5, True, 0),  # no canary
        (0, 5, True, 0),
        ("100%", 7, False, 7),
        ("50%", 0, False, 1),  # an empty group still has a limit of 1
        ("33%", 3, True, 1),
    ],
)
def test_resolve_count(value: int | str, hosts: int, round_up: bool, expected: int) -> None:
    assert resolve_count(value, hosts, round_up=round_up) == expected


H5 = ["web-5", "web-3", "web-1", "web-4", "web-2"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RolloutSpec(), [("web-1",), ("web-2",), ("web-3",), ("web-4",), ("web-5",)]),
        (RolloutSpec(max_unavailable=2), [("web-1", "web-2"), ("web-3", "web-4"), ("web-5",)]),
        (
            RolloutSpec(max_unavailable=2, canary=1),
            [("web-1",), ("web-2", "web-3"), ("web-4", "web-5")],
        ),
        (
            RolloutSpec(max_unavailable="40%", canary="20%"),
            [("web-1",), ("web-2", "web-3"), ("web-4", "web-5")],
        ),
        (
            RolloutSpec(max_unavailable="100%", canary=2),
            [("web-1", "web-2"), ("web-3", "web-4", "web-5")],
        ),
        (RolloutSpec(canary=9), [("web-1", "web-2", "web-3", "web-4", "web-5")]),
    ],
)
def test_waves(policy: RolloutSpec, expected: list[tuple[str, ...]]) -> None:
    assert waves(H5, policy) == expected
    assert waves([], policy) == []


def reports(
    states: Mapping[str, HostState], seq: int = SEQ, grants: Mapping[str, str] | None = None
) -> dict[str, HostReport]:
    grants = grants or {}
    return {h: HostReport(h, "web", seq, s, grant=grants.get(h)) for h, s in states.items()}


def run(
    previous: GroupRollout | None,
    states: Mapping[str, HostState] | dict[str, HostReport],
    policy: RolloutSpec,
    *,
    now: float = 100.0,
    seq: int = SEQ,
    promote: bool = False,
    retry: bool = False,
) -> GroupRollout:
    hosts = {
        h: (s if isinstance(s, HostReport) else HostReport(h, "web", seq, s))
        for h, s in states.items()
    }
    result = step(
        previous, group="web", seq=seq, revision="r7", policy=policy, versions=VERSIONS,
        hosts=hosts, now=now, promote=promote, retry=retry,
    )  # fmt: skip
    again = step(
        result, group="web", seq=seq, revision="r7", policy=policy, versions=VERSIONS,
        hosts=hosts, now=now,
    )  # fmt: skip
    assert again == replace(result, promoted=again.promoted), "second pass changed the result"
    assert len(result.in_flight) <= result.max_unavailable or not (
        set(result.granted) - set(previous.granted if previous else {})
    ), "granted past the limit"
    return result


def hosts_of(n: int, state: HostState = W, **overrides: HostState) -> dict[str, HostState]:
    states = {f"web-{i}": state for i in range(1, n + 1)}
    states.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return states


# (case, hosts, max_unavailable, canary, previously granted, states) -> who is granted now
GRANTS: list[tuple[str, int, int | str, int | str, tuple[str, ...], dict[str, HostState], set[str], Phase]] = [
    ("one at a time", 3, 1, 0, (), hosts_of(3), {"web-1"}, Phase.PROGRESSING),
    ("two at a time", 5, 2, 0, (), hosts_of(5), {"web-1", "web-2"}, Phase.PROGRESSING),
    ("percentage floor", 10, "25%", 0, (), hosts_of(10), {"web-1", "web-10"}, Phase.PROGRESSING),
    ("canary alone", 5, 3, 1, (), hosts_of(5), {"web-1"}, Phase.CANARY),
    ("two canaries, limit 1", 5, 1, 2, (), hosts_of(5), {"web-1"}, Phase.CANARY),
    ("canaries limited too", 6, 2, "50%", (), hosts_of(6), {"web-1", "web-2"}, Phase.CANARY),
    ("canary done: the rest", 4, 2, 1, ("web-1",), hosts_of(4, web_1=OK), {"web-2", "web-3"}, Phase.PROGRESSING),
    ("canary changing: nobody else", 4, 2, 1, ("web-1",), hosts_of(4, web_1=C), {"web-1"}, Phase.CANARY),
    ("a place frees up", 4, 2, 0, ("web-1", "web-2"), hosts_of(4, web_1=OK, web_2=C), {"web-2", "web-3"}, Phase.PROGRESSING),
    ("converged hosts are skipped", 4, 1, 0, (), hosts_of(4, web_1=OK, web_2=OK), {"web-3"}, Phase.PROGRESSING),
    ("nothing to do is done", 3, 1, 1, (), hosts_of(3, OK), set(), Phase.COMPLETE),
    ("converged canary needs no turn", 3, 1, 1, (), hosts_of(3, web_1=OK), {"web-2"}, Phase.PROGRESSING),
    ("not yet at this seq: no grant", 3, 3, 0, (), {"web-1": W}, {"web-1"}, Phase.PROGRESSING),
    ("changing without a grant holds a place", 3, 1, 0, (), hosts_of(3, web_2=C), set(), Phase.PROGRESSING),
    ("a failure halts", 4, 2, 0, ("web-1",), hosts_of(4, web_1=F), set(), Phase.HALTED),
    ("a failed canary halts", 4, 2, 1, ("web-1",), hosts_of(4, web_1=F), set(), Phase.HALTED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("size", "limit", "canary", "before", "states", "granted", "phase"),
    [c[1:] for c in GRANTS],
    ids=[c[0] for c in GRANTS],
)
def test_who_may_go(  # noqa: PLR0917
    size: int,
    limit: int | str,
    canary: int | str,
    before: tuple[str, ...],
    states: dict[str, HostState],
    granted: set[str],
    phase: Phase,
) -> None:
    policy = RolloutSpec(max_unavailable=limit, canary=canary)
    all_waiting = {h: W for h in hosts_of(size)}
    previous = None
    if before:
        previous = run(
            None, {h: W for h in before}, replace(policy, max_unavailable=len(before), canary=0)
        )
        previous = replace(
            previous,
            canaries=tuple(sorted(all_waiting))[: resolve_count(canary, size, round_up=True)],
        )
    result = run(previous, states, policy)
    assert set(result.granted) == granted
    assert result.phase is phase
    assert (
        len(result.in_flight | {h for h, s in states.items() if s is C}) <= result.max_unavailable
    )


def test_a_whole_rollout_and_the_law() -> None:
    """Hosts do what they are granted; once everyone is done nobody may go, and `stable` is set."""
    policy = RolloutSpec(max_unavailable=2, canary=1)
    states = hosts_of(6)
    g = None
    seen: list[set[str]] = []
    for t in range(20):
        g = run(g, states, policy, now=float(t))
        seen.append(set(g.in_flight))
        for host in g.granted:
            if g.granted[host].seq == SEQ:
                states[host] = OK  # each granted host converges before the next step
        if g.phase is Phase.COMPLETE:
            break
    assert g is not None and g.phase is Phase.COMPLETE and g.done == frozenset(states)
    assert seen[0] == {"web-1"} and all(len(s) <= 2 for s in seen)
    assert g.granted == {} and g.waiting == () and dict(g.stable) == VERSIONS
    assert g.finished is not None
    later = run(g, states, policy, now=500.0)
    assert later.granted == {} and later.finished == g.finished
    for host in states:
        assert not may_disturb(RolloutDoc(1, "", {"web": later}), "web", host, SEQ)


def test_pause_after_canary_and_promote() -> None:
    policy = RolloutSpec(max_unavailable=2, canary=1, pause_after_canary=True)
    g = run(None, hosts_of(4), policy)
    assert g.phase is Phase.CANARY and set(g.granted) == {"web-1"}
    g = run(g, hosts_of(4, web_1=OK), policy)
    assert g.phase is Phase.PAUSED and g.granted == {}
    g = run(g, hosts_of(4, web_1=OK), policy, promote=True)
    assert g.phase is Phase.PROGRESSING and g.promoted and set(g.granted) == {"web-2", "web-3"}
    g = run(g, hosts_of(4, web_1=OK), policy)
    assert g.promoted  # stays promoted for this seq
    g2 = run(g, hosts_of(4, web_1=OK), policy, seq=SEQ + 1)
    assert not g2.promoted  # a new seq starts a new rollout


def test_failure_halts_then_retry_resumes() -> None:
    policy = RolloutSpec(max_unavailable=2)
    g = run(None, hosts_of(4), policy)
    assert set(g.granted) == {"web-1", "web-2"}
    ids = {h: gr.id for h, gr in g.granted.items()}
    failing = reports(hosts_of(4, web_1=F, web_2=C), grants=ids)
    failing["web-1"] = replace(failing["web-1"], reason="RolledBack: health")
    g = run(g, failing, policy)
    assert g.phase is Phase.HALTED and dict(g.failed) == {"web-1": "RolledBack: health"}
    assert set(g.granted) == {"web-2"}  # already changing: it finishes
    assert not may_disturb(RolloutDoc(1, "", {"web": g}), "web", "web-2", SEQ)
    assert set(g.waiting) == {"web-3", "web-4"}
    g = run(g, failing, policy, retry=True)
    assert g.retry == 1 and g.failed == {}  # the old failure report no longer counts
    assert g.phase is Phase.PROGRESSING and set(g.granted) == {"web-2", "web-3"}
    resumed = reports(hosts_of(4, web_2=C, web_3=OK), grants=ids)  # web-1 forgot its failure
    g = run(g, resumed, policy)
    assert set(g.granted) == {"web-1", "web-2"} and g.granted["web-1"].id == "7:web-1:1"
    again = reports(hosts_of(4, web_1=F, web_2=C), grants={"web-1": "7:web-1:1"})
    assert run(g, again, policy).phase is Phase.HALTED  # a failure under the new grant counts


def test_halt_takes_back_places_not_yet_used() -> None:
    g = run(None, hosts_of(3), RolloutSpec(max_unavailable=2))
    g = run(g, hosts_of(3, web_1=F), RolloutSpec(max_unavailable=2))
    assert g.phase is Phase.HALTED and g.granted == {}
    assert g.waiting == ("web-2", "web-3")


def test_progress_deadline_fails_the_host_and_frees_its_place() -> None:
    policy = RolloutSpec(max_unavailable=1, progress_deadline=60.0)
    g = run(None, hosts_of(3), policy, now=0.0)
    assert set(g.granted) == {"web-1"}
    g = run(g, hosts_of(3, web_1=C), policy, now=59.0)
    assert set(g.granted) == {"web-1"} and g.phase is Phase.PROGRESSING
    gone = hosts_of(3)
    del gone["web-1"]  # its agent died: it no longer reports, its grant stays until the deadline
    g = run(g, gone, policy, now=59.5)
    assert set(g.granted) == {"web-1"} and g.in_flight == {"web-1"}
    g = run(g, gone, policy, now=60.0)
    assert g.phase is Phase.HALTED and g.granted == {} and g.in_flight == frozenset()
    assert g.failed["web-1"].startswith(ProgressDeadlineExceeded)


def test_new_seq_keeps_old_places_in_flight() -> None:
    """Two revisions in flight never exceed the limit: the old seq's grants count until their
    hosts move on."""
    policy = RolloutSpec(max_unavailable=2)
    g = run(None, hosts_of(4), policy)
    assert set(g.granted) == {"web-1", "web-2"}
    mixed = reports(hosts_of(4), seq=SEQ + 1)
    mixed["web-1"] = HostReport("web-1", "web", SEQ, C, grant=g.granted["web-1"].id)
    mixed["web-2"] = HostReport("web-2", "web", SEQ + 1, C)  # old grant, already on the new seq
    g8 = run(g, mixed, policy, seq=SEQ + 1)
    assert g8.seq == SEQ + 1 and set(g8.in_flight) == {"web-1", "web-2"}
    assert all(gr.seq == SEQ for gr in g8.granted.values())
    assert not may_disturb(RolloutDoc(1, "", {"web": g8}), "web", "web-3", SEQ + 1)
    mixed["web-1"] = HostReport("web-1", "web", SEQ + 1, W)  # moved on: its old place is free
    g8 = run(g8, mixed, policy, seq=SEQ + 1)
    assert g8.granted["web-1"].seq == SEQ + 1 and g8.granted["web-2"].seq == SEQ
    assert len(g8.in_flight) == 2
    mixed["web-2"] = HostReport("web-2", "web", SEQ + 1, W)
    g8 = run(g8, mixed, policy, seq=SEQ + 1)
    assert {h: gr.seq for h, gr in g8.granted.items()} == {"web-1": 8, "web-2": 8}


def test_old_place_expires_after_the_deadline() -> None:
    policy = RolloutSpec(max_unavailable=1, progress_deadline=10.0)
    g = run(None, hosts_of(2), policy, now=0.0)
    silent = reports(hosts_of(2), seq=SEQ + 1)
    del silent["web-1"]
    g8 = run(g, silent, policy, seq=SEQ + 1, now=5.0)
    assert g8.in_flight == {"web-1"} and g8.phase is Phase.PROGRESSING
    g8 = run(g8, silent, policy, seq=SEQ + 1, now=10.0)
    assert set(g8.granted) == {"web-2"} and g8.failed == {}  # not a failure of the new seq


def test_stable_is_what_the_last_complete_rollout_ran() -> None:
    policy = RolloutSpec()
    g = run(None, hosts_of(2, OK), policy)
    assert g.phase is Phase.COMPLETE and dict(g.stable) == VERSIONS
    g8 = step(
        g, group="web", seq=8, revision="r8", policy=policy, versions={"hello": "0.3.0"},
        hosts=reports(hosts_of(2, web_1=F), seq=8), now=200.0,
    )  # fmt: skip
    doc = RolloutDoc(3, "t", {"web": g8})
    assert g8.phase is Phase.HALTED
    assert install_version(doc, "web", "hello") == "0.2.0"
    assert install_version(doc, "web", "ticker") is None
    assert install_version(doc, "db", "hello") is None
    assert install_version(None, "web", "hello") is None
    assert install_version(RolloutDoc(3, "t", {"web": g}), "web", "hello") is None  # not halted


def test_may_disturb() -> None:
    g = run(None, hosts_of(3), RolloutSpec())
    doc = RolloutDoc(1, "t", {"web": g})
    assert may_disturb(doc, "web", "web-1", SEQ)
    assert not may_disturb(doc, "web", "web-1", SEQ + 1)  # a grant is for one seq
    assert not may_disturb(doc, "web", "web-2", SEQ)
    assert not may_disturb(doc, "db", "web-1", SEQ)
    assert not may_disturb(None, "web", "web-1", SEQ)  # no document yet: gated actions wait


def doc_of() -> RolloutDoc:
    g = run(None, hosts_of(3), RolloutSpec(max_unavailable=2, canary=1))
    g = run(g, hosts_of(3, web_1=F), RolloutSpec(max_unavailable=2, canary=1))
    return RolloutDoc(
        42,
        "2026-11-27T00:00:00Z",
        {"web": g, "db": replace(run(None, {}, RolloutSpec()), group="db")},
    )


def test_sign_and_verify_round_trip() -> None:
    doc = doc_of()
    raw = sign_rollout(doc, KEY, "pub-1")
    assert verify_rollout(raw, TRUSTED) == doc
    assert RolloutDoc.from_json(doc.to_json()) == doc
    parsed = json.loads(raw)
    assert parsed["kind"] == "rollout" and parsed["version"] == 42
    assert parsed["groups"]["web"]["phase"] == "Halted"


def tamper(raw: bytes, **changes: object) -> bytes:
    doc = json.loads(raw)
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda raw: tamper(raw, version=43), "BadSignature"),
        (lambda raw: tamper(raw, signature=base64.b64encode(b"x" * 64).decode()), "BadSignature"),
        (lambda raw: tamper(raw, signature="not base64!"), "BadSignature"),
        (lambda raw: tamper(raw, key_id="other"), "UnknownKey"),
        (lambda raw: tamper(raw, kind="snapshot"), "UnsupportedFormat"),
        (lambda raw: tamper(raw, signature=None), "Malformed"),
        (lambda raw: b"{nope", "Malformed"),
        (lambda raw: b"[1, 2]", "Malformed"),
        (lambda raw: b" " * (5 * 1024 * 1024), "Oversized"),
    ],
)
def test_verify_refuses(make: object, reason: str) -> None:
    raw = sign_rollout(doc_of(), KEY, "pub-1")
    with pytest.raises(RolloutRejected) as e:
        verify_rollout(make(raw), TRUSTED)  # type: ignore[operator]
    assert e.value.reason == reason


def test_signed_junk_is_malformed() -> None:
    junk = RolloutDoc(1, "t", {})
    raw = json.loads(sign_rollout(junk, KEY, "pub-1"))
    raw["groups"] = {"web": {"seq": "x"}}
    from erel_sync.core.rolloutdoc import SIGNING_PREFIX
    from erel_sync.model.specs import canonical_json

    body = {k: v for k, v in raw.items() if k not in ("key_id", "signature")}
    raw["signature"] = base64.b64encode(KEY.sign(SIGNING_PREFIX + canonical_json(body))).decode()
    with pytest.raises(RolloutRejected) as e:
        verify_rollout(json.dumps(raw).encode(), TRUSTED)
    assert e.value.reason == "Malformed"


def test_a_snapshot_signature_never_passes_for_a_rollout() -> None:
    doc = doc_of()
    body = doc.to_json()
    from erel_sync.model.specs import canonical_json

    forged = {
        **body,
        "key_id": "pub-1",
        "signature": base64.b64encode(KEY.sign(canonical_json(body))).decode(),
    }
    with pytest.raises(RolloutRejected, match="BadSignature"):
        verify_rollout(json.dumps(forged).encode(), TRUSTED)


def test_host_report_json() -> None:
    r = HostReport("web-1", "web", 7, C, "", 1764230000.5, "7:web-1:0", "abc")
    doc = r.to_json(time="2026-11-27T00:00:00Z")
    assert (
        doc["kind"] == "rollout-event" and doc["host_id"] == "web-1" and doc["state"] == "changing"
    )
    assert HostReport.from_json(doc) == r
    heartbeat_key = {"seq": 7, "state": "waiting", "reason": "", "at": 1.0, "grant": None}
    assert HostReport.from_json({**heartbeat_key, "host_id": "web-2", "group": "web"}) is not None
    for junk in (
        {**doc, "state": "dancing"},
        {**doc, "seq": "7"},
        {**doc, "seq": True},
        {**doc, "host_id": ""},
        {**doc, "kind": "heartbeat"},
        {**doc, "at": "now"},
        "text",
        None,
    ):
        assert HostReport.from_json(junk) is None, junk


def test_a_host_not_heard_on_the_new_seq_keeps_its_turn_for_a_while() -> None:
    """The order `plan --hosts` shows is the order hosts go in: web-1 has not reported on this
    seq yet (its snapshot is on its way), so web-2 and web-3 wait for it; after TURN_GRACE a
    silent host no longer holds the others back."""
    from erel_sync.core.rollout import TURN_GRACE

    policy = RolloutSpec(max_unavailable=1)
    heard = {**reports({"web-2": W, "web-3": W}), **reports({"web-1": W}, seq=SEQ - 1)}
    first = run(None, heard, policy, now=100.0)
    assert dict(first.granted) == {}
    assert run(first, heard, policy, now=100.0 + TURN_GRACE / 2).granted == {}
    later = run(first, heard, policy, now=100.0 + TURN_GRACE + 1)
    assert list(later.granted) == ["web-2"]
    # Once web-1 says it waits, it goes first.
    on_time = run(None, reports({"web-1": W, "web-2": W, "web-3": W}), policy, now=100.0)
    assert list(on_time.granted) == ["web-1"]
