"""The publisher daemon: each new commit of the tracked branch -> one signed snapshot.

Called by `erel-sync publisher` (and by `erel-sync dev`). Flow per new head: read the revision
from git objects, validate it as a whole; an invalid one is logged and announced on `erel.status`
(`publisher.rejected`, with every problem) while the last good snapshot stays current; a head
that is an ancestor of the published revision (a force-push rewind) is refused the same way, so
hosts never move backwards. A valid head gets `seq + 1` (persisted before it is published), is
signed, stored, and published with confirms until the broker confirms it, announced as
`publisher.published` (seq, revision, the commits it brings). Both events land in the
`erel.revisions` stream, where `erel-sync wait` finds them. The current snapshot is republished
at start and on a slow timer (heals a wiped broker) and answers `state.request`. The broker
side is one `adapters.broker.session.Session` at a time; `once` serves `--once`.
Beside it run the rollout controller (`publisher.rollout`), fed each snapshot taken, and with
`--metrics-listen` `publisher.observe`. With `--ha` it signs nothing until it holds the
broker's lock (`publisher.lease`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from erel_sync.adapters import store
from erel_sync.adapters.backoff import Backoff
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import BrokerError
from erel_sync.adapters.broker.session import Session, keep_session
from erel_sync.adapters.clock import utc_now
from erel_sync.adapters.git.configsource import SourceError, open_repo, read_revision
from erel_sync.adapters.git.gitwatch import RefWatcher, branch_head, is_ancestor
from erel_sync.adapters.supervisor import Supervisor
from erel_sync.core.epochs import EpochExhausted, next_seq
from erel_sync.core.snapshot import (
    SnapshotRejected,
    build_envelope,
    load_private_key,
    peek_seq,
    public_key_b64,
    verify_envelope,
)
from erel_sync.model.brokerurl import BrokerOrder
from erel_sync.model.problems import Problem
from erel_sync.model.specs import DesiredState
from erel_sync.publisher import events, lease
from erel_sync.publisher.events import EVENT_KEYS, published_event, rejected_event
from erel_sync.publisher.observe import serve_metrics
from erel_sync.publisher.rollout import RolloutController
from erel_sync.publisher.settings import Counters, PublisherSettings
from erel_sync.publisher.streams import config_tail_seqs, ensure_topology

if TYPE_CHECKING:
    from erel_sync.adapters.metrics import Metrics

__all__ = ["Counters", "Publisher", "PublisherSettings"]

log = logging.getLogger("erel_sync.publisher")

ONCE_CONNECT = 5.0  # `--once`: how long connecting to the broker may take
PUBLISH_RETRY = (0.05, 5.0)  # backoff of a failed publish: first and longest delay


class Publisher:
    def __init__(self, settings: PublisherSettings) -> None:
        self.s = settings
        self.key = load_private_key(settings.key_file.read_bytes())
        self.trusted = {settings.key_id: public_key_b64(self.key)}
        self.state_file = settings.state_dir / "publisher.json"
        self.envelope_file = settings.state_dir / "current.envelope.json"
        self.counters = Counters()
        self.metrics: Metrics | None = None  # with `metrics_listen`, once served
        state = store.read_json(self.state_file) or {}
        self.seq: int = int(state.get("seq", 0))
        self.revision: str | None = state.get("revision")
        self.rejected: str | None = state.get("rejected")
        self.envelope: bytes | None = store.read_bytes(self.envelope_file)
        self.state: DesiredState | None = None  # of the envelope, once known
        if self.envelope is not None:
            with contextlib.suppress(SnapshotRejected):
                self.state = verify_envelope(self.envelope, self.trusted).state
        self.rollout = RolloutController(
            state_dir=settings.state_dir,
            key=self.key,
            key_id=settings.key_id,
            trusted=self.trusted,
            operator_keys={k.key_id: k.public_key for k in settings.operator_keys},
            warmup=settings.rollout_warmup,
            counters=self.counters.extra,
            broker_user=settings.broker_user,
        )
        self._retarget()
        self._kick = asyncio.Event()
        self._publish_needed = asyncio.Event()
        self._published = asyncio.Condition()
        self._session: Session | None = None
        self.brokers = BrokerOrder(settings.amqp_urls, settings.key_id)
        self._pending_events: list[dict[str, Any]] = []
        self.connected = False
        self._session_up = asyncio.Event()
        # One repository object for the daemon's life: GitPython keeps its `cat-file` processes,
        # so reading a revision costs no process spawn (a third of the push -> publish time).
        self._repo = open_repo(settings.repo)
        # Closing waits for a read in progress (in a thread), which would restart the readers.
        self._repo_lock = threading.Lock()
        self.epoch: int | None = None  # --ha: the epoch claimed while active; None: standby
        self.standby = asyncio.Event()
        # A head rejected before a restart is checked and announced again once: the event of
        # the rejection lived only in memory, and `wait` reads rejections from the stream.
        self._announced = False

    # --- state
    def _persist(self) -> None:
        state = {"seq": self.seq, "revision": self.revision, "rejected": self.rejected}
        store.write_json(self.state_file, state)

    # --- processing a head
    def close(self) -> None:
        """End GitPython's `cat-file` readers (the GC would warn they still ran)."""
        with self._repo_lock:
            self._repo.close()

    def process_head(self) -> str:
        """Look at the branch head once; returns what happened (for logs and tests)."""
        with self._repo_lock:
            return self._process_head()

    def _process_head(self) -> str:
        if self.s.ha and self.epoch is None:
            return "Standby"  # only the active publisher signs (publisher.lease)
        head = branch_head(self._repo, self.s.branch)
        if head is None:
            return "NoBranch"
        if head == self.revision or (head == self.rejected and self._announced):
            return "Unchanged"
        self._announced = True
        if self.revision and is_ancestor(self._repo, head, self.revision):
            problem = Problem(
                "<git>",
                message=f"{self.s.branch} moved back to {head[:12]}, an ancestor of the "
                f"published {self.revision[:12]}; hosts never move backwards: "
                "revert in a new commit",
            )
            self._reject(head, [problem], reason="Rewind")
            return "Rewind"
        try:
            result = read_revision(self._repo, head).validate()
        except SourceError as e:
            self._reject(head, [Problem("<git>", message=str(e))], reason="Unreadable")
            return "Unreadable"
        if not result.ok or result.state is None:
            self._reject(head, list(result.problems), reason="Invalid")
            return "Invalid"
        try:
            self.seq = self.seq + 1 if self.epoch is None else next_seq(self.seq, self.epoch)
        except (EpochExhausted, ValueError) as e:
            log.error("revision %s not signed: %s (restart the publisher)", head[:12], e)
            return "EpochEnded"
        envelope = build_envelope(result.state, seq=self.seq, revision=head, created=utc_now(),
                                  key=self.key, key_id=self.s.key_id)  # fmt: skip
        # seq is persisted before the publish: a crash in between republishes the same seq.
        store.write_atomic(self.envelope_file, envelope)
        previous = self.revision
        self.revision, self.rejected, self.envelope = head, None, envelope
        self.state = result.state
        self._persist()
        events.log_published(log, head, self.seq)
        for w in result.warnings:  # valid all the same (docs/secrets.md)
            log.warning("revision %s: %s", head[:12], w)
        self._pending_events.append(published_event(self._repo, self.seq, head, previous))
        self.counters.signed += 1
        self._publish_needed.set()
        return "Published"

    def _reject(self, head: str, problems: list[Problem], *, reason: str) -> None:
        self.rejected = head
        self.counters.rejected += 1
        self._persist()
        events.log_rejected(log, head, reason, problems)
        self._pending_events.append(
            rejected_event(
                self._repo, head, problems, reason=reason,
                published_revision=self.revision, published_seq=self.seq,
            )
        )  # fmt: skip
        self._publish_needed.set()

    # --- broker side
    def _retarget(self) -> None:
        """The rollout controller follows the snapshot taken last (on the event loop)."""
        if self.envelope is not None and self.revision and self.state is not None:
            self.rollout.set_target(self.seq, self.revision, self.state)

    async def _take_head(self) -> str:
        # Validation of a big revision takes a few hundred ms: keep the loop responsive.
        outcome = await asyncio.to_thread(self.process_head)
        self._retarget()
        return outcome

    async def _recover_seq_from_stream(self, session: Session) -> None:
        """A publisher on a new machine learns the last seq from the stream tail; if it already
        took a head offline with a lower seq, that head is signed again above the tail."""

        found = await config_tail_seqs(session, self.trusted)
        if found and max(found) >= self.seq and max(found) > 0:
            tail = max(found)
            if tail > self.seq or (self.envelope and peek_seq(self.envelope) != tail):
                log.warning("stream holds seq %d, local %d: continuing above it", tail, self.seq)
                self.seq = tail
                self.revision = self.rejected = None  # re-take the head with a fresh seq
                self._persist()
                await self._take_head()

    async def _publish_current(self, session: Session) -> None:
        while self._pending_events:
            event = self._pending_events[0]
            await session.publish(
                topo.STATUS_EXCHANGE,
                EVENT_KEYS[str(event["kind"])],
                json.dumps(event).encode(),
                mandatory=False,
                persistent=True,  # into the erel.revisions stream (wait, history)
            )
            self._pending_events.pop(0)
        if self.envelope is not None:
            seq, started = peek_seq(self.envelope), time.perf_counter()
            await session.publish(
                topo.CONFIG_EXCHANGE,
                topo.CONFIG_ROUTING_KEY,
                self.envelope,
                message_id=f"snapshot-{seq}",
                user_id=self.s.broker_user,
                headers={"seq": seq, "revision": self.revision or ""},
                persistent=True,
            )
            self.counters.published += 1
            self.rollout.on_stream(seq)
            if self.metrics is not None:
                self.metrics.publish.observe(time.perf_counter() - started)
            async with self._published:
                self._published.notify_all()

    async def _publisher_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(*PUBLISH_RETRY)
        while not stop.is_set():
            await self._publish_needed.wait()
            self._publish_needed.clear()
            if self._session is None:
                return  # the session is gone; the next one publishes
            try:
                await self._publish_current(self._session)
                backoff.reset()
            except BrokerError as e:
                self.counters.publish_failures += 1
                delay = backoff.next()
                log.warning("publish failed, retrying in %.1fs: %s", delay, e)
                self._publish_needed.set()
                await asyncio.sleep(delay)  # backoff

    async def _watch_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.s.poll_interval):
                    await self._kick.wait()
            if self.s.debounce:
                await asyncio.sleep(self.s.debounce)  # debounce: coalesce a burst of ref events
            self._kick.clear()
            try:
                await self._take_head()
            except store.StoreError as e:
                log.error("cannot persist publisher state: %s", e)

    async def _republish_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.s.republish_interval):
                    await stop.wait()
            self._publish_needed.set()
            self.rollout.publish_needed.set()

    async def _open(self, stop: asyncio.Event, attempts: int | None = None) -> Session:
        return await Session.open(
            self.brokers,
            name=f"erel-publisher:{self.s.key_id}",
            heartbeat=self.s.broker_heartbeat,
            stop=stop,
            attempts=attempts,
        )

    async def _broker_session(self, stop: asyncio.Event) -> None:
        """One connection's life (the publisher owns it, as the agent does): topology, seq
        recovery, state.request answers, the rollout controller's inputs, publishing; raises
        when anything of it is lost."""
        async with await self._open(stop) as session:
            self._session, ha = session, self.s.ha
            try:
                stream_ok = await ensure_topology(session, self.counters.extra)
                # Stand by until active (publisher.lease); --ha claims an epoch too.
                epoch = await lease.activate(session, stop, self.standby, self.s.key_id, ha=ha)
                if epoch is None:
                    return
                if ha:
                    self.epoch = self.rollout.epoch = epoch
                if stream_ok:
                    await self._recover_seq_from_stream(session)
                if self.s.ha:
                    await self._take_head()  # what the other publisher left, or a new head
                # `state.request.publisher` too: joining agents ask the publisher alone first.
                await session.serve_state_requests(
                    self._answer,
                    queue_name="erel.publisher.state",
                    keys=(topo.STATE_REQUEST_KEY, topo.PUBLISHER_STATE_KEY),
                )
                await self.rollout.attach(session)
                self.connected = True
                self._session_up.set()
                self._publish_needed.set()  # (re)publish the current snapshot on every session
                publishing = asyncio.create_task(self._publishing(session, stop), name="publishing")
                await session.hold(stop, stream_ok=stream_ok, also=publishing)
            finally:
                self.rollout.detach()
                self.connected = False
                self._session = None
                self.epoch = self.rollout.epoch = None  # --ha: signs again only once active

    async def _publishing(self, session: Session, stop: asyncio.Event) -> None:
        """Snapshots and rollout documents, each with its own retries: a rollout stream that
        is missing holds up no snapshot."""
        async with asyncio.TaskGroup() as loops:
            loops.create_task(self._publisher_loop(stop))
            loops.create_task(self.rollout.publishing(session, stop))
            loops.create_task(self.rollout.delivery.run(session, stop))

    async def _broker_loop(self, stop: asyncio.Event) -> None:
        def failed(e: Exception, delay: float) -> None:
            self.counters.publish_failures += 1
            log.warning("BrokerDisconnected (%s); retry in %.1fs", e, delay)

        await keep_session(self._broker_session, stop, failed)

    async def once(self, connect_within: float = ONCE_CONNECT) -> tuple[str, bool]:
        """`publisher --once`: take the head, publish if a broker answers within
        `connect_within` s: (what `process_head` said, published?); later errors raise."""
        self.s.state_dir.mkdir(parents=True, exist_ok=True)
        outcome = await self._take_head()
        try:
            async with asyncio.timeout(connect_within):
                session = await self._open(asyncio.Event(), attempts=1)
        except (BrokerError, TimeoutError) as e:
            log.error("no broker reachable: %s", e)
            return outcome, False
        async with session:
            if not await session.take_lock(topo.PUBLISHER_LOCK):
                log.error("another publisher is active on this broker: not published")
                return outcome, False
            if await ensure_topology(session, self.counters.extra):
                await self._recover_seq_from_stream(session)
            await self._publish_current(session)
        return outcome, True

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Heads are taken (validated, signed, stored) from the start, with or without a broker;
        the broker session publishes them when it can."""
        self.s.state_dir.mkdir(parents=True, exist_ok=True)
        watcher = RefWatcher(self.s.repo)
        await self._take_head()
        watcher.start(asyncio.get_running_loop(), self._kick.set)
        # The loops stop on `halt`: the caller's stop, or the supervisor giving up on a task
        # (then `run` raises TaskFailed and the CLI exits 4).
        halt = asyncio.Event()
        tasks = Supervisor(f"publisher {self.s.key_id}", self.counters.extra, halt)
        try:
            tasks.start("watch", functools.partial(self._watch_loop, halt))
            tasks.start("republish", functools.partial(self._republish_loop, halt))
            tasks.start("broker", functools.partial(self._broker_loop, halt))
            tasks.start("rollout", functools.partial(self.rollout.run, halt))
            if self.s.metrics_listen:
                tasks.start("metrics", functools.partial(serve_metrics, self, halt))
            if ready is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(60):
                        await self._session_up.wait()
                ready.set()
            await tasks.watch(stop)
        finally:
            halt.set()
            watcher.stop()
            try:
                await tasks.close()
            finally:
                await asyncio.to_thread(self.close)

    def _answer(self, have: int | None = None) -> bytes | None:
        """The current snapshot, whatever the requester holds: the authority it checks."""
        del have
        self.counters.answered_requests += 1
        return self.envelope
