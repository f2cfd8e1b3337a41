"""What `erel-sync status`, `members` and `wait` show: hosts from presence records and replies.

Pure: documents in, documents out. A host is *known* when it sent a presence record within the
look-back window (and did not leave cleanly after it); it is *reachable* when it answered the
query now. A known host that did not answer is listed as unreachable with its last presence
(the CLI then exits 3). The output documents follow `schemas/cli/status.schema.json` and
`schemas/cli/members.schema.json` (docs/operating.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    return {h: k for h, k in out.items() if k.last.get("state") != "left"}


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
    }


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


def status_rows(entries: Iterable[Mapping[str, Any]], *, now: float, wide: bool) -> list[list[str]]:
    """Table rows: one per host x release; a host without releases or unreachable: one row."""
    rows = []
    for e in entries:
        applied = (e.get("applied") or {}).get("revision")
        attempted = (e.get("attempted") or {}).get("revision")
        rev = short(applied)
        if attempted and attempted != applied:
            rev += f" (trying {short(attempted)})"
        common = [e["host_id"], e.get("group") or "(unassigned)"]
        tail = [rev, age(e.get("last_seen"), now)]
        if not e["reachable"]:
            rows.append(
                [*common, "-", "-", "-", "Unreachable", "-", "-", "-", age(e["last_seen"], now)]
                + ([e.get("error") or "", e.get("agent_version") or "-"] if wide else [])
            )
            continue
        rels = e.get("releases") or []
        if not rels:
            state = "Converged" if e.get("converged") else (e.get("match") or "-")
            rows.append(
                [*common, "-", "-", "-", state, "-", "-", *tail]
                + ([e.get("error") or "", e.get("agent_version") or "-"] if wide else [])
            )
        for r in rels:
            hold = r.get("hold")
            health = {True: "healthy", False: "UNHEALTHY", None: "-"}[r.get("healthy")]
            row = [
                *common,
                r["name"],
                r.get("desired_version") or "-",
                r.get("version") or "-",
                r.get("state") or "-",
                health,
                hold["kind"] if hold else "-",
                *tail,
            ]
            if wide:
                row += [r.get("last_error") or r.get("reason") or "", e.get("agent_version") or "-"]
            rows.append(row)
        if e.get("duplicate"):
            rows[-1][5] += " DUPLICATE-ID"
        if e.get("error"):  # answered, but cannot store snapshots (disk full)
            rows[-1][5] += " STORE-FAILED"
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
]
STATUS_WIDE_HEADERS = [*STATUS_HEADERS, "LAST ERROR", "AGENT"]


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
    entries: Iterable[Mapping[str, Any]], revision: str, *, group: str | None
) -> WaitVerdict:
    """Has every matching host applied `revision` (a full or abbreviated sha) with healthy
    releases? A host that attempted it and has a Failed release fails the wait."""

    def at(doc: Any) -> bool:
        rev = (doc or {}).get("revision") or ""
        return bool(rev) and rev.startswith(revision)

    converged, failed, pending, working = [], {}, {}, []
    for e in entries:
        if group is None and e.get("group") is None and e["reachable"]:
            continue  # an unassigned host takes no part in any rollout
        host = e["host_id"]
        if not e["reachable"]:
            pending[host] = f"unreachable ({e.get('error') or 'no answer'})"
            continue
        rels = e.get("releases") or []
        bad = [r for r in rels if r.get("state") == "Failed"]
        if bad and (at(e.get("attempted")) or at(e.get("snapshot"))):
            failed[host] = "; ".join(
                f"{r['name']} {r.get('desired_version') or ''}: "
                f"{r.get('last_error') or r.get('reason') or 'Failed'}"
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
