"""Supervision of a daemon's long-lived asyncio tasks: none of them ever ends silently.

Used by `agent.daemon` and `publisher.daemon` for every loop they keep for their whole life
(reconcile, heartbeats, broker session, ref watcher, republish, the snapshot store retry). Lives
in `adapters` because it drives asyncio tasks; `model` and `core` stay pure.

A supervised task that ends while the daemon is not stopping is a fault, whatever the way it
ended: it raised, it returned, or it was cancelled by something other than the supervisor
(aiormq hands a `CancelledError` to whoever awaited a future of a connection that died; a loop
that lets it through looks cancelled, not crashed). Such an end is logged with the task's name
and cause, counted in the daemon's counters as `task_restarts.<name>` (they go out with the
heartbeats) and the task is started again after a backoff (RESTART_MIN doubling to RESTART_MAX;
back to RESTART_MIN once a run lasted RESTART_WINDOW). Past the budget, more than RESTART_BUDGET
restarts of one task within RESTART_WINDOW seconds, the supervisor gives up: `watch()` raises
`TaskFailed`, the daemon shuts down what is left as on SIGTERM and the CLI exits 4 so that systemd
restarts the whole process. Never a half-alive daemon.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RESTART_BUDGET = 5  # restarts of one task tolerated within RESTART_WINDOW
RESTART_WINDOW = 300.0  # seconds
RESTART_MIN, RESTART_MAX = 0.5, 30.0  # backoff before a restart
CAUSE_LIMIT = 300  # characters of a cause kept in logs and TaskFailed

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class TaskFailed(Exception):
    """A supervised task kept ending and used up its restart budget: the process should exit
    non-zero and be restarted by its own supervisor (systemd)."""

    reason = "RestartBudgetExhausted"

    def __init__(self, owner: str, name: str, restarts: int, window: float, cause: str) -> None:
        self.owner, self.name, self.cause = owner, name, cause
        super().__init__(
            f"{self.reason}: {owner}: task {name!r} ended {restarts + 1} times within "
            f"{window:.0f}s, last: {cause}"
        )


@dataclass
class _Slot:
    name: str
    factory: TaskFactory
    until_done: bool  # a plain return ends it for good (work that has an end)
    task: asyncio.Task[None] | None = None
    started: float = 0.0
    delay: float = RESTART_MIN
    restarts: deque[float] = field(default_factory=deque)
    timer: asyncio.TimerHandle | None = None


def describe_end(task: asyncio.Task[None]) -> str | None:
    """Why a task ended, or None when it simply returned. Bounded, one line."""
    if task.cancelled():
        return "cancelled by something other than the daemon (CancelledError)"
    exc = task.exception()
    if exc is None:
        return None
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:CAUSE_LIMIT]


class Supervisor:
    """The long-lived tasks of one daemon. `stopping` is the daemon's own stop signal: a task
    ending once it is set is expected, not a fault."""

    def __init__(
        self,
        owner: str,
        counters: MutableMapping[str, int],
        stopping: asyncio.Event,
        *,
        budget: int = RESTART_BUDGET,
        window: float = RESTART_WINDOW,
        backoff: tuple[float, float] = (RESTART_MIN, RESTART_MAX),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.owner = owner
        self.counters = counters
        self.stopping = stopping
        self.budget, self.window = budget, window
        self.backoff_min, self.backoff_max = backoff
        self.clock = clock
        self._slots: dict[str, _Slot] = {}
        self._closing = False
        self.failure: TaskFailed | None = None
        self._gave_up = asyncio.Event()

    # --- tasks
    def start(self, name: str, factory: TaskFactory, *, until_done: bool = False) -> None:
        """Run `factory()` as the task `name`, unless it is running (or waiting to restart)
        already. `until_done`: a plain return is its normal end (it is not restarted), while an
        exception or a foreign cancellation still is a fault."""
        if self._closing:
            return
        slot = self._slots.get(name)
        if slot is not None and (slot.timer is not None or not _ended(slot.task)):
            return
        if slot is None:
            slot = self._slots[name] = _Slot(name, factory, until_done, delay=self.backoff_min)
        slot.factory, slot.until_done = factory, until_done
        self._spawn(slot)

    def running(self, name: str) -> bool:
        slot = self._slots.get(name)
        return slot is not None and (slot.timer is not None or not _ended(slot.task))

    def task(self, name: str) -> asyncio.Task[None] | None:
        slot = self._slots.get(name)
        return slot.task if slot is not None else None

    def _spawn(self, slot: _Slot) -> None:
        slot.timer = None
        if self._closing:
            return
        slot.started = self.clock()
        slot.task = asyncio.get_running_loop().create_task(
            slot.factory(), name=f"{self.owner}:{slot.name}"
        )
        slot.task.add_done_callback(functools.partial(self._ended, slot))

    def _ended(self, slot: _Slot, task: asyncio.Task[None]) -> None:
        if task is not slot.task:
            return
        cause = describe_end(task)
        exc = None if task.cancelled() else task.exception()
        if self._closing or self.stopping.is_set():
            if cause is not None and not task.cancelled():
                log.warning("%s: task %s ended while stopping: %s", self.owner, slot.name, cause)
            return
        if cause is None:
            if slot.until_done:
                return
            cause = "returned while the daemon runs"
        now = self.clock()
        if now - slot.started >= self.window:
            slot.delay = self.backoff_min  # it had been healthy for a while: a fresh start
        while slot.restarts and now - slot.restarts[0] > self.window:
            slot.restarts.popleft()
        if len(slot.restarts) >= self.budget:
            self.failure = TaskFailed(self.owner, slot.name, len(slot.restarts), self.window, cause)
            log.error("%s; giving up", self.failure, exc_info=exc)
            self._gave_up.set()
            return
        slot.restarts.append(now)
        self.counters[f"task_restarts.{slot.name}"] = (
            self.counters.get(f"task_restarts.{slot.name}", 0) + 1
        )
        log.error(
            "%s: task %s ended (%s); restart %d in %.1fs",
            self.owner,
            slot.name,
            cause,
            len(slot.restarts),
            slot.delay,
            exc_info=exc,
        )
        slot.timer = asyncio.get_running_loop().call_later(slot.delay, self._spawn, slot)
        slot.delay = min(self.backoff_max, slot.delay * 2)

    # --- the daemon's side
    async def watch(self, stop: asyncio.Event) -> None:
        """Return when `stop` is set; raise TaskFailed as soon as a task used up its budget."""
        stopped = asyncio.ensure_future(stop.wait())
        gave_up = asyncio.ensure_future(self._gave_up.wait())
        try:
            await asyncio.wait({stopped, gave_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            gave_up.cancel()
        if self.failure is not None and not stop.is_set():
            raise self.failure

    async def close(self, finish: Mapping[str, float] | None = None) -> None:
        """Stop supervising and end every task. `finish`: task name -> seconds it may run on to
        end by itself (a reconcile tick finishing its step, a session saying goodbye); the
        others are cancelled at once, and these once their time is up."""
        self._closing = True
        finish = finish or {}
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
                slot.timer = None
        tasks = {s.name: s.task for s in self._slots.values() if s.task is not None}
        loop = asyncio.get_running_loop()
        deadlines: dict[asyncio.Task[None], float] = {}
        for name, t in tasks.items():
            if name in finish and not t.done():
                deadlines[t] = loop.time() + finish[name]
            else:
                t.cancel()
        while deadlines:
            soonest = min(deadlines.values())
            await asyncio.wait(
                deadlines,
                timeout=max(0.0, soonest - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for t, deadline in list(deadlines.items()):
                if t.done() or loop.time() >= deadline:
                    t.cancel()
                    del deadlines[t]
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def _ended(task: asyncio.Task[None] | None) -> bool:
    return task is None or task.done()
