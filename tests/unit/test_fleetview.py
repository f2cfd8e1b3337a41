"""What the live page shows (core.fleetview): the status table from heartbeats, revisions
newest first without repeats, rejections, the newest rollout document, hosts needing
attention, and a version that moves only on a change."""

from __future__ import annotations

from typing import Any

from erel_sync.core.fleetview import GONE_AFTER, FleetView


def beat(host: str, *, received: float, group: str | None = "web", instance: str = "i1",
         version: str = "0.1.0", match: str = "glob") -> dict[str, Any]:  # fmt: skip
    return {
        "kind": "heartbeat", "host_id": host, "instance": instance, "group": group,
        "match": match, "received": received, "converged": True, "snapshot": {"seq": 2},
        "applied": {"seq": 2, "revision": "abcdef1234"},
        "releases": [{"name": "hello", "version": version, "desired_version": version,
                      "state": "Ready", "healthy": True, "hold": None}],
    }  # fmt: skip


def test_hosts_revisions_and_rollouts() -> None:
    f = FleetView()
    f.on_heartbeat(beat("web-1", received=100.0))
    f.on_heartbeat(beat("web-2", received=100.0, version="0.2.0"))
    for seq in (1, 2, 2):
        f.on_revision({"kind": "published", "seq": seq, "revision": f"r{seq}" * 8,
                       "time": f"2026-11-27T10:0{seq}:00Z", "subject": f"change {seq}"})  # fmt: skip
    f.on_revision({"kind": "rejected", "revision": "bad" * 8, "reason": "Invalid",
                   "problems_total": 2, "time": "2026-11-27T10:05:00Z"})  # fmt: skip
    f.on_rollout({"version": 3, "groups": {"web": {"seq": 2, "revision": "r2", "phase": "Complete",
                  "done": ["web-1", "web-2"], "order": ["web-1", "web-2"]}}})  # fmt: skip
    f.on_rollout({"version": 1, "groups": {}})  # older: ignored
    s = f.state(101.0)
    head = s["hosts"]["headers"]
    rows = {r[head.index("HOST")]: r for r in s["hosts"]["rows"]}
    assert rows["web-2"][head.index("RUNNING")] == "0.2.0"
    assert rows["web-1"][head.index("HEALTH")] == "healthy"
    assert [r["seq"] for r in s["revisions"]] == [2, 1]
    assert s["current"]["subject"] == "change 2"
    assert s["rejected"][0]["reason"] == "Invalid" and s["rejected_since_current"] == 1
    assert s["rollouts"]["rows"][0][:1] == ["web"] and "Complete" in s["rollouts"]["rows"][0]
    assert s["groups"] == [{"name": "web", "hosts": 2}]
    assert s["attention"] == {"unassigned": [], "ambiguous": [], "duplicates": []}


def test_attention_and_departures() -> None:
    f = FleetView()
    f.on_heartbeat(beat("lost-1", received=0.0))
    f.on_heartbeat(beat("odd-1", received=100.0, group=None, match="Unassigned"))
    f.on_heartbeat(beat("two-1", received=100.0, instance="a"))
    f.on_heartbeat(beat("two-1", received=101.0, instance="b"))
    f.on_heartbeat(beat("amb-1", received=100.0, group=None, match="Ambiguous"))
    s = f.state(GONE_AFTER + 1.0)
    hosts = {r[0] for r in s["hosts"]["rows"]}
    assert "lost-1" not in hosts and {"odd-1", "two-1", "amb-1"} <= hosts
    assert s["attention"]["unassigned"] == ["amb-1", "odd-1"]
    assert s["attention"]["ambiguous"] == ["amb-1"]
    assert s["attention"]["duplicates"] == ["two-1"]


def test_the_version_moves_only_on_a_change() -> None:
    f = FleetView()
    v0 = f.version
    f.on_rollout({"version": 2, "groups": {}})
    v1 = f.version
    f.on_rollout({"version": 2, "groups": {}})
    assert v1 > v0 and f.version == v1
