"""What `erel-sync status`, `members` and `wait` show: hosts from presence records and replies.

Pure: documents in, documents out. A host is *known* when it sent a presence record within the
look-back window (and did not leave cleanly after it); it is *reachable* when it answered the
query now. A known host that did not answer is listed as unreachable with its last presence
(the CLI then exits 3). The output documents follow `schemas/cli/status.schema.json` and
`schemas/cli/members.schema.json` (docs/operating.md). What counts as a problem, and how an
error reads, is `core.conditions`; where a revision stands at the publisher, `core.revisions`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from erel_sync.core.conditions import (
    ERROR_WIDTH,
    clip,
    host_problems,
    refusal,
    release_error,
    trying,
)
from erel_sync.core.revisions import names

OUTPUT_FORMAT = 1


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Known:
    """What the presence stream says about one host id."""

    host_id: str
    last: dict[str, Any]
    last_seen: float
    instances: dict[str, float] = field(default_factory=dict)  # instance -> last seen alive


def known_hosts(records: Iterable[Mapping[str, Any]]) -> dict[str, Known]:
    """Latest presence per host; hosts whose latest record says they left are dropped."""
    return {h: k for h, k in latest_presence(records).items() if k.last.get("state") != "left"}


def latest_presence(records: Iterable[Mapping[str, Any]]) -> dict[str, Known]:
    """Latest presence per host, those that left included."""
    out: dict[str, Known] = {}
    for rec in records:
        host = rec.get("host_id")
        sent = parse_time(rec.get("sent"))
        if not isinstance(host, str) or sent is None:
            continue
        k = out.get(host)
        if k is None or sent >= k.last_seen:
            instances = k.instances if k else {}
            k = out[host] = Known(host, dict(rec), sent, instances)
        inst = rec.get("instance")
        if isinstance(inst, str):
            if rec.get("state") == "left":
                k.instances.pop(inst, None)
            else:
                k.instances[inst] = max(sent, k.instances.get(inst, 0.0))
    return out


def _release_row(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": r.get("name"),
        "desired_version": r.get("desired_version"),
        "version": r.get("version"),
        "state": r.get("state"),
        "running": bool(r.get("running")),
        "healthy": r.get("healthy"),
        "hold": r.get("hold"),
        "reason": r.get("reason") or "",
        "last_error": r.get("last_error") or "",
        "peers": r.get("peers") if isinstance(r.get("peers"), Mapping) else None,
    }


def peers_cell(peers: Any) -> str:
    """A clustered release's peers as ` (2/3 peers)`: connected of expected; '' otherwise."""
    if not isinstance(peers, Mapping):
        return ""
    expected = peers.get("expected") or []
    return f" ({len(peers.get('connected') or [])}/{len(expected)} peers)"


def peers_formed(peers: Any) -> bool:
    """Connected to every expected peer (True for a release that is not clustered)."""
    if not isinstance(peers, Mapping):
        return True
    return set(map(str, peers.get("expected") or [])) <= set(map(str, peers.get("connected") or []))


def _duplicate(answering: set[str]) -> bool:
    """Two agents claim this host id: two instances answered the same query. Presence alone
    cannot tell a duplicate from an agent killed and restarted (both instances were present
    lately), so only live answers count."""
    return len(answering) > 1


def host_entries(
    known: Mapping[str, Known],
    replies: Mapping[str, list[dict[str, Any]]],
    *,
    now: float,
    group: str | None = None,
    host: str | None = None,
) -> list[dict[str, Any]]:
    """One document per host (sorted by host id), filtered by group and host."""
    out = []
    for host_id in sorted(set(known) | set(replies)):
        k = known.get(host_id)
        answers = [a for a in replies.get(host_id, []) if a.get("ok")]
        hb: Mapping[str, Any] = (answers[0].get("result") or {}) if answers else {}
        base: Mapping[str, Any] = hb or (k.last if k else {})
        entry = {
            "host_id": host_id,
            "reachable": bool(answers),
            "group": base.get("group"),
            "match": hb.get("match") if hb else None,
            "candidates": [str(c) for c in hb.get("candidates") or []] if hb else [],
            "labels": dict(base.get("labels") or {}),
            "agent_version": base.get("agent_version"),
            "instance": base.get("instance"),
            "instances": sorted({str(a.get("instance")) for a in answers})
            or sorted(k.instances if k else []),
            "duplicate": _duplicate({str(a.get("instance")) for a in answers}),
            "hostname": base.get("hostname"),
            "last_seen": iso(max(a.get("received", now) for a in answers))
            if answers
            else iso(k.last_seen if k else None),
            "broker": hb.get("broker") if hb else None,
            "snapshot": hb.get("snapshot") if hb else None,
            "applied": hb.get("applied") if hb else None,
            "attempted": hb.get("attempted") if hb else None,
            "converged": hb.get("converged") if hb else None,
            "releases": [_release_row(r) for r in hb.get("releases", [])] if hb else [],
            "error": (hb.get("store_error") or None) if hb else None,
            "snapshot_refused": (hb.get("snapshot_refused") or None) if hb else None,
        }
        failed = [a for a in replies.get(host_id, []) if not a.get("ok")]
        if not answers:
            entry["error"] = (
                f"{failed[0].get('reason')}: {failed[0].get('message')}" if failed else "no answer"
            )
        if group is not None and entry["group"] != group:
            continue
        if host is not None and host_id != host:
            continue
        out.append(entry)
    return out


