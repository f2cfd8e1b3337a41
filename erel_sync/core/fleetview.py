"""What `erel-sync web` shows, folded from what the broker carries: heartbeats (every host's
report), the publisher's revision events (published and rejected) and rollout documents.
Pure: the web adapter feeds it and serves `state(now)` as JSON to the page.

The host table is `status`'s own (core.clusterview: the same rows and conditions), so the
page and the CLI never disagree; the rollouts table is `rollout status`'s (core.rolloutview).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from erel_sync.core import clusterview as view
from erel_sync.core import rolloutview
from erel_sync.core.matching import AMBIGUOUS

KEEP_REVISIONS = 10
KEEP_REJECTED = 5
GONE_AFTER = 600.0  # seconds without a heartbeat before a host leaves the page
INSTANCE_WINDOW = 30.0  # two instances heard within this many seconds: a duplicate host id


class FleetView:
    def __init__(self) -> None:
        # host -> instance -> newest heartbeat (with `received`)
        self.beats: dict[str, dict[str, dict[str, Any]]] = {}
        self.revisions: list[dict[str, Any]] = []  # published, newest first
        self.rejected: list[dict[str, Any]] = []  # newest first
        self.rollout: Mapping[str, Any] | None = None
        self.version = 0  # bumped on every change: the page is sent again

    def on_heartbeat(self, doc: dict[str, Any]) -> None:
        host, instance = str(doc.get("host_id")), str(doc.get("instance"))
        self.beats.setdefault(host, {})[instance] = doc
        self.version += 1

    def on_revision(self, doc: Mapping[str, Any]) -> None:
        if doc.get("kind") == "published":
            seqs = {r.get("seq") for r in self.revisions}
            if doc.get("seq") not in seqs:
                self.revisions = sorted(
                    [*self.revisions, dict(doc)], key=lambda r: int(r.get("seq") or 0)
                )[::-1][:KEEP_REVISIONS]
        elif doc.get("kind") == "rejected":
            self.rejected = [dict(doc), *self.rejected][:KEEP_REJECTED]
        self.version += 1

    def on_rollout(self, doc: Mapping[str, Any]) -> None:
        newest = rolloutview.newest([d for d in (self.rollout, doc) if d is not None])
        if newest is not self.rollout:
            self.rollout = newest
            self.version += 1

    def _entries(self, now: float) -> list[dict[str, Any]]:
        replies: dict[str, list[dict[str, Any]]] = {}
        for host, by_instance in self.beats.items():
            fresh = [d for d in by_instance.values() if now - d["received"] < GONE_AFTER]
            newest = max(fresh, key=lambda d: d["received"], default=None)
            if newest is None:
                continue
            # Other instances count only when heard lately: a restarted agent is one host.
            recent = [d for d in fresh if newest["received"] - d["received"] < INSTANCE_WINDOW]
            replies[host] = [
                {"ok": True, "result": d, "received": d["received"], "instance": d.get("instance")}
                for d in sorted(recent, key=lambda d: d["received"], reverse=True)
            ]
        return view.host_entries({}, replies, now=now)

    def state(self, now: float) -> dict[str, Any]:
        entries = self._entries(now)
        groups: dict[str, int] = {}
        for e in entries:
            if e.get("group"):
                groups[e["group"]] = groups.get(e["group"], 0) + 1
        current = self.revisions[0] if self.revisions else None
        newer_rejected = [
            r
            for r in self.rejected
            if current is None or str(r.get("time", "")) > str(current.get("time", ""))
        ]
        return {
            "version": self.version,
            "time": view.iso(now),
            "groups": [{"name": g, "hosts": n} for g, n in sorted(groups.items())],
            "hosts": {
                "headers": view.STATUS_HEADERS,
                "rows": view.status_rows(entries, now=now, wide=False),
            },
            "rollouts": {
                "headers": rolloutview.ROLLOUT_HEADERS,
                "rows": rolloutview.rows(self.rollout),
            },
            "current": _revision(current) if current else None,
            "revisions": [_revision(r) for r in self.revisions],
            "rejected": [
                {**_revision(r), "reason": r.get("reason"), "problems": r.get("problems_total")}
                for r in self.rejected
            ],
            "rejected_since_current": len(newer_rejected),
            "attention": {
                "unassigned": [e["host_id"] for e in entries if not e.get("group")],
                "ambiguous": [e["host_id"] for e in entries if e.get("match") == AMBIGUOUS],
                "duplicates": [e["host_id"] for e in entries if e.get("duplicate")],
            },
        }


def _revision(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seq": r.get("seq"),
        "revision": str(r.get("revision") or ""),
        "short": view.short(r.get("revision")),
        "time": r.get("time"),
        "author": r.get("author"),
        "subject": r.get("subject"),
    }
