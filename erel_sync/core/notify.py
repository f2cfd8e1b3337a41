"""What `erel-sync notify` sends, decided without I/O: the events found in what the broker
carries, each with an id that is the same whenever the same thing is seen again (a stream
read again after a restart, a document repeated), the payloads, and the webhook signature.

Events and their ids (the id is the delivery's `X-Erel-Delivery`, and what the notifier
remembers as sent):
- `revision_rejected:<revision>` from the publisher's `rejected` events;
- `rollout_halted:<group>:<seq>:<retry>`, `rollout_completed:<group>:<seq>` from rollout
  documents;
- `host_failed:<host>:<seq>` from a rollout's failed hosts and from heartbeats whose release
  is Failed: one failure seen by both is one event (`host_failed:<host>:<seq>:retry-<n>` once
  an operator's `rollout retry` let it try again);
- `host_unreachable:<host>:<last heartbeat time>` when a host stayed silent too long without
  saying it left.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from erel_sync.core.clusterview import latest_presence


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    summary: str
    time: str
    group: str | None = None
    host: str | None = None
    seq: int | None = None
    revision: str | None = None
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The generic webhook's JSON body."""
        return {
            "id": self.id,
            "event": self.event,
            "time": self.time,
            "summary": self.summary,
            "group": self.group,
            "host": self.host,
            "seq": self.seq,
            "revision": self.revision,
            "reason": self.reason,
            "details": dict(self.details),
        }

    def slack(self) -> dict[str, Any]:
        """A Slack-compatible incoming-webhook body."""
        icon = {"rollout_completed": ":white_check_mark:"}.get(self.event, ":warning:")
        return {"text": f"{icon} erel-sync: {self.summary}"}


def body_of(event: Event, endpoint_type: str) -> bytes:
    doc = event.slack() if endpoint_type == "slack" else event.payload()
    return json.dumps(doc, sort_keys=True).encode()


def signature(key: bytes, body: bytes) -> str:
    """`X-Erel-Signature`: `sha256=` and the hex HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def from_revision_event(doc: Mapping[str, Any]) -> list[Event]:
    if doc.get("kind") != "rejected" or not isinstance(doc.get("revision"), str):
        return []
    rev = str(doc["revision"])
    problems = doc.get("problems") or []
    first = problems[0] if problems and isinstance(problems[0], Mapping) else {}
    where = f" ({first.get('file')}:{first.get('line')}: {first.get('message')})" if first else ""
    return [
        Event(
            id=f"revision_rejected:{rev}",
            event="revision_rejected",
            summary=f"revision {rev[:12]} rejected: {doc.get('reason')}, "
            f"{doc.get('problems_total', len(problems))} problem(s){where}",
            time=str(doc.get("time", "")),
            revision=rev,
            reason=str(doc.get("reason") or ""),
            details={
                "author": doc.get("author"),
                "subject": doc.get("subject"),
                "problems": list(problems)[:20],
            },
        )
    ]


def failure_id(host: str, seq: Any, retry: Any = 0) -> str:
    """One id per host, seq and retry, whoever saw the failure first (the rollout document
    or a heartbeat; a heartbeat cannot tell a retry, and the rollout names it)."""
    base = f"host_failed:{host}:{seq}"
    return f"{base}:retry-{retry}" if isinstance(retry, int) and retry > 0 else base


def from_rollout(doc: Mapping[str, Any]) -> list[Event]:
    out: list[Event] = []
    groups = doc.get("groups") if isinstance(doc.get("groups"), Mapping) else {}
    when = str(doc.get("time", ""))
    for name, g in sorted((groups or {}).items()):
        if not isinstance(g, Mapping) or not isinstance(g.get("seq"), int):
            continue
        seq, rev = int(g["seq"]), str(g.get("revision") or "")
        for host, reason in sorted((g.get("failed") or {}).items()):
            out.append(
                Event(failure_id(host, seq, g.get("retry", 0)), "host_failed",
                      f"{host} ({name}) failed seq {seq}: {reason}", when, name, host, seq, rev,
                      str(reason))
            )  # fmt: skip
        if g.get("phase") == "Halted":
            failed = ", ".join(sorted(g.get("failed") or {}))
            out.append(
                Event(f"rollout_halted:{name}:{seq}:{g.get('retry', 0)}", "rollout_halted",
                      f"rollout of {name} to seq {seq} halted (failed: {failed or '-'})", when,
                      name, None, seq, rev, "Halted", {"failed": dict(g.get("failed") or {})})
            )  # fmt: skip
        elif g.get("phase") == "Complete":
            n = len(g.get("done") or [])
            out.append(
                Event(f"rollout_completed:{name}:{seq}", "rollout_completed",
                      f"rollout of {name} to seq {seq} complete on {n} host(s)", when, name,
                      None, seq, rev)
            )  # fmt: skip
    return out


def from_heartbeat(doc: Mapping[str, Any]) -> list[Event]:
    host, group = str(doc.get("host_id")), doc.get("group")
    seq = (doc.get("attempted") or doc.get("snapshot") or {}).get("seq")
    rev = (doc.get("attempted") or doc.get("snapshot") or {}).get("revision")
    out = []
    for r in doc.get("releases") or []:
        if isinstance(r, Mapping) and r.get("state") == "Failed":
            name, why = r.get("name"), r.get("last_error") or r.get("reason") or "Failed"
            out.append(
                Event(failure_id(host, seq), "host_failed",
                      f"{host} ({group or 'no group'}): {name} failed at seq {seq}: {why}",
                      str(doc.get("time", "")), group, host,
                      seq if isinstance(seq, int) else None, rev, str(why))
            )  # fmt: skip
    return out


def unreachable(
    last_seen: Mapping[str, tuple[float, str | None, bool]],
    now: float,
    after: float,
    counted_from: float = 0.0,
) -> Iterable[Event]:
    """`last_seen`: host -> (last heard of, unix seconds; its group; said it left). Silence is
    counted from `counted_from` at the earliest (the notifier's start: what happened while it
    was down is not known, so a host gets `after` from then to be heard); the id keeps the
    last time the host was heard of, so a restarted notifier names the same silence again."""
    for host, (seen, group, left) in sorted(last_seen.items()):
        if not left and now - max(seen, counted_from) >= after:
            yield Event(
                f"host_unreachable:{host}:{int(seen)}", "host_unreachable",
                f"{host} ({group or 'no group'}) sent no heartbeat for {now - seen:.0f}s",
                "", group, host, reason="Unreachable",
            )  # fmt: skip


def last_presence(
    records: Iterable[Mapping[str, Any]],
) -> dict[str, tuple[float, str | None, bool]]:
    """Per host, its newest presence record: (sent, unix seconds; its group; it said it left).
    A live agent sends one at every session start and every 30 s, so this names hosts the
    notifier has not heard a heartbeat from, and an older `left` is undone by the host's
    return."""
    return {
        host: (k.last_seen, g if isinstance(g := k.last.get("group"), str) else None,
               k.last.get("state") == "left")
        for host, k in latest_presence(records).items()
    }  # fmt: skip
