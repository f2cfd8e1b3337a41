"""Who counts as alive, and what `status` and `members` exit with: the liveness rules of the CLI.

Pure: `status` entries (`core.clusterview.host_entries`, schemas/cli/status.schema.json) and
heartbeat documents in, verdicts and one-line notes out; the clock is the `now` argument (epoch
seconds). `cli.status` and `cli.members` print the notes on stderr and exit with the code; the
`status --watch` loop asks `watch_replies` which instances still speak for their host. Kept apart
from `core.clusterview` (what a table shows) and `core.conditions` (what is wrong with a host)
because these rules are about time: how long an answer or a heartbeat stands.

Exit codes (docs/operating.md): 0 every host converged and healthy; 1 something Failed or
Degraded, or (with every host answering) not converged yet; 3 some hosts did not answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from erel_sync.core import conditions
from erel_sync.core.clusterview import age, parse_time

OK, PROBLEMS, PARTIAL = 0, 1, 3  # the exit codes above
HEARTBEAT_INTERVAL = 5.0  # assumed when a heartbeat does not carry its own interval
MISSED_BEATS = 3  # a host not heard for this many intervals (plus 1 s) is Unreachable


@dataclass(frozen=True)
class Outcome:
    """An exit code and the lines that explain it (one per kind of trouble, hosts named)."""

    code: int
    notes: tuple[str, ...] = ()


def unreachable(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The known hosts (seen within the look-back window) that did not answer the query."""
    return [e for e in entries if not e["reachable"]]


def unreachable_note(entries: Iterable[Mapping[str, Any]], now: float) -> str | None:
    """One line naming the hosts that did not answer and when each was last seen, or None."""
    gone = unreachable(entries)
    if not gone:
        return None
    names = ", ".join(f"{e['host_id']} (seen {age(e['last_seen'], now)} ago)" for e in gone)
    return f"{len(gone)} host(s) did not answer: {names}"


def status_outcome(
    entries: Sequence[Mapping[str, Any]], now: float, *, host: str | None = None
) -> Outcome:
    """`status`'s exit code: Failed (1) over Partial (3) over Progressing (1) over Ok (0), as
    `conditions.status_verdict` orders them. `host`: the one host asked for (`--host`); when
    it is not even known, that is Partial."""
    if host is not None and not entries:
        return Outcome(PARTIAL, (f"host {host} did not answer (not seen within --since)",))
    verdict = conditions.status_verdict(
        (
            e["host_id"],
            conditions.host_condition(e, store_error=e["error"] if e["reachable"] else None),
        )
        for e in entries
    )
    notes = []
    for what, hosts in (
        ("failed or degraded", verdict.failed),
        ("not converged yet", verdict.progressing),
    ):
        if hosts:
            listed = "; ".join(f"{h} ({conditions.clip(why, 120)})" for h, why in hosts.items())
            notes.append(f"{len(hosts)} host(s) {what}: {listed}")
    gone = unreachable_note(entries, now)
    if gone:
        notes.append(gone)
    code = {
        "Failed": PROBLEMS,
        "Partial": PARTIAL if gone else OK,
        "Progressing": PROBLEMS,
        "Ok": OK,
    }[verdict.state]
    return Outcome(code, tuple(notes))


def members_outcome(
    members: Iterable[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]], now: float
) -> Outcome:
    """`members`' exit code: 3 when a known host did not answer, else 0. Two agents on one
    host id are named but do not change the code (the table flags them Duplicate)."""
    notes = []
    dups = [m["host_id"] for m in members if m["duplicate"]]
    if dups:
        notes.append(f"more than one agent claims host id(s): {', '.join(dups)}")
    gone = unreachable_note(entries, now)
    if gone:
        notes.append(gone)
    return Outcome(PARTIAL if gone else OK, tuple(notes))


def beat_interval(doc: Mapping[str, Any]) -> float:
    return float(doc.get("heartbeat_interval") or HEARTBEAT_INTERVAL)


def live_heartbeats(
    beats: Mapping[str, Mapping[str, Any]], first_heard: Mapping[str, float], now: float
) -> list[Mapping[str, Any]]:
    """The newest heartbeats (`beats`: instance -> heartbeat with its `received` time) of one
    host's instances that still speak for it. An instance not heard for MISSED_BEATS intervals
    is gone. Two instances heartbeating at the same time are duplicates and both count; one
    that fell silent (missed a beat) before another was first heard (`first_heard`: instance
    -> time) was restarted, not duplicated, and no longer counts."""

    def silent(d: Mapping[str, Any]) -> float:
        return now - float(d["received"])

    docs = [d for d in beats.values() if silent(d) <= MISSED_BEATS * beat_interval(d) + 1]
    return [
        d
        for d in docs
        if not (
            silent(d) > 2 * beat_interval(d) + 0.5
            and any(first_heard[str(o.get("instance"))] > float(d["received"]) for o in docs)
        )
    ]


def as_reply(host: str, report: Mapping[str, Any], received: float) -> dict[str, Any]:
    """A heartbeat (or an earlier status entry) in the shape of a status reply."""
    return {
        "ok": True,
        "host_id": host,
        "instance": report.get("instance"),
        "received": received,
        "result": report,
    }


def watch_replies(
    beats: Mapping[str, Mapping[str, Mapping[str, Any]]],
    first_heard: Mapping[str, Mapping[str, float]],
    entries: Iterable[Mapping[str, Any]],
    now: float,
) -> dict[str, list[dict[str, Any]]]:
    """What `status --watch` shows at `now`, as status replies per host: the live heartbeats
    (`beats`: host -> instance -> newest heartbeat; `first_heard`: host -> instance -> time),
    and, for an instance that answered the first query (`entries`) and has sent no heartbeat
    yet, that answer, for as long as a heartbeat would stand."""
    replies: dict[str, list[dict[str, Any]]] = {}
    for h, of_host in beats.items():
        if docs := live_heartbeats(of_host, first_heard.get(h, {}), now):
            replies[h] = [as_reply(h, d, float(d["received"])) for d in docs]
    for e in entries:
        seen = parse_time(e["last_seen"]) or now
        if not e["reachable"] or now - seen > MISSED_BEATS * HEARTBEAT_INTERVAL + 1:
            continue
        h = e["host_id"]
        for i in e.get("instances") or [e.get("instance")]:
            if str(i) not in beats.get(h, {}):
                replies.setdefault(h, []).append(as_reply(h, {**e, "instance": i}, seen))
    return replies
