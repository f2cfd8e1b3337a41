"""The sync agent daemon for one host: broker in, reconcile, heartbeats out.

Called by `erel-sync agent` (and `erel-sync dev`, and the scale benchmark, which runs several
`Agent`s in one process, each with its own connection and store). Starts even when the broker is
down: it reconciles from the snapshot on disk and keeps retrying the broker with backoff.

The `Agent` wires its parts and owns their lives: `agent.intake` (snapshots in: verify, store,
retry, join), `agent.reporter` (status.json, heartbeats, presence), `agent.link` (the broker
session), `agent.control` (operator commands, the local socket), `agent.rollout` (the newest
rollout document: the reconciler's gate), the reconciler, and a scheduler for periodic
reconciles. Long-lived tasks run under `adapters.supervisor`: one that
ends is logged, counted and restarted, and a task crashing in a loop makes `run` raise
TaskFailed (the CLI exits 4). `once` is `erel-sync agent --once`: one join, one tick, one report.
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
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from erel_sync.adapters import store
from erel_sync.adapters.age import AgeError, HostKey
from erel_sync.adapters.broker.errors import BrokerError
from erel_sync.adapters.releases.driver import DriverSettings, ReleaseDriver
from erel_sync.adapters.releases.rendering import fqdn
from erel_sync.adapters.store import SlotFile
from erel_sync.adapters.supervisor import Supervisor
from erel_sync.agent.control import ControlService, serve_socket
from erel_sync.agent.counting import CountingDriver
from erel_sync.agent.intake import Intake
from erel_sync.agent.link import Link
from erel_sync.agent.reconciler import Driver, Reconciler
from erel_sync.agent.reporter import Reporter, read_status
from erel_sync.agent.rollout import (
    RolloutFollower,
    failure_of,
    newest_report,
    restore_report,
)
from erel_sync.core.matching import HostIdentity
from erel_sync.core.metrics import agent_readings
from erel_sync.core.releasestatus import statuses_from_json
from erel_sync.core.rollout import HostReport, HostState
from erel_sync.core.snapshot import Refusal, Snapshot
from erel_sync.model.settings import AgentSettings

if TYPE_CHECKING:
    from erel_sync.adapters.metrics import Metrics

log = logging.getLogger("erel_sync.agent")

ROLLOUT_SEND = 2.0  # how long one rollout event may take to be written
ROLLOUT_SLOT = "rollout-step"  # the `changing` record (store.SlotFile: .slot-a/.slot-b)
STOP_GRACE = 60.0  # SIGTERM: how long a running tick may take to finish
LEAVE_GRACE = 2.0  # SIGTERM: how long the broker session may take to publish `left`
ONCE_JOIN = 5.0  # `--once`: how long the one broker join may take, connection included

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
        # Where other hosts reach this one, resolved once (getfqdn() may ask the resolver):
        # clustered nodes' names, and heartbeats that say so.
        settings = settings.with_overrides(cluster_host=settings.cluster_host or fqdn())
        self.s = settings
        self.state_dir = Path(settings.state_dir)
        self.instance = uuid.uuid4().hex[:12]
        self.counters: Counter[str] = Counter()
        self.metrics: Metrics | None = None  # with `metrics_listen`, once served
        self._rollout_sending: asyncio.Task[None] | None = None  # the newest rollout event
        self.trusted = {k.key_id: k.public_key for k in settings.trusted_keys}
        self.operator_keys = {k.key_id: k.public_key for k in settings.operator_keys}
        self.host_key = HostKey(self.state_dir)  # age: secrets encrypted to this host
        self.driver: Driver = CountingDriver(
            driver
            or ReleaseDriver(
                DriverSettings(
                    releases_dir=Path(settings.releases_dir),
                    cache_dir=Path(settings.cache_dir),
                    host_id=settings.host_id,
                    node_host=settings.node_host,
                    cluster_host=settings.cluster_host,
                    max_unpacked_bytes=settings.max_unpacked_bytes,
                    max_archive_members=settings.max_archive_members,
                    decrypt=self.host_key,
                )
            ),
            self.counters,
        )
        saved = read_status(self.state_dir)
        self._trigger = asyncio.Event()
        self.rollout = RolloutFollower(
            settings.host_id,
            self.trusted,
            self.counters,
            group=lambda: self.reconciler.status.group if self.reconciler.status else None,
            reconcile_now=self._trigger,
        )
        self.reconciler = Reconciler(
            host=HostIdentity(settings.host_id, settings.labels),
            driver=self.driver,
            memory=statuses_from_json(saved.get("memory")),
            holds=dict(saved.get("holds", {})),
            rollout=self.rollout.current,
            on_report=self._send_rollout,
            decrypt=self.host_key,
        )
        self.reconciler.applied = saved.get("applied")
        self.reconciler.attempted = saved.get("attempted")
        # Where the host stood in its rollout (`at`, a failure) survives a restart: the
        # newest of status.json's and the `changing` record written before a gated step.
        self.rollout_slot = SlotFile(self.state_dir / ROLLOUT_SLOT)
        report = newest_report(
            restore_report(saved.get("rollout"), settings.host_id)
            or restore_report(saved.get("report"), settings.host_id),
            restore_report(self.rollout_slot.read_json(), settings.host_id),
        )
        self.reconciler.rollout_report = report
        self.reconciler.rollout_failure = failure_of(report)
        report_now = asyncio.Event()
        self.intake = Intake(
            settings.host_id,
            self.trusted,
            self.state_dir,
            self.reconciler,
            self.counters,
            report_now=report_now,
            reconcile_now=self._trigger,
        )
        self.intake.load()
        self.control = ControlService(self, seen=saved.get("commands_seen"))
        self.reporter = Reporter(
            settings,
            self.instance,
            self.reconciler,
            self.counters,
            self.intake,
            commands_seen=lambda: self.control.seen_mutating,
            connected=lambda: self.link.connected,
            now=report_now,
        )
        self.link = Link(
            settings,
            self.instance,
            self.counters,
            self.intake,
            self.reporter,
            on_snapshot=self.on_snapshot,
            on_command=self.control.handle_remote,
            joined=self._joined,
            rollout=self.rollout,
        )

    # --- the parts' state, as the CLI, tests and benchmarks read it
    @property
    def snapshot(self) -> Snapshot | None:
        return self.reconciler.snapshot

    @property
    def snapshot_store(self) -> SlotFile:
        return self.intake.store

    @property
    def status_file(self) -> Path:
        return self.reporter.status_file

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def store_error(self) -> str | None:
        return self.intake.store_error

    @property
    def snapshot_refused(self) -> Refusal | None:
        return self.intake.refused

    @property
    def _unstored(self) -> Snapshot | None:
        return self.intake.unstored

    async def on_snapshot(self, raw: bytes) -> None:
        """Verify, refuse stale, store atomically; returns only after the write (then acked)."""
        await self.intake.on_snapshot(raw)

    def stored_envelope(self, have: int | None = None) -> bytes | None:
        return self.intake.stored_envelope(have)

    async def persist(self, *, lasting_only: bool = False) -> None:
        await self.reporter.persist(lasting_only=lasting_only)

    def heartbeat(self) -> dict[str, Any]:
        return self.reporter.heartbeat().to_json()

    def history(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.reporter.history]

    def presence(self, state: str = "alive") -> dict[str, Any]:
        return self.reporter.presence(state)

    def request_heartbeat(self) -> None:
        self.reporter.now.set()

    async def _send_rollout(self, report: HostReport) -> None:
        """Publish a new rollout report at once, on the channel the heartbeats take and
        without waiting for a confirm: the step it announces is not held up, and the report
        carries the time the state began (`at`), so an observer orders events by it, not by
        arrival. One channel keeps them in order; a broker that fails costs the event (the
        heartbeats carry the report, and the next session sends it again)."""
        self.reporter.now.set()
        earlier = self._rollout_sending
        if report.state is HostState.CHANGING:
            # On disk before the step it announces: a crash mid-step restarts as `changing`,
            # and the next report, newer, frees the place. Its own small record (one pwrite
            # and one fdatasync), not status.json: that one waits for a heartbeat's write,
            # is encoded whole and costs two fsyncs, all between a grant and its step.
            try:
                self.rollout_slot.write(json.dumps(report.to_json(time="")).encode())
            except store.StoreError as e:
                log.error("%s: cannot record the rollout step: %s", self.s.host_id, e)
            # The controller counts a granted host whatever it says, so the step does not
            # wait for its announcement; events still leave one after another, in order.
            self._rollout_sending = asyncio.create_task(self._announce_step(earlier, report))
            return
        await self._announce_step(earlier, report)

    async def _announce_step(self, earlier: asyncio.Task[None] | None, report: HostReport) -> None:
        if earlier is not None:
            await earlier  # never raises: it is this method
        try:
            async with asyncio.timeout(ROLLOUT_SEND):
                await self.link.send_rollout(report)
        except (BrokerError, TimeoutError) as e:
            log.warning("%s: rollout event not sent (%s)", self.s.host_id, e)

    def _announce_identity(self) -> None:
        """Create the age identity at first start and say its recipient (operators put it
        in git: docs/secrets.md). A damaged key file is logged; secrets are then unreadable."""
        try:
            log.info("%s: age recipient %s", self.s.host_id, self.host_key.recipient())
        except AgeError as e:
            log.error("%s: %s: secrets cannot be decrypted here", self.s.host_id, e)

    def _joined(self) -> None:
        release_free_memory()
        self._trigger.set()  # after a gap, reconcile even if no newer snapshot came
        self.reporter.now.set()

    # --- loops
    async def _reconcile_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._trigger.wait()
            self._trigger.clear()
            if stop.is_set():
                return
            try:
                started = time.perf_counter()
                await self.reconciler.tick()
                if self.metrics is not None:
                    self.metrics.reconcile.observe(time.perf_counter() - started)
                self.reporter.note_tick()
                await self.persist(lasting_only=True)
            except store.StoreError as e:
                log.error("%s: cannot persist status: %s", self.s.host_id, e)
            except Exception:
                log.exception("%s: reconcile tick crashed", self.s.host_id)
            self.reporter.now.set()

    async def _serve_metrics(self, stop: asyncio.Event) -> None:
        # prometheus_client is imported only by an agent that serves metrics.
        from erel_sync.adapters import metrics  # noqa: PLC0415

        self.metrics = self.metrics or metrics.Metrics(
            "agent",
            lambda: self.counters,
            lambda: agent_readings(self.reconciler.report, self.connected),
        )
        await metrics.serve(self.metrics, self.s.metrics_listen, stop)

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
            self._announce_identity()
            await self._run(stop, ready)
        finally:
            self.snapshot_store.close()
            self.rollout_slot.close()
            os.close(lock)

    async def once(self, join_within: float = ONCE_JOIN) -> dict[str, Any]:
        """`erel-sync agent --once`: join the broker once if it answers within `join_within`
        seconds, reconcile once from the snapshot held then, write status.json, and return the
        heartbeat document (the CLI turns it into the exit code). Raises StoreError when
        another agent holds the state directory."""
        lock = store.lock_directory(self.state_dir)
        try:
            await self.link.once(join_within)
            await self.reconciler.tick("once")
            await self.persist()
            return self.heartbeat()
        finally:
            self.snapshot_store.close()
            self.rollout_slot.close()
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
        tasks = Supervisor(f"agent {self.s.host_id}", self.counters, halt)
        self.intake.schedule_retry = functools.partial(
            tasks.start, "store-retry", self.intake.retry_store, until_done=True
        )
        server: asyncio.AbstractServer | None = None
        try:
            tasks.start("reconcile", functools.partial(self._reconcile_loop, halt))
            tasks.start("heartbeat", functools.partial(self.reporter.loop, halt, self.link))
            tasks.start("broker", functools.partial(self.link.loop, halt))
            self._trigger.set()  # reconcile from what is on disk while the broker is away
            if self.s.metrics_listen:
                tasks.start("metrics", functools.partial(self._serve_metrics, halt))
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
            if self._rollout_sending is not None:  # bounded by ROLLOUT_SEND
                await self._rollout_sending
            self.intake.schedule_retry = None
            if self.link.commands:  # operator commands finish their driver step, like a tick
                await asyncio.wait(self.link.commands, timeout=STOP_GRACE)
            with contextlib.suppress(store.StoreError):
                await self.persist()  # the last report, for whoever reads status.json next
