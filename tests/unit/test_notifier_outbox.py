"""The notifier's bookkeeping (publisher/notifier.py) without a broker or an endpoint: an event
goes to the outbox once per Notification that wants it, and is written to disk before any try;
what the streams held before the first start is recorded as sent, not sent; a restart (a new
notifier on the same state directory) remembers what was sent and what is pending, and the
hosts it had heard of: one that died while it was down is still announced, once."""

from __future__ import annotations

import time
from pathlib import Path

from erel_sync.core import notify
from erel_sync.core.notify import Event
from erel_sync.model.notify import NotificationSpec
from erel_sync.publisher.notifier import Notifier

OPS = NotificationSpec("ops", frozenset({"host_failed", "revision_rejected"}), "webhook")
WEB_ONLY = NotificationSpec("web", frozenset({"host_failed"}), "slack", groups=frozenset({"web"}))


def notifier(tmp_path: Path) -> Notifier:
    n = Notifier(tmp_path / "repo", tmp_path / "state", ["amqp://unused"])
    n.notifications = {"ops": OPS, "web": WEB_ONLY}
    return n


def failed(host: str, group: str, time: str) -> Event:
    return Event(f"host_failed:{host}:5:hello", "host_failed", f"{host} failed", time, group, host)


def test_each_wanting_notification_gets_the_event_once(tmp_path: Path) -> None:
    n = notifier(tmp_path)
    later = "9999-01-01T00:00:00Z"
    n.offer([failed("web-1", "web", later), failed("db-1", "db", later)], backlog=False)
    n.offer([failed("web-1", "web", later)], backlog=False)  # seen again
    assert sorted(n.outbox) == [
        "ops/host_failed:db-1:5:hello",
        "ops/host_failed:web-1:5:hello",
        "web/host_failed:web-1:5:hello",
    ]
    assert n.outbox["web/host_failed:web-1:5:hello"]["body"].startswith('{"text": ')
    again = notifier(tmp_path)  # a restart: the outbox was on disk before any try
    assert sorted(again.outbox) == sorted(n.outbox)


def test_the_past_is_recorded_as_sent_and_a_restart_remembers(tmp_path: Path) -> None:
    n = notifier(tmp_path)
    n.offer([failed("web-1", "web", "2000-01-01T00:00:00Z")], backlog=True)
    assert n.outbox == {} and "ops/host_failed:web-1:5:hello" in n.sent
    key = "ops/host_failed:web-2:5:hello"
    n.offer([failed("web-2", "web", "9999-01-01T00:00:00Z")], backlog=True)
    assert key in n.outbox  # after the first start: news, even from the backlog
    del n.outbox[key]
    n.sent[key] = time.time()
    n.persist()
    again = notifier(tmp_path)
    again.offer([failed("web-2", "web", "9999-01-01T00:00:00Z")], backlog=True)
    assert key not in again.outbox and again.since == n.since


UNREACHABLE = NotificationSpec(
    "down", frozenset({"host_unreachable"}), "webhook", unreachable_after=60
)


def test_a_restart_knows_the_hosts_and_names_a_silence_once(tmp_path: Path) -> None:
    n = notifier(tmp_path)
    n.notifications = {"down": UNREACHABLE}
    n.on_heartbeat({"host_id": "web-1", "group": "web"})
    n.on_heartbeat({"host_id": "web-2", "group": "web"})
    n.on_presence([{"host_id": "web-2", "state": "left", "sent": "2000-01-01T00:00:00Z"}])
    n.seen["web-1"] = (time.time() - 120, "web", False)  # silent for two minutes
    n.offer(notify.unreachable(n.seen, time.time(), 60, n.started - 120), backlog=False)
    (key,) = n.outbox
    assert key.startswith("down/host_unreachable:web-1:")
    n.persist()

    again = notifier(tmp_path)  # restarted: web-1 never heard from since
    again.notifications = {"down": UNREACHABLE}
    assert again.seen["web-1"] == n.seen["web-1"] and again.seen["web-2"][2] is True
    assert again.silent() is None  # a minute from its own start first
    found = list(notify.unreachable(again.seen, again.started + 61, 60, again.started))
    assert [e.host for e in found] == ["web-1"]
    again.offer(found, backlog=False)
    assert list(again.outbox) == [key]  # the same silence, the same id: not a second one
    # A host only the presence stream knows (its agent died before any heartbeat here).
    again.on_presence([{"host_id": "web-3", "state": "alive", "group": "web",
                        "sent": "2026-01-01T00:00:00Z"}])  # fmt: skip
    late = notify.unreachable(again.seen, again.started + 61, 60, again.started)
    assert [e.host for e in late] == ["web-1", "web-3"]