def short(rev: Any) -> str:
    return str(rev)[:7] if rev else "-"


def age(ts_iso: Any, now: float) -> str:
    ts = parse_time(ts_iso)
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def revision_cell(e: Mapping[str, Any]) -> str:
    """The applied revision, and the one being tried only while it is newer (docs/operating.md)."""
    applied, attempted = e.get("applied"), e.get("attempted")
    rev = short((applied or {}).get("revision"))
    if trying(applied, attempted):
        rev += f" (trying {short((attempted or {}).get('revision'))})"
    return rev


def status_rows(entries: Iterable[Mapping[str, Any]], *, now: float, wide: bool) -> list[list[str]]:
    """Table rows: one per host x release; a host without releases or unreachable: one row.
    ERROR holds the release's last error (cut to ERROR_WIDTH unless `wide`) and, on the host's
    last row, host-level problems, which also tag its STATE (STORE-FAILED, AGENT-TOO-OLD …)."""
    rows = []

    def err(text: str) -> str:
        return clip(text, 2000 if wide else ERROR_WIDTH)  # the agent bounds it at 2000

    for e in entries:
        common = [e["host_id"], e.get("group") or "(unassigned)"]
        tail = [revision_cell(e), age(e.get("last_seen"), now)]
        agent = [e.get("agent_version") or "-"] if wide else []
        if not e["reachable"]:
            seen = age(e["last_seen"], now)
            why = err(e.get("error") or "no answer")
            rows.append([*common, "-", "-", "-", "Unreachable", "-", "-", "-", seen, why, *agent])
            continue
        rels = e.get("releases") or []
        if not rels:
            state = "Converged" if e.get("converged") else (e.get("match") or "-")
            rows.append([*common, "-", "-", "-", state, "-", "-", *tail, "", *agent])
        for r in rels:
            hold = r.get("hold")
            health = {True: "healthy", False: "UNHEALTHY", None: "-"}[r.get("healthy")]
            rows.append(
                [
                    *common,
                    r["name"] + peers_cell(r.get("peers")),
                    r.get("desired_version") or "-",
                    r.get("version") or "-",
                    r.get("state") or "-",
                    health,
                    hold["kind"] if hold else "-",
                    *tail,
                    err(release_error(r)),
                    *agent,
                ]
            )
        problems = host_problems(e, store_error=e.get("error"))
        for flag, _ in problems:
            rows[-1][5] += f" {flag}"
        if problems:
            cell = STATUS_HEADERS.index("ERROR")
            texts = [rows[-1][cell]] if rows[-1][cell] else []
            rows[-1][cell] = err("; ".join([*texts, *(m for _, m in problems)]))
    return rows


STATUS_HEADERS = [
    "HOST",
    "GROUP",
    "RELEASE",
    "DESIRED",
    "RUNNING",
    "STATE",
    "HEALTH",
    "HOLD",
    "REVISION",
    "SEEN",
    "ERROR",
]
STATUS_WIDE_HEADERS = [*STATUS_HEADERS, "AGENT"]


def member_entries(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "host_id": e["host_id"],
            "state": "Duplicate"
            if e["duplicate"]
            else ("Live" if e["reachable"] else "Unreachable"),
            "group": e.get("group"),
            "labels": e.get("labels") or {},
            "agent_version": e.get("agent_version"),
            "instances": e.get("instances") or [],
            "hostname": e.get("hostname"),
            "last_seen": e.get("last_seen"),
            "duplicate": bool(e.get("duplicate")),
        }
        for e in entries
    ]


