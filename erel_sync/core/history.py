"""A host's history: the last revisions it applied or failed, with when, the result and how
long it took from the snapshot's arrival. Kept by the agent (status.json `history`, so it
survives restarts), answered in `status` replies, shown by `erel-sync history`.

`after_tick` is the only rule: after each reconcile tick, a seq is recorded `applied` the first
time the host is converged on it, `failed` the first time a tick at that seq leaves a release
failed; a seq that failed and later converged (a retry, an operator's fix) gets both entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LIMIT = 20  # entries kept per host


@dataclass(frozen=True)
class Entry:
    seq: int
    revision: str
    time: float  # unix seconds, when it was recorded
    result: str  # "applied" or "failed"
    duration: float  # seconds from the snapshot's arrival on the host
    reason: str = ""  # for `failed`: the first failing release's "Reason: message"

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "revision": self.revision,
            "time": self.time,
            "result": self.result,
            "duration": round(self.duration, 3),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Entry:
        return cls(
            int(doc["seq"]),
            str(doc["revision"]),
            float(doc["time"]),
            str(doc["result"]),
            float(doc.get("duration", 0.0)),
            str(doc.get("reason", "")),
        )


def load(raw: Any) -> tuple[Entry, ...]:
    """Entries from status.json; anything malformed is dropped (history is informative)."""
    out = []
    for doc in raw if isinstance(raw, list) else []:
        try:
            out.append(Entry.from_json(doc))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(out[-LIMIT:])


def _failure(report: Mapping[str, Any]) -> str:
    for r in report.get("releases") or []:
        if r.get("state") == "Failed" or r.get("last_error"):
            name = r.get("name", "?")
            return f"{name}: {r.get('last_error') or r.get('reason') or 'Failed'}"
    return ""


def after_tick(
    history: Sequence[Entry],
    report: Mapping[str, Any],
    *,
    now: float,
    arrived: float | None,
    limit: int = LIMIT,
) -> tuple[Entry, ...]:
    """`history` with this tick's outcome added, if it is news. `report`: the host report
    after the tick (core.status JSON); `arrived`: when its snapshot was stored (None: unknown,
    e.g. held since before a restart)."""
    snap = report.get("snapshot") or {}
    seq, revision = snap.get("seq"), snap.get("revision")
    if not isinstance(seq, int) or not isinstance(revision, str):
        return tuple(history)
    said = {(e.seq, e.result) for e in history}
    duration = max(0.0, now - arrived) if arrived is not None else 0.0
    applied = report.get("applied") or {}
    converged = bool(report.get("converged")) and applied.get("seq") == seq
    reason = "" if converged else _failure(report)
    if converged and (seq, "applied") not in said:
        entry = Entry(seq, revision, now, "applied", duration)
    elif reason and not said & {(seq, "failed"), (seq, "applied")}:
        entry = Entry(seq, revision, now, "failed", duration, reason)
    else:
        return tuple(history)
    return (*history, entry)[-limit:]
