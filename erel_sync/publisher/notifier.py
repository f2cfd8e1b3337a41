"""`erel-sync notify`: the Notification documents of the published revision, applied to what
the broker carries (core.notify finds the events), delivered over HTTP with retries and
without duplicates after a restart.

- Config: the newest `published` event of `erel.revisions` names the revision; its
  Notification documents are read from the repository (`--repo`, a clone of the config
  repository) and validated with the whole revision, as the publisher did.
- Sources (operator credentials, read-only): `erel.revisions` (rejections), the rollout
  documents (halted, complete, failed hosts), heartbeats (a Failed release; silence for
  `unreachable_after` without presence `left`). The hosts known are kept with the outbox and
  completed from the presence stream at each session start, so a host that died while the
  notifier was down is announced too (`unreachable_after` after the notifier's start).
- Deliveries: each (notification, event id) once. It is written to the outbox in the state
  directory (`notify.json`, atomically) before the first try, retried with backoff (1 s
  doubling to 5 min) until the endpoint answers 2xx, then remembered as sent for a week.
  A restart reads the streams again: what was sent is skipped, what was pending is retried.
  At the very first start, what the streams already hold is taken as sent: the notifier
  announces what happens from then on, not the fleet's past.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from erel_sync.adapters import store
from erel_sync.adapters.broker.opsclient import OpsClient
from erel_sync.adapters.broker.session import keep_session
from erel_sync.adapters.clock import utc_now
from erel_sync.adapters.git.configsource import SourceError, open_repo, read_revision
from erel_sync.adapters.supervisor import Supervisor
from erel_sync.core import notify
from erel_sync.core.notify import Event
from erel_sync.model.notify import NotificationSpec

log = logging.getLogger("erel_sync.notify")

KEEP_SENT = 7 * 24 * 3600.0
RETRY = (1.0, 300.0)
CHECK_EVERY = 1.0  # the outbox and host silence are looked at this often
PRESENCE_SINCE = 3600.0  # presence records read back this far (a live agent sends one in 30 s)


class Notifier:
    def __init__(self, repo: Path, state_dir: Path, urls: Sequence[str]) -> None:
        self.repo_path, self.urls = repo, list(urls)
        self.state_file = state_dir / "notify.json"
        state_dir.mkdir(parents=True, exist_ok=True)
        saved = store.read_json(self.state_file) or {}
        self.since: str = saved.get("since") or utc_now()
        self.sent: dict[str, float] = dict(saved.get("sent") or {})
        self.outbox: dict[str, dict[str, Any]] = dict(saved.get("outbox") or {})
        # host -> (last heard of, unix seconds; its group; said it left)
        self.seen: dict[str, tuple[float, str | None, bool]] = _seen_of(saved.get("seen"))
        self.started = time.time()  # silence is counted from here at the earliest
        self.notifications: Mapping[str, NotificationSpec] = {}
        self.revision: str | None = None
        self.backlog = True  # while the streams' backlog is read
        self.env = os.environ
        self.counters: dict[str, int] = {}  # task restarts (adapters.supervisor)

    # --- state
    def persist(self) -> None:
        now = time.time()
        self.sent = {k: t for k, t in self.sent.items() if now - t < KEEP_SENT}
        self.seen = {h: v for h, v in self.seen.items() if now - v[0] < KEEP_SENT}
        # The hosts heard of go with the deliveries: an unreachable host's id (its last time
        # heard of) is then the same after a restart, and its announcement is not repeated.
        seen = {h: list(v) for h, v in self.seen.items()}
        doc = {"since": self.since, "sent": self.sent, "outbox": self.outbox, "seen": seen}
        store.write_json(self.state_file, doc)

    # --- what the broker carries
    def on_revision(self, doc: dict[str, Any]) -> None:
        if doc.get("kind") == "published" and isinstance(doc.get("revision"), str):
            self._configure(str(doc["revision"]))
        self.offer(notify.from_revision_event(doc), backlog=self.backlog)

    def on_rollout(self, doc: dict[str, Any]) -> None:
        self.offer(notify.from_rollout(doc), backlog=self.backlog)

    def on_heartbeat(self, doc: dict[str, Any]) -> None:
        host = str(doc.get("host_id"))
        self.seen[host] = (time.time(), doc.get("group"), False)
        self.offer(notify.from_heartbeat(doc), backlog=False)

    def on_presence(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Each host's newest presence record: one that said it left is not unreachable (a
        newer heartbeat or record says it is back); a live one counts as heard of."""
        for host, (sent, group, left) in notify.last_presence(docs).items():
            seen, known_group, _ = self.seen.get(host, (0.0, None, False))
            self.seen[host] = (max(seen, sent), group or known_group, left)

    def _watching(self) -> list[NotificationSpec]:
        """The Notifications that want `host_unreachable`."""
        return [n for n in self.notifications.values() if "host_unreachable" in n.events]

    def _unreachable(self, after: float) -> list[Event]:
        return list(notify.unreachable(self.seen, time.time(), after, self.started))

    def silent(self) -> float | None:
        """The shortest `unreachable_after` wanted, if any host has been silent that long."""
        afters = [n.unreachable_after for n in self._watching()]
        return min(afters) if afters and self._unreachable(min(afters)) else None

    def _configure(self, revision: str) -> None:
        if revision == self.revision:
            return
        try:
            with open_repo(self.repo_path) as repo:
                result = read_revision(repo, revision).validate()
        except (SourceError, ValueError, OSError) as e:
            log.error("revision %s: cannot read its Notifications: %s", revision[:12], e)
            return
        if not result.ok:
            log.error(
                "revision %s is not valid here: %d problem(s)", revision[:12], len(result.problems)
            )
            return
        self.revision, self.notifications = revision, result.notifications
        names = ", ".join(sorted(self.notifications)) or "none"
        log.info("revision %s: notifications %s", revision[:12], names)

    # --- deliveries
    def offer(self, events: Iterable[Event], *, backlog: bool) -> None:
        changed = False
        for e in events:
            for n in self.notifications.values():
                if not n.wants(e.event, e.group):
                    continue
                key = f"{n.name}/{e.id}"
                if key in self.sent or key in self.outbox:
                    continue
                if backlog and e.time and e.time < self.since:
                    self.sent[key] = time.time()  # history from before the first start
                else:
                    body = notify.body_of(e, n.endpoint_type).decode()
                    self.outbox[key] = {
                        "notification": n.name, "event": e.event, "id": e.id,
                        "type": n.endpoint_type, "body": body, "attempts": 0, "next": 0.0,
                    }  # fmt: skip
                changed = True
        if changed:
            self.persist()

    async def _check_silence(self, client: OpsClient) -> None:
        """Hosts silent past `unreachable_after`: unreachable unless their presence says they
        left (read only when someone is silent: it appends a marker to the stream)."""
        if self.silent() is None:
            return
        self.on_presence(await client.read_presence(time.time() - PRESENCE_SINCE))
        for n in self._watching():
            self.offer(self._unreachable(n.unreachable_after), backlog=False)

    async def _deliver(
        self, session: aiohttp.ClientSession, key: str, item: dict[str, Any]
    ) -> bool:
        n = self.notifications.get(item["notification"])
        if n is None:
            return False  # no longer configured: kept until it is, or forgotten with the week
        url = n.url or self.env.get(n.url_env or "", "")
        if not url:
            log.error("notification %s: no URL (%s is not set)", n.name, n.url_env)
            return False
        body = item["body"].encode()
        headers = {"Content-Type": "application/json", "User-Agent": "erel-sync-notify",
                   "X-Erel-Event": item["event"], "X-Erel-Delivery": item["id"]}  # fmt: skip
        secret = self.env.get(n.secret_env or "") if n.secret_env else None
        if secret and item["type"] == "webhook":
            headers["X-Erel-Signature"] = notify.signature(secret.encode(), body)
        try:
            async with asyncio.timeout(10):
                async with session.post(url, data=body, headers=headers) as response:
                    ok = 200 <= response.status < 300
                    why = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        if ok:
            log.info("sent %s to %s", key, n.name)
        else:
            log.warning("%s to %s failed (%s); retrying", key, n.name, why)
        return ok

    async def sender(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                now = time.time()
                for key, item in list(self.outbox.items()):  # in the order they came
                    if item["next"] > now:
                        continue
                    if await self._deliver(session, key, item):
                        del self.outbox[key]
                        self.sent[key] = time.time()
                    else:
                        item["attempts"] += 1
                        delay = min(RETRY[1], RETRY[0] * 2 ** (item["attempts"] - 1))
                        item["next"] = time.time() + delay
                    self.persist()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY):
                        await stop.wait()

    async def follow(self, stop: asyncio.Event) -> None:
        """Follow the broker until `stop`; a lost connection is opened again (keep_session)."""

        def failed(e: Exception, delay: float) -> None:
            log.warning("broker: %s; again in %.1fs", e, delay)

        await keep_session(self._session, stop, failed)

    async def _session(self, stop: asyncio.Event) -> None:
        async with OpsClient(self.urls) as client:
            self.backlog = True
            absent = await client.follow_publisher(self.on_revision, self.on_rollout)
            self.backlog = False
            await client.follow_heartbeats(self.on_heartbeat)
            if self._watching():
                self.on_presence(await client.read_presence(time.time() - PRESENCE_SINCE))
            await client.hold(
                stop, every=5 * CHECK_EVERY, tick=lambda: self._check_silence(client), absent=absent
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; a task that keeps dying ends the process (TaskFailed: exit 4)."""
        self.persist()
        halt = asyncio.Event()
        tasks = Supervisor("notify", self.counters, halt)
        try:
            tasks.start("follow", functools.partial(self.follow, halt))
            tasks.start("send", functools.partial(self.sender, halt))
            await tasks.watch(stop)
        finally:
            halt.set()
            await tasks.close()
            with contextlib.suppress(store.StoreError):
                self.persist()


def _seen_of(saved: Any) -> dict[str, tuple[float, str | None, bool]]:
    """The hosts heard of, from notify.json; anything malformed is dropped, not fatal."""
    out: dict[str, tuple[float, str | None, bool]] = {}
    if isinstance(saved, dict):
        for host, v in saved.items():
            if (
                isinstance(host, str) and isinstance(v, list) and len(v) == 3
                and isinstance(v[0], int | float) and isinstance(v[2], bool)
            ):  # fmt: skip
                out[host] = (float(v[0]), v[1] if isinstance(v[1], str) else None, v[2])
    return out
