"""The sync agent daemon for one host: broker in, reconcile, heartbeats out.

Called by `erel-sync agent` (and `erel-sync dev`, and the scale benchmark, which runs several
`Agent`s in one process, each with its own connection and store). Starts even when the broker is
down: it reconciles from the snapshot on disk and keeps retrying the broker with backoff.

Snapshot intake (`on_snapshot`): verify the signature against the trusted keys and re-check the
body, refuse a seq not newer than the one held (counted), write it durably and atomically (a
`store.SlotFile`: `snapshot.slot-a`/`-b`), and only then return so the delivery is acked; then
trigger a reconcile. Join (`_join`): consume the config stream from `last` and ask the
publisher with `state.request.publisher`; only when no valid answer comes, ask every peer
(`state.request`, saying which seq is held); the newest valid snapshot wins, whatever the tail
held. Long-lived tasks run under `adapters.supervisor`: one that ends is logged, counted and
restarted, and a task crashing in a loop makes `run` raise TaskFailed (the CLI exits 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import logging
import os
import random
import socket
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiormq
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from erel_sync import __version__
from erel_sync.adapters import store
from erel_sync.adapters.broker import messages as broker
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.releases.driver import DriverSettings, ReleaseDriver
from erel_sync.adapters.supervisor import Supervisor
from erel_sync.agent.control import ControlService, serve_socket
from erel_sync.agent.reconciler import Driver, Reconciler, utc_now
from erel_sync.core.matching import HostIdentity
from erel_sync.core.snapshot import (
    Refusal,
    Snapshot,
    SnapshotRejected,
    peek_seq,
    report_refusal,
    verify_envelope,
)
from erel_sync.core.status import memory_from_json, memory_to_json
from erel_sync.model.settings import AgentSettings

log = logging.getLogger("erel_sync.agent")

JOIN_WINDOW = 0.3  # how long each join round (publisher, then peers) collects answers
STOP_GRACE = 60.0  # SIGTERM: how long a running tick may take to finish
LEAVE_GRACE = 2.0  # SIGTERM: how long the broker session may take to publish `left`
REPORT_SPACING = 1.0  # seconds between two change-driven heartbeats
STORE_RETRY_MIN, STORE_RETRY_MAX = 1.0, 30.0  # backoff after a failed snapshot write


_memory_released = False


def release_free_memory() -> None:
    """Hand memory freed after start-up (import and schema-compile garbage) back to the OS, once
    per process (a full collection is not free when many agents share one process).

    glibc keeps freed heap pages; a long-lived daemon that did its big allocations at start
    would otherwise carry them for its whole life (measured: 4 MiB of idle RSS)."""
    global _memory_released  # noqa: PLW0603 - one process-wide fact
    if _memory_released:
        return
    _memory_released = True
    gc.collect()
    # What is alive now (modules, compiled schemas, settings) lives as long as the process:
    # out of the collector's sight, full collections stay short pauses in the hot path.
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Agent:
    def __init__(self, settings: AgentSettings, *, driver: Driver | None = None) -> None:
        self.s = settings
        self.state_dir = Path(settings.state_dir)
        self.snapshot_store = store.SlotFile(self.state_dir / "snapshot")
        self.status_file = self.state_dir / "status.json"
        self.instance = uuid.uuid4().hex[:12]
        self.counters: Counter[str] = Counter()
        self.trusted = {k.key_id: k.public_key for k in settings.trusted_keys}
        self.operator_keys = {k.key_id: k.public_key for k in settings.operator_keys}
        self.connected = False
        self.driver: Driver = driver or ReleaseDriver(
            DriverSettings(
                releases_dir=Path(settings.releases_dir),
                cache_dir=Path(settings.cache_dir),
                host_id=settings.host_id,
                node_host=settings.node_host,
                max_unpacked_bytes=settings.max_unpacked_bytes,
                max_archive_members=settings.max_archive_members,
            )
        )
        saved = store.read_json(self.status_file) or {}
        self.reconciler = Reconciler(
            host=HostIdentity(settings.host_id, settings.labels),
            driver=self.driver,
            memory=memory_from_json(saved.get("memory")),
            holds=dict(saved.get("holds", {})),
        )
        self.reconciler.applied = saved.get("applied")
        self.reconciler.attempted = saved.get("attempted")
        self._load_snapshot()
        self._trigger = asyncio.Event()
        self._channels: broker.Channels | None = None
        self._heartbeat_now = asyncio.Event()
        self._persisted: tuple[str, bytes] = ("", b"")  # (failure memory + holds, whole file)
        self.control = ControlService(self, seen=saved.get("commands_seen"))
        self._commands: set[asyncio.Task[bytes | None]] = set()
        self._presence_group: str | None = None
        self.store_error: str | None = None  # why the newest snapshot could not be stored
        self.snapshot_refused: Refusal | None = None  # heartbeats report it while in force
        self._unstored: Snapshot | None = None
        self._supervisor: Supervisor | None = None  # the long-lived tasks, while `run` runs

    # --- snapshots
    def _load_snapshot(self) -> None:
        store.remove_stale_temps(self.state_dir)
        raw = self.snapshot_store.read()
        if raw is None:
            return
        try:
            self.reconciler.snapshot = verify_envelope(raw, self.trusted)
        except SnapshotRejected as e:
            # A key rotation or a damaged disk: start empty and rejoin rather than trust it.
            log.error("%s: stored snapshot refused (%s); rejoining", self.s.host_id, e)

    @property
    def snapshot(self) -> Snapshot | None:
        return self.reconciler.snapshot

    async def on_snapshot(self, raw: bytes) -> None:
        """Verify, refuse stale, store atomically; returns only after the write (then acked)."""
        try:
            snap = verify_envelope(raw, self.trusted, previous=self.snapshot)
        except SnapshotRejected as e:
            self.counters[f"rejected.{e.reason}"] += 1
            log.warning("%s: snapshot refused: %s", self.s.host_id, e)
            # The held snapshot stays in force; the refusal shows in `status` (e.g. AgentTooOld
            # with the version needed) until a newer snapshot is applied.
            held = self.snapshot.seq if self.snapshot else 0
            verified = self._verified_count()
            refusal = Refusal.of(e, verified)
            before = self.snapshot_refused
            self.snapshot_refused = report_refusal(
                before, refusal, held_seq=held, verified=verified
            )
            if self.snapshot_refused is not before:
                self._heartbeat_now.set()
            return
        current = self.snapshot
        if current is not None and snap.seq <= current.seq:
            kind = "duplicate" if snap.seq == current.seq else "stale"
            self.counters[kind] += 1
            return
        self._store(snap)

    def _store(self, snap: Snapshot) -> None:
        """Write, then apply. A failed write (disk full) leaves the old snapshot in force, is
        reported in heartbeats (`store_error`) and retried with backoff, and raises so that
        the delivery is not acked."""
        try:
            # On the loop, not in a thread: the slot write is one pwrite and one fdatasync
            # (~0.1 ms here), while handing it to a thread cost more CPU than the write (the
            # thread and the loop trade the GIL at every syscall).
            self.snapshot_store.write(snap.raw)
        except store.StoreError as e:
            self.counters["store_failures"] += 1
            if self.store_error is None:
                log.error("%s: cannot store snapshot seq %d: %s", self.s.host_id, snap.seq, e)
                self._heartbeat_now.set()
            self.store_error = str(e)
            if self._unstored is None or snap.seq > self._unstored.seq:
                self._unstored = snap
            if self._supervisor is not None:
                self._supervisor.start("store-retry", self._retry_store, until_done=True)
            raise
        if self.store_error is not None:
            log.info("%s: snapshot store works again", self.s.host_id)
            self._heartbeat_now.set()
        self.store_error = None
        self._unstored = None
        self.reconciler.snapshot = snap
        self.counters["applied_snapshots"] += 1
        log.info("%s: snapshot seq %d (%s) stored", self.s.host_id, snap.seq, snap.revision[:12])
        self._trigger.set()

    async def _retry_store(self) -> None:
        """Store the newest snapshot that could not be written, until it is written or a newer
        one was (the publisher's republish would bring it again too, but only every minute)."""
        delay = STORE_RETRY_MIN
        while (snap := self._unstored) is not None:
            await asyncio.sleep(delay)  # backoff
            delay = min(STORE_RETRY_MAX, delay * 2)
            if self._unstored is not snap:
                continue  # a newer delivery tried meanwhile
            current = self.snapshot
            if current is not None and snap.seq <= current.seq:
                self._unstored = None
                return
            with contextlib.suppress(store.StoreError):
                self._store(snap)

    def stored_envelope(self, have: int | None = None) -> bytes | None:
        """The answer to a peer's state.request: what is held, when newer than the `have` the
        peer said it holds (an older agent says nothing and always gets it)."""
        snap = self.snapshot
        if snap is None or (have is not None and snap.seq <= have):
            return None
        return snap.raw

    def _held_seq(self) -> int:
        return self.snapshot.seq if self.snapshot else 0

    async def _join(self, channel: Any) -> None:
        """After (re)connecting: end on the newest valid snapshot the cluster has. The stream's
        tail alone is not trusted for that: junk, a refused or a replayed older snapshot at the
        tail (anyone with write on `erel.config` can put one there) would leave a new host with
        nothing or with an old state until the next commit.

        The publisher is asked first, on a key only publishers bind: one answer per joining
        agent, like one republish. The stream tail arrives meanwhile. Only when no valid answer
        came (publisher down, or older than this agent) every peer is asked, told the seq held
        now, and answers only with something newer. Both go through `on_snapshot`."""
        answers = await broker.request_state(
            channel,
            self.s.host_id,
            key=topo.PUBLISHER_STATE_KEY,
            have=self._held_seq(),
            window=JOIN_WINDOW,
        )
        if await self._take_newest(answers):
            return
        self.counters["joins_via_peers"] += 1
        answers = await broker.request_state(
            channel, self.s.host_id, have=self._held_seq(), window=JOIN_WINDOW
        )
        await self._take_newest(answers)

    async def _take_newest(self, answers: list[bytes]) -> bool:
        """Offer the answers to `on_snapshot`, newest first, until one verifies (stored when
        newer, counted as duplicate or stale when not). True when one did: the cluster said
        where it stands. Refused ones are counted and reported like any refused delivery."""
        for raw in sorted(answers, key=lambda r: peek_seq(r) or 0, reverse=True):
            verified = self._verified_count()
            try:
                await self.on_snapshot(raw)
            except store.StoreError:
                return True  # reported, and retried by the agent itself
            if self._verified_count() > verified:
                return True
        return False

    # --- status
    async def persist(self, *, lasting_only: bool = False) -> None:
        """Write status.json when it changed; fsync only when what must survive a power loss
        changed (failure memory, holds, the ids of mutating commands that ran). The report and
        counters change on every tick, and losing the newest of them costs only freshness:
        they are written with the (coalesced) heartbeats as a plain tmp + rename.
        `lasting_only`: write only if what must survive changed (after each tick)."""
        r = self.reconciler
        memory = memory_to_json(r.memory)
        seen = self.control.seen_mutating
        lasting = json.dumps({"memory": memory, "holds": r.holds, "seen": seen}, sort_keys=True)
        doc = {
            "memory": memory,
            "holds": r.holds,
            "commands_seen": seen,
            "applied": r.applied,
            "attempted": r.attempted,
            "report": r.report,
            "counters": dict(self.counters),
        }
        if lasting_only and lasting == self._persisted[0]:
            return
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        if data == self._persisted[1]:
            return
        store.write_atomic(self.status_file, data, durable=lasting != self._persisted[0])
        self._persisted = (lasting, data)

    def heartbeat(self) -> dict[str, Any]:
        doc = dict(self.reconciler.report) or {
            "format": 1,
            "kind": "heartbeat",
            "host_id": self.s.host_id,
            "labels": dict(self.s.labels),
        }
        doc.update(
            {
                "agent_version": __version__,
                "instance": self.instance,
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "broker": "connected" if self.connected else "BrokerDisconnected",
                "store_error": self.store_error,
                "snapshot_refused": self._refusal_report(),
                # What a reader may expect between two heartbeats: never under the spacing.
                "heartbeat_interval": max(self.s.heartbeat_interval, REPORT_SPACING),
                "counters": dict(self.counters),
                "sent": utc_now(),
            }
        )
        return doc

    def _verified_count(self) -> int:
        """Deliveries that verified so far (applied, duplicate or stale): a refusal whose seq is
        only claimed stays reported until this moves."""
        c = self.counters
        return c["applied_snapshots"] + c["duplicate"] + c["stale"]

    def _refusal_report(self) -> dict[str, Any] | None:
        r = self.snapshot_refused
        held = self.snapshot.seq if self.snapshot else 0
        if r is None or not r.in_force(held, self._verified_count()):
            return None
        return r.to_json()

    def request_heartbeat(self) -> None:
        self._heartbeat_now.set()

    def presence(self, state: str = "alive") -> dict[str, Any]:
        """The small record on the presence stream: who this agent is, that it lives."""
        return {
            "format": 1,
            "kind": "presence",
            "state": state,
            "host_id": self.s.host_id,
            "instance": self.instance,
            "group": self.reconciler.report.get("group"),
            "labels": dict(self.s.labels),
            "agent_version": __version__,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "sent": utc_now(),
            "heartbeat_interval": self.s.heartbeat_interval,
            "presence_interval": topo.PRESENCE_INTERVAL,
        }

    async def _publish_presence(self, state: str = "alive") -> None:
        if self._channels is None or not self.connected:
            return
        self._presence_group = self.reconciler.report.get("group")
        channel = await self._channels.consuming()
        await broker.publish(
            channel,
            topo.STATUS_EXCHANGE,
            topo.presence_key(self.s.host_id),
            json.dumps(self.presence(state)).encode(),
            mandatory=False,
        )

    async def _on_command(self, raw: bytes) -> bytes | None:
        """A remote command runs in a task of the agent's own: a broker loss cancels the
        delivery's task, and must not cut a driver step in the middle."""
        task = asyncio.create_task(self.control.handle_remote(raw))
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        return await asyncio.shield(task)

    async def _publish_heartbeat(self) -> None:
        if self._channels is None or not self.connected:
            return
        # Heartbeats are periodic and superseded by the next one: no confirm round trip.
        channel = await self._channels.consuming()
        await broker.publish(
            channel,
            topo.STATUS_EXCHANGE,
            f"host.{self.s.host_id}",
            json.dumps(self.heartbeat()).encode(),
            mandatory=False,
        )

    # --- loops
    async def _reconcile_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._trigger.wait()
            self._trigger.clear()
            if stop.is_set():
                return
            try:
                await self.reconciler.tick()
                await self.persist(lasting_only=True)
            except store.StoreError as e:
                log.error("%s: cannot persist status: %s", self.s.host_id, e)
            except Exception:
                log.exception("%s: reconcile tick crashed", self.s.host_id)
            self._heartbeat_now.set()

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last = -REPORT_SPACING
        last_presence = -topo.PRESENCE_INTERVAL
        # Jittered, so agents started together (a fleet reboot, a benchmark) do not report in
        # lockstep bursts that the broker and every other agent's intake then queue behind.
        presence_every = topo.PRESENCE_INTERVAL * random.uniform(0.8, 1.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.s.heartbeat_interval * random.uniform(0.9, 1.1)):
                    await self._heartbeat_now.wait()
            # Change reports coalesce: a burst of commits is reported at most once per
            # REPORT_SPACING, carrying the newest state, instead of once per tick.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(last + REPORT_SPACING - loop.time()):
                    await stop.wait()
            self._heartbeat_now.clear()
            try:
                await self.persist()
            except store.StoreError as e:
                log.error("%s: cannot persist status: %s", self.s.host_id, e)
            with contextlib.suppress(broker.BrokerError):
                await self._publish_heartbeat()
                group_changed = self.reconciler.report.get("group") != self._presence_group
                if group_changed or loop.time() - last_presence >= presence_every:
                    await self._publish_presence()
                    last_presence = loop.time()
            last = loop.time()

    async def _broker_loop(self, stop: asyncio.Event) -> None:
        """Keep a broker session up while reconciling goes on from the disk."""

        def failed(e: Exception, delay: float) -> None:
            self.connected = False
            self.counters["broker_errors"] += 1
            log.warning("%s: BrokerDisconnected (%s); retry in %.1fs", self.s.host_id, e, delay)

        await broker.keep_session(self._broker_session, stop, failed)

    async def _broker_session(self, stop: asyncio.Event) -> None:
        """One connection's life: consume the stream, answer peers, join; returns at stop and
        raises when anything of it is lost (connection, channel, or the stream consumer, which
        the broker cancels when the stream is deleted), so `_broker_loop` rebuilds it."""
        connection = await broker.connect(
            self.s.amqp_urls,
            name=f"erel-agent:{self.s.host_id}",
            heartbeat=self.s.broker_heartbeat,
            stop=stop,
            robust=False,
        )
        broken = asyncio.Event()
        self._channels = broker.Channels(connection)
        try:
            connection.close_callbacks.add(lambda *_: broken.set())
            consume = await self._channels.consuming()
            consume.close_callbacks.add(lambda *_: broken.set())
            stream_ok = await self._consume_stream(connection, broken)
            await broker.serve_state_requests(
                consume,
                self.stored_envelope,
                queue_name=topo.agent_queue(self.s.host_id, f"state.{self.instance}"),
            )
            await broker.serve_control(consume, self.s.host_id, self.instance, self._on_command)
            self.connected = True
            self.counters["connects"] += 1
            await self._join(await self._channels.publishing())
            release_free_memory()
            self._trigger.set()  # after a gap, reconcile even if no newer snapshot came
            self._heartbeat_now.set()
            with contextlib.suppress(broker.BrokerError):
                await self._publish_presence()
            # Without the stream (down on the broker) the agent still joined through peers; the
            # session is rebuilt after a while to pick the stream up again.
            await broker.hold_session(stop, broken, stream_ok=stream_ok)
            if stop.is_set():
                # A clean stop says so: `status` then does not list this host as unreachable.
                with contextlib.suppress(broker.BrokerError, aiormq.exceptions.AMQPError):
                    await self._publish_presence("left")
        finally:
            self.connected = False
            self._channels = None
            with contextlib.suppress(Exception):
                await connection.close()

    async def _consume_stream(self, connection: Any, broken: asyncio.Event) -> bool:
        """Consume the config stream on a channel of its own (a missing or down stream closes
        only that channel); any later loss of it marks the session broken."""
        channel = await connection.channel(publisher_confirms=False)
        try:
            await broker.consume_snapshots(channel, self.on_snapshot, offset="last", passive=True)
        except (broker.BrokerError, aiormq.exceptions.AMQPError) as e:
            log.warning("%s: config stream unavailable (%s); joining via peers", self.s.host_id, e)
            self.counters["stream_unavailable"] += 1
            return False
        channel.close_callbacks.add(lambda *_: broken.set())
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(lambda *_: broken.set())
        return True

    async def _serve_socket(self) -> asyncio.AbstractServer | None:
        path = Path(self.s.control_socket_path)
        try:
            return await serve_socket(path, self.control.handle_local, group=self.s.control_group)
        except (OSError, KeyError) as e:
            # The agent still reconciles and takes signed remote commands without it.
            log.error("%s: no local control socket at %s: %s", self.s.host_id, path, e)
            return None

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until `stop` is set. Raises StoreError at once when another agent holds the
        state directory, and `supervisor.TaskFailed` (after a clean shutdown) when one of its
        tasks kept ending: the process should then exit non-zero and be restarted."""
        lock = store.lock_directory(self.state_dir)
        try:
            await self._run(stop, ready)
        finally:
            self.snapshot_store.close()
            os.close(lock)

    async def _run(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            self._trigger.set,
            "interval",
            seconds=self.s.reconcile_interval,
            max_instances=1,
            coalesce=True,
            jitter=max(0.0, self.s.reconcile_interval * 0.1),
            id="reconcile",
        )
        scheduler.start()
        # The loops stop on `halt`: the caller's stop, or the supervisor giving up on a task.
        halt = asyncio.Event()
        tasks = self._supervisor = Supervisor(f"agent {self.s.host_id}", self.counters, halt)
        server: asyncio.AbstractServer | None = None
        try:
            tasks.start("reconcile", functools.partial(self._reconcile_loop, halt))
            tasks.start("heartbeat", functools.partial(self._heartbeat_loop, halt))
            tasks.start("broker", functools.partial(self._broker_loop, halt))
            self._trigger.set()  # reconcile from what is on disk while the broker is away
            server = await self._serve_socket()
            if ready is not None:
                ready.set()
            await tasks.watch(stop)
        finally:
            halt.set()
            if server is not None:
                server.close()
            scheduler.shutdown(wait=False)
            # A tick in progress finishes its current steps (the driver journals each one)
            # rather than being cut in the middle of an upgrade; the broker session says it
            # leaves (presence `left`), if it can at once; the other tasks are cancelled.
            self._trigger.set()
            await tasks.close(finish={"reconcile": STOP_GRACE, "broker": LEAVE_GRACE})
            if self._commands:  # operator commands finish their driver step, like a tick
                await asyncio.wait(self._commands, timeout=STOP_GRACE)
            with contextlib.suppress(store.StoreError):
                await self.persist()  # the last report, for whoever reads status.json next
