"""Snapshot intake of one agent: verify, refuse, store, retry a failed store, join.

Called by `agent.daemon` (the `Agent` owns one `Intake`), whose broker link feeds it the config
stream's deliveries and the answers of a join. Lives apart from the daemon because it is the
one path by which a desired state enters the host, and it can be tested without a broker.

A delivery (`on_snapshot`) is verified against the trusted keys and its body re-checked; a seq
not newer than the one held is refused (counted as duplicate or stale); a newer one is written
durably and atomically (`store.SlotFile`: `snapshot.slot-a`/`-b`) and only then does the call
return, so that the delivery is acked after the write. A failed write (disk full) leaves the old
snapshot in force, is reported in heartbeats (`store_error`) and retried with backoff. A join
(`join`) asks the publisher first and, when no valid answer comes, every peer: the newest valid
snapshot wins, whatever the stream's tail held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

from erel_sync.adapters import logs, store
from erel_sync.adapters.backoff import Backoff
from erel_sync.adapters.broker import topology as topo
from erel_sync.agent.reconciler import Reconciler
from erel_sync.core.snapshot import (
    Refusal,
    Snapshot,
    SnapshotRejected,
    peek_seq,
    report_refusal,
    verify_envelope,
)

log = logging.getLogger("erel_sync.agent")

JOIN_WINDOW = 0.3  # how long each join round (publisher, then peers) collects answers
STORE_RETRY_MIN, STORE_RETRY_MAX = 1.0, 30.0  # backoff after a failed snapshot write

SnapshotHandler = Callable[[bytes], Awaitable[None]]


class StateRequester(Protocol):
    """What a join needs of the broker (`adapters.broker.session.Session` fits)."""

    async def request_state(
        self, requester: str, *, key: str, have: int | None, window: float
    ) -> list[bytes]: ...


class Intake:
    """The snapshot held by one agent and the way newer ones get in."""

    def __init__(
        self,
        host_id: str,
        trusted: Mapping[str, str],
        state_dir: Path,
        reconciler: Reconciler,
        counters: Counter[str],
        *,
        report_now: asyncio.Event,
        reconcile_now: asyncio.Event,
    ) -> None:
        self.host_id = host_id
        self.trusted = trusted
        self.state_dir = state_dir
        self.store = store.SlotFile(state_dir / "snapshot")
        self.reconciler = reconciler
        self.counters = counters
        self.report_now = report_now  # set when heartbeats should say something new at once
        self.reconcile_now = reconcile_now  # set when a newer snapshot was stored
        self.store_error: str | None = None  # why the newest snapshot could not be stored
        self.refused: Refusal | None = None  # heartbeats report it while in force
        self.unstored: Snapshot | None = None  # the newest snapshot not written yet
        self.arrived: dict[int, float] = {}  # seq -> when it was stored (the newest few)
        # Starts `retry_store` as a supervised task (set by the daemon while it runs).
        self.schedule_retry: Callable[[], None] | None = None

    def load(self) -> None:
        """Take the snapshot on disk, if any and still trusted."""
        store.remove_stale_temps(self.state_dir)
        raw = self.store.read()
        if raw is None:
            return
        try:
            self.reconciler.snapshot = verify_envelope(raw, self.trusted)
        except SnapshotRejected as e:
            # A key rotation or a damaged disk: start empty and rejoin rather than trust it.
            log.error("%s: stored snapshot refused (%s); rejoining", self.host_id, e)

    @property
    def snapshot(self) -> Snapshot | None:
        return self.reconciler.snapshot

    def held_seq(self) -> int:
        return self.snapshot.seq if self.snapshot else 0

    async def on_snapshot(self, raw: bytes) -> None:
        """Verify, refuse stale, store atomically; returns only after the write (then acked)."""
        self.counters["received"] += 1  # from the stream or a join's answer
        try:
            snap = verify_envelope(raw, self.trusted, previous=self.snapshot)
        except SnapshotRejected as e:
            self.counters[f"rejected.{e.reason}"] += 1
            said = logs.fields("snapshot_refused", seq=peek_seq(raw), reason=e.reason)
            log.warning("%s: snapshot refused: %s", self.host_id, e, extra=said)
            # The held snapshot stays in force; the refusal shows in `status` (e.g. AgentTooOld
            # with the version needed) until a newer snapshot is applied.
            verified = self.verified_count()
            before = self.refused
            self.refused = report_refusal(
                before, Refusal.of(e, verified), held_seq=self.held_seq(), verified=verified
            )
            if self.refused is not before:
                self.report_now.set()
            return
        current = self.snapshot
        if current is not None and snap.seq <= current.seq:
            kind = "duplicate" if snap.seq == current.seq else "stale"
            self.counters[kind] += 1
            return
        self.store_snapshot(snap)

    def store_snapshot(self, snap: Snapshot) -> None:
        """Write, then apply. A failed write (disk full) leaves the old snapshot in force, is
        reported in heartbeats (`store_error`) and retried with backoff, and raises so that
        the delivery is not acked."""
        try:
            # On the loop, not in a thread: the slot write is one pwrite and one fdatasync
            # (~0.1 ms here), while handing it to a thread cost more CPU than the write (the
            # thread and the loop trade the GIL at every syscall).
            self.store.write(snap.raw)
        except store.StoreError as e:
            self.counters["store_failures"] += 1
            if self.store_error is None:
                said = logs.fields("snapshot_store_failed", seq=snap.seq, reason="StoreFailed")
                log.error(
                    "%s: cannot store snapshot seq %d: %s", self.host_id, snap.seq, e, extra=said
                )
                self.report_now.set()
            self.store_error = str(e)
            if self.unstored is None or snap.seq > self.unstored.seq:
                self.unstored = snap
            if self.schedule_retry is not None:
                self.schedule_retry()
            raise
        if self.store_error is not None:
            log.info("%s: snapshot store works again", self.host_id)
            self.report_now.set()
        self.store_error = None
        # An older delivery that got through (redelivered once the disk had room) must not
        # drop a newer one still waiting for its retry.
        if self.unstored is not None and self.unstored.seq <= snap.seq:
            self.unstored = None
        self.reconciler.snapshot = snap
        self.counters["applied_snapshots"] += 1
        self.arrived = {
            **{k: v for k, v in self.arrived.items() if k > snap.seq - 8},
            snap.seq: time.time(),
        }
        said = logs.fields("snapshot_stored", seq=snap.seq, revision=snap.revision)
        log.info(
            "%s: snapshot seq %d (%s) stored",
            self.host_id,
            snap.seq,
            snap.revision[:12],
            extra=said,
        )
        self.reconcile_now.set()

    async def retry_store(self) -> None:
        """Store the newest snapshot that could not be written, until it is written or a newer
        one was (the publisher's republish would bring it again too, but only every minute)."""
        backoff = Backoff(STORE_RETRY_MIN, STORE_RETRY_MAX)
        while (snap := self.unstored) is not None:
            await backoff.wait()
            if self.unstored is not snap:
                continue  # a newer delivery tried meanwhile
            current = self.snapshot
            if current is not None and snap.seq <= current.seq:
                self.unstored = None
                return
            with contextlib.suppress(store.StoreError):
                self.store_snapshot(snap)

    def stored_envelope(self, have: int | None = None) -> bytes | None:
        """The answer to a peer's state.request: what is held, when newer than the `have` the
        peer said it holds (an older agent says nothing and always gets it)."""
        snap = self.snapshot
        if snap is None or (have is not None and snap.seq <= have):
            return None
        return snap.raw

    def verified_count(self) -> int:
        """Deliveries that verified so far (applied, duplicate or stale): a refusal whose seq is
        only claimed stays reported until this moves."""
        c = self.counters
        return c["applied_snapshots"] + c["duplicate"] + c["stale"]

    def refusal_in_force(self) -> Refusal | None:
        """The refusal heartbeats report (`snapshot_refused`): the last one, while in force."""
        r = self.refused
        if r is None or not r.in_force(self.held_seq(), self.verified_count()):
            return None
        return r

    async def join(self, broker: StateRequester, offer: SnapshotHandler) -> None:
        """After (re)connecting: end on the newest valid snapshot the cluster has. The stream's
        tail alone is not trusted for that: junk, a refused or a replayed older snapshot at the
        tail (anyone with write on `erel.config` can put one there) would leave a new host with
        nothing or with an old state until the next commit.

        The publisher is asked first, on a key only publishers bind: one answer per joining
        agent, like one republish. The stream tail arrives meanwhile. Only when no valid answer
        came (publisher down, or older than this agent) every peer is asked, told the seq held
        now, and answers only with something newer. Both go through `offer` (the agent's
        `on_snapshot`)."""
        answers = await broker.request_state(
            self.host_id, key=topo.PUBLISHER_STATE_KEY, have=self.held_seq(), window=JOIN_WINDOW
        )
        if await self._take_newest(answers, offer):
            return
        self.counters["joins_via_peers"] += 1
        answers = await broker.request_state(
            self.host_id, key=topo.STATE_REQUEST_KEY, have=self.held_seq(), window=JOIN_WINDOW
        )
        await self._take_newest(answers, offer)

    async def _take_newest(self, answers: list[bytes], offer: SnapshotHandler) -> bool:
        """Offer the answers, newest first, until one verifies (stored when newer, counted as
        duplicate or stale when not). True when one did: the cluster said where it stands.
        Refused ones are counted and reported like any refused delivery."""
        for raw in sorted(answers, key=lambda r: peek_seq(r) or 0, reverse=True):
            verified = self.verified_count()
            try:
                await offer(raw)
            except store.StoreError:
                return True  # reported, and retried by the agent itself
            if self.verified_count() > verified:
                return True
        return False