def member_rows(members: Iterable[Mapping[str, Any]], *, now: float, wide: bool) -> list[list[str]]:
    rows = []
    for m in members:
        labels = ",".join(f"{k}={v}" for k, v in sorted(m["labels"].items())) or "-"
        row = [
            m["host_id"],
            m["state"],
            m["group"] or "(unassigned)",
            labels,
            m["agent_version"] or "-",
            age(m["last_seen"], now),
        ]
        if wide:
            row += [",".join(m["instances"]) or "-", m.get("hostname") or "-"]
        rows.append(row)
    return rows


MEMBER_HEADERS = ["HOST", "STATE", "GROUP", "LABELS", "AGENT", "SEEN"]
MEMBER_WIDE_HEADERS = [*MEMBER_HEADERS, "INSTANCES", "HOSTNAME"]


@dataclass(frozen=True)
class WaitVerdict:
    state: str  # Converged | Failed | Pending
    converged: tuple[str, ...]
    failed: dict[str, str]  # host -> reasons
    pending: dict[str, str]  # host -> what it is doing
    working: tuple[str, ...] = ()  # pending hosts that answer: they are getting there


def wait_verdict(
    entries: Iterable[Mapping[str, Any]],
    revision: str,
    *,
    group: str | None,
    target_seq: int | None = None,
) -> WaitVerdict:
    """Has every host the revision concerns applied it with healthy releases?

    `revision` is a full or abbreviated sha; `target_seq`, when the publisher's records name
    it, the first snapshot seq that contains it: a host at that seq or later has it. Which
    hosts a revision concerns is known only from the revision itself, so every host that
    answers and does not hold it yet counts (pending) until it does; then its group under
    the revision decides: in scope (`group`, or any group) it must converge, else it is left
    out. A host that did not answer counts when its last known group is in scope. A host
    that attempted the revision (or a later one) and has a Failed release fails the wait, and
    so does one that refused the snapshot (`snapshot_refused`, e.g. AgentTooOld) or that two
    groups claim under it."""

    def at(doc: Any) -> bool:
        if not isinstance(doc, Mapping):
            return False
        seq = doc.get("seq")
        reached = target_seq is not None and isinstance(seq, int) and seq >= target_seq
        return reached or names(revision, doc.get("revision"))

    def in_scope(g: Any) -> bool:
        return g is not None and (group is None or g == group)

    converged, failed, pending, working = [], {}, {}, []
    for e in entries:
        host = e["host_id"]
        if not e["reachable"]:
            if in_scope(e.get("group")):
                pending[host] = f"unreachable ({e.get('error') or 'no answer'})"
            continue
        refused = e.get("snapshot_refused")
        if isinstance(refused, Mapping) and at(refused):
            failed[host] = refusal(refused)[1]
            continue
        if not at(e.get("snapshot")):
            snap = e.get("snapshot")
            where = f"at {short(snap.get('revision'))}" if snap else "no snapshot yet"
            if e.get("error"):
                where += f"; StoreFailed: {clip(str(e['error']), ERROR_WIDTH)}"
            pending[host] = where
            working.append(host)
            continue
        if e.get("match") == "Ambiguous" and (group is None or group in e.get("candidates", [])):
            failed[host] = "Ambiguous: matched by " + ", ".join(e.get("candidates") or [])
            continue
        if not in_scope(e.get("group")):
            continue  # under this revision the host is in no group, or in another one
        rels = e.get("releases") or []
        bad = [r for r in rels if r.get("state") == "Failed"]
        if bad and at(e.get("attempted")):
            failed[host] = "; ".join(
                f"{r['name']} {r.get('desired_version') or ''}: {release_error(r) or 'Failed'}"
                for r in bad
            )
            continue
        ready = all(
            r.get("state") == "Ready" and r.get("healthy") is not False
            for r in rels
            if r.get("desired_version")
        )
        if at(e.get("applied")) and ready and e.get("converged"):
            converged.append(host)
            continue
        doing = [
            f"{r['name']} {r.get('state')}"
            for r in rels
            if r.get("desired_version") and r.get("state") != "Ready"
        ]
        where = short((e.get("snapshot") or {}).get("revision"))
        pending[host] = f"at {where}" + (f": {', '.join(doing)}" if doing else "")
        working.append(host)
    if failed:
        state = "Failed"
    elif pending or not converged:
        state = "Pending"
    else:
        state = "Converged"
    return WaitVerdict(state, tuple(converged), failed, pending, tuple(working))
