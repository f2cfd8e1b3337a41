"""The live table of `erel-sync dev`: one row per host from its heartbeat, and the title that
says whether the cluster converged on the newest snapshot, and how long that took.

Pure (no I/O, the clock is passed in): `cli.dev` feeds it heartbeats and the publisher's
`published` events and draws what it returns, so the rules are unit-tested. A failing release
shows its last error here exactly as in `erel-sync status` (`core.conditions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from erel_sync.core.clusterview import peers_cell, peers_formed
from erel_sync.core.conditions import clip, host_condition, host_problems, release_error

COLUMNS = ("host", "group", "seq", "applied", "rollout", "releases", "broker", "error")
ERROR_WIDTH = 80


def host_row(beat: Mapping[str, Any]) -> list[str]:
    """A host's row: group, held and applied seq, releases, broker session, and what is wrong
    (each failing release's `Reason: message`, then host-level problems such as STORE-FAILED)."""
    rels = _releases(beat)
    releases = ", ".join(
        f"{r.get('name')} {r.get('version') or '-'} {r.get('state')}{peers_cell(r.get('peers'))}"
        for r in rels
    )
    errors = [f"{r.get('name')}: {e}" for r in rels if (e := release_error(r))]
    errors += [
        f"{flag}: {msg}" if msg and not msg.startswith(flag) else flag
        for flag, msg in host_problems(beat, store_error=beat.get("store_error"))
    ]
    return [
        str(beat.get("host_id") or "-"),
        str(beat.get("group") or beat.get("match") or "-"),
        str((beat.get("snapshot") or {}).get("seq", "-")),
        str((beat.get("applied") or {}).get("seq", "-")),
        rollout_cell(beat.get("rollout")),
        releases or "-",
        str(beat.get("broker") or "-"),
        clip("; ".join(errors), ERROR_WIDTH) or "-",
    ]


def rollout_cell(report: Any) -> str:
    """Where the host stands in its group's rollout: `waiting`, `changing`, `converged` or
    `failed`, for the seq it holds (from its heartbeat or its newest rollout event)."""
    if not isinstance(report, Mapping) or not report.get("state"):
        return "-"
    return f"{report.get('state')} @{report.get('seq', '?')}"


def _clusters_formed(beats: Mapping[str, Mapping[str, Any]], host: str) -> bool:
    """Each clustered release of `host` expects, and is connected to, its node on every other
    host of its group that runs it (before the agent hears the group's members, a node
    expects none: that is not a cluster yet)."""
    group = beats[host].get("group")
    for r in _releases(beats[host]):
        if not isinstance(r.get("peers"), Mapping):
            continue
        others = sum(
            1
            for h, b in beats.items()
            if h != host
            and b.get("group") == group
            and any(o.get("name") == r.get("name") and o.get("peers") for o in _releases(b))
        )
        if len(r["peers"].get("expected") or []) != others or not peers_formed(r["peers"]):
            return False
    return True


def _releases(beat: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in beat.get("releases") or [] if isinstance(r, Mapping)]


def _seq(doc: Any) -> int:
    seq = doc.get("seq") if isinstance(doc, Mapping) else None
    return seq if isinstance(seq, int) else 0


@dataclass
class Progress:
    """Converged or not, since when. The target is the newest snapshot seq the publisher
    announced or any host holds; the cluster has converged when every host reports
    `converged` with that seq applied. A new target, or a host falling out of convergence,
    starts a new count: the title never says "converged" about an older rollout. A clustered
    release counts once its node is connected to every expected peer (the cluster formed)."""

    started: float
    target: int = 0
    converged_at: float | None = None

    def published(self, seq: Any, now: float) -> None:
        """The publisher announced snapshot `seq` (`publisher.published`)."""
        if isinstance(seq, int) and seq > self.target:
            if self.target:  # the first one is the rollout the count started with
                self.started = now
            self.target, self.converged_at = seq, None

    def done(self, beats: Mapping[str, Mapping[str, Any]], hosts: Sequence[str]) -> bool:
        if not hosts or any(h not in beats for h in hosts):
            return False
        return all(
            beats[h].get("converged")
            and _seq(beats[h].get("applied")) >= self.target
            and _clusters_formed(beats, h)
            for h in hosts
        )

    def update(
        self, beats: Mapping[str, Mapping[str, Any]], hosts: Sequence[str], now: float
    ) -> str:
        """Take the newest heartbeats into account; the table's title."""
        held = max((_seq(b.get("snapshot")) for b in beats.values()), default=0)
        if held > self.target:
            self.published(held, now)
        if self.done(beats, hosts):
            if self.converged_at is None:
                self.converged_at = now
            took = self.converged_at - self.started
            return f"converged in {took:.1f}s (seq {self.target})"
        if self.converged_at is not None:  # was converged, is not any more: a new count
            self.started, self.converged_at = now, None
        failing = [
            h
            for h in hosts
            if h in beats
            and host_condition(beats[h], store_error=beats[h].get("store_error")).state == "Failed"
        ]
        if failing:
            return f"not converged, failing on {', '.join(failing)} — {now - self.started:.0f}s"
        return f"converging… {now - self.started:.0f}s"
