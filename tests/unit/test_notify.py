"""Notifications without a network: the Notification document (schema, its groups must
exist), the events found in revision events, rollout documents and heartbeats (ids that repeat
when the same thing is seen again), who wants which event, payloads and the signature."""

from __future__ import annotations

import hashlib
import hmac
import json

from erel_sync.core import notify
from erel_sync.model.notify import NotificationSpec
from erel_sync.model.validate import LoadResult, SourceFile, validate_sources

RELEASE = b"""apiVersion: erel/v1
kind: Release
metadata: {name: hello}
spec:
  versions:
    - version: "0.1.0"
      artifact: {url: "file:///tmp/hello.tar.gz", sha256: "%s"}
""" % (b"a" * 64)
GROUP = b"""apiVersion: erel/v1
kind: Group
metadata: {name: web}
spec:
  hosts: ["web-*"]
  releases: [{name: hello, version: "0.1.0"}]
"""
NOTE = b"""apiVersion: erel/v1
kind: Notification
metadata: {name: ops}
spec:
  events: [revision_rejected, host_failed]
  groups: [%s]
  unreachable_after: 90s
  endpoint: {type: slack, url_env: EREL_SLACK_URL}
"""


def load(note: bytes) -> LoadResult:
    files = [SourceFile("releases/hello.yaml", RELEASE), SourceFile("groups/web.yaml", GROUP),
             SourceFile("notifications/ops.yaml", note)]  # fmt: skip
    return validate_sources(files)


def test_a_notification_document_is_validated_with_the_revision() -> None:
    ok = load(NOTE % b"web")
    assert ok.ok, ok.problems
    n = ok.notifications["ops"]
    assert n.events == {"revision_rejected", "host_failed"} and n.unreachable_after == 90.0
    assert n.endpoint_type == "slack" and n.url_env == "EREL_SLACK_URL"
    bad = load(NOTE % b"nosuch")
    assert [(p.file, p.line, p.path) for p in bad.problems] == [
        ("notifications/ops.yaml", 6, "$.spec.groups[0]")
    ]
    wrong = load(NOTE.replace(b"host_failed", b"host_exploded") % b"web")
    assert not wrong.ok and "notifications/ops.yaml:5" in str(wrong.problems[0])


def test_events_and_their_ids_repeat_for_the_same_thing() -> None:
    rejected = {"kind": "rejected", "revision": "f" * 40, "reason": "Invalid", "problems_total": 1,
                "problems": [{"file": "groups/web.yaml", "line": 7, "message": "no version"}],
                "time": "2026-11-27T10:00:00Z"}  # fmt: skip
    (e,) = notify.from_revision_event(rejected)
    assert e.id == f"revision_rejected:{'f' * 40}" and "groups/web.yaml:7" in e.summary
    assert notify.from_revision_event({"kind": "published", "revision": "x"}) == []
    doc = {"time": "t", "groups": {"web": {"seq": 5, "revision": "r", "phase": "Halted", "retry": 0,
           "failed": {"web-1": "UpgradeFailed: health"}, "done": []}}}  # fmt: skip
    got = {x.id: x for x in notify.from_rollout(doc)}
    assert set(got) == {"host_failed:web-1:5", "rollout_halted:web:5:0"}
    assert {x.id for x in notify.from_rollout(doc)} == set(got)  # seen again: the same ids
    done = {"groups": {"web": {"seq": 6, "phase": "Complete", "done": ["web-1", "web-2"]}}}
    assert [x.id for x in notify.from_rollout(done)] == ["rollout_completed:web:6"]
    beat = {"host_id": "web-2", "group": "web", "attempted": {"seq": 6, "revision": "r"},
            "releases": [{"name": "hello", "state": "Failed", "last_error": "StartFailed: x"},
                         {"name": "ok", "state": "Ready"}]}  # fmt: skip
    (f,) = notify.from_heartbeat(beat)
    assert f.id == "host_failed:web-2:6" and f.group == "web" and f.reason == "StartFailed: x"
    # The same failure in the rollout document is the same event; after a retry, a new one.
    halted = {"groups": {"web": {"seq": 6, "phase": "Halted", "retry": 0,
              "failed": {"web-2": "StartFailed: x"}}}}  # fmt: skip
    assert f.id in {x.id for x in notify.from_rollout(halted)}
    halted["groups"]["web"]["retry"] = 1
    assert "host_failed:web-2:6:retry-1" in {x.id for x in notify.from_rollout(halted)}
    seen = {"a": (0.0, "web", False), "b": (0.0, "web", True), "c": (95.0, "web", False)}
    assert [x.host for x in notify.unreachable(seen, 100.0, 60.0)] == ["a"]
    # Counted from the notifier's start at the earliest; the id keeps the last time heard of.
    assert list(notify.unreachable(seen, 100.0, 60.0, counted_from=50.0)) == []
    (late,) = notify.unreachable(seen, 110.0, 60.0, counted_from=50.0)
    assert late.id == "host_unreachable:a:0"


def test_the_newest_presence_record_of_each_host_decides() -> None:
    records = [
        {"host_id": "a", "state": "left", "group": "web", "sent": "2026-01-01T00:00:00Z"},
        {"host_id": "a", "state": "alive", "group": "web", "sent": "2026-01-01T00:01:00Z"},
        {"host_id": "b", "state": "alive", "sent": "2026-01-01T00:00:00Z"},
        {"host_id": "b", "state": "left", "group": "db", "sent": "2026-01-01T00:02:00Z"},
        {"host_id": "c", "state": "alive", "sent": "not a time"},
        {"state": "alive", "sent": "2026-01-01T00:00:00Z"},
    ]
    latest = notify.last_presence(records)
    assert sorted(latest) == ["a", "b"]
    assert latest["a"][1:] == ("web", False) and latest["b"][1:] == ("db", True)
    assert latest["b"][0] - latest["a"][0] == 60.0


def test_who_wants_what_and_the_payloads() -> None:
    n = NotificationSpec("ops", frozenset({"host_failed"}), "webhook", groups=frozenset({"web"}))
    assert n.wants("host_failed", "web") and not n.wants("host_failed", "db")
    assert not n.wants("rollout_halted", "web")
    every = NotificationSpec("all", frozenset({"revision_rejected"}), "slack")
    assert every.wants("revision_rejected", None)
    (e,) = notify.from_revision_event(
        {"kind": "rejected", "revision": "a" * 40, "reason": "Invalid"}
    )
    body = notify.body_of(e, "webhook")
    assert json.loads(body)["event"] == "revision_rejected"
    assert json.loads(notify.body_of(e, "slack"))["text"].startswith(":warning: erel-sync:")
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert notify.signature(b"k", body) == f"sha256={expected}"
