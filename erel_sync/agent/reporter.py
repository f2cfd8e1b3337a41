"""What one agent says about itself: status.json on disk, heartbeats and presence records out.

Called by `agent.daemon` (one `Reporter` per agent; its `loop` is a supervised task) and by the
broker link, which announces presence when it connects and leaves. Lives apart from the daemon
because the persistence policy (what is fsynced, what is only renamed) and the report documents
are rules of their own (docs/status.md, docs/operating.md).

Heartbeats are change-driven (`now` is set by whatever changed) and periodic, coalesced to at
most one per REPORT_SPACING; a presence record goes out on the jittered PRESENCE_INTERVAL and
whenever the host's group changed since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from erel_sync import __version__
from erel_sync.adapters import store
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import BrokerError
from erel_sync.adapters.clock import utc_now
from erel_sync.agent.intake import Intake
from erel_sync.agent.reconciler import Reconciler
from erel_sync.core import history
from erel_sync.core.releasestatus import statuses_to_json
from erel_sync.core.rollout import HostState
from erel_sync.core.status import Heartbeat
from erel_sync.model.settings import AgentSettings

log = logging.getLogger("erel_sync.agent")
LASTING_STATES = frozenset({HostState.CHANGING, HostState.FAILED})

REPORT_SPACING = 1.0  # seconds between two change-driven heartbeats
STATUS_FILE = "status.json"


def read_status(state_dir: Path) -> dict[str, Any]:
    """What the last run left in status.json ({} when nothing, or unreadable)."""
    return store.read_json(state_dir / STATUS_FILE) or {}


class Sink(Protocol):
    """Where reports go (the agent's broker link). Its sends raise BrokerError."""

    @property
    def connected(self) -> bool: ...

    async def send_heartbeat(self, doc: Mapping[str, Any]) -> None: ...

    async def send_presence(self, doc: Mapping[str, Any]) -> None: ...


class Reporter:
    def __init__(
        self,
        settings: AgentSettings,
        instance: str,
        reconciler: Reconciler,
        counters: Counter[str],
        intake: Intake,
        *,
        commands_seen: Callable[[], dict[str, float]],
        connected: Callable[[], bool],
        now: asyncio.Event,
    ) -> None:
        self.s = settings
        self.instance = instance
        self.reconciler = reconciler
        self.counters = counters
        self.intake = intake
        self.commands_seen = commands_seen
        self.connected = connected
        self.status_file = Path(settings.state_dir) / STATUS_FILE
        self.now = now  # set: send a heartbeat soon (coalesced)
        self._persisted: tuple[str, bytes] = ("", b"")  # (failure memory + holds, whole file)
        self._writing = asyncio.Lock()  # one write at a time, in the order they were asked
        self._presence_group: str | None = None
        # The last revisions applied or failed (core.history), kept across restarts.
        self.history = history.load(read_status(self.status_file.parent).get("history"))

    def note_tick(self) -> None:
        """After a reconcile tick: record its outcome in the history if it is news."""
        report = self.reconciler.report
        seq = (report.get("snapshot") or {}).get("seq")
        arrived = self.intake.arrived.get(seq) if isinstance(seq, int) else None
        self.history = history.after_tick(self.history, report, now=time.time(), arrived=arrived)

    async def persist(self, *, lasting_only: bool = False) -> None:
        """Write status.json when it changed; fsync only when what must survive a power loss
        changed (failure memory, holds, the ids of mutating commands that ran, a `changing` or
        `failed` rollout report). The report and
        counters change on every tick, and losing the newest of them costs only freshness:
        they are written with the (coalesced) heartbeats as a plain tmp + rename.
        `lasting_only`: write only if what must survive changed (after each tick).

        The write runs in a thread: an fsync takes milliseconds, and on the event loop it held
        up every delivery and report of the process (a rollout's grants among them)."""
        async with self._writing:
            await self._persist(lasting_only)

    async def _persist(self, lasting_only: bool) -> None:
        r = self.reconciler
        memory = statuses_to_json(r.memory)
        seen = self.commands_seen()
        # Where the host stands in its rollout must survive a crash as it was: an agent killed
        # while `changing` comes back saying so (and its `failed` stays). `waiting` and
        # `converged` need no fsync: a restart finds them again at its first tick, and the
        # fsync held up the tick that acts on a grant arriving just after the snapshot.
        report = r.rollout_report
        rollout = report.to_json(time="") if report is not None else None
        held = rollout if report is not None and report.state in LASTING_STATES else None
        past = [e.to_json() for e in self.history]
        lasting = json.dumps(
            {"memory": memory, "holds": r.holds, "seen": seen, "rollout": held, "past": past},
            sort_keys=True,
        )
        doc = {
            "memory": memory,
            "holds": r.holds,
            "commands_seen": seen,
            "rollout": rollout,
            "applied": r.applied,
            "attempted": r.attempted,
            "report": r.report,
            "counters": dict(self.counters),
            "history": past,
        }
        if lasting_only and lasting == self._persisted[0]:
            return
        # Compact: with `indent` the json module encodes in Python, five times slower, and this
        # runs after every change (`jq .` shows it indented).
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        if data == self._persisted[1]:
            return
        durable = lasting != self._persisted[0]
        await asyncio.to_thread(store.write_atomic, self.status_file, data, durable=durable)
        self._persisted = (lasting, data)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            host_id=self.s.host_id,
            labels=dict(self.s.labels),
            status=self.reconciler.status,
            agent_version=__version__,
            instance=self.instance,
            pid=os.getpid(),
            hostname=socket.gethostname(),
            cluster_host=self.s.cluster_host,
            broker="connected" if self.connected() else "BrokerDisconnected",
            store_error=self.intake.store_error,
            snapshot_refused=self.intake.refusal_in_force(),
            # What a reader may expect between two heartbeats: never under the spacing.
            heartbeat_interval=max(self.s.heartbeat_interval, REPORT_SPACING),
            counters=dict(self.counters),
            sent=utc_now(),
        )

    def _group(self) -> str | None:
        status = self.reconciler.status
        return status.group if status is not None else None

    def presence(self, state: str = "alive") -> dict[str, Any]:
        """The small record on the presence stream: who this agent is, that it lives."""
        return {
            "format": 1,
            "kind": "presence",
            "state": state,
            "host_id": self.s.host_id,
            "instance": self.instance,
            "group": self._group(),
            "labels": dict(self.s.labels),
            "agent_version": __version__,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "sent": utc_now(),
            "heartbeat_interval": self.s.heartbeat_interval,
            "presence_interval": topo.PRESENCE_INTERVAL,
        }

    async def announce(self, sink: Sink, state: str = "alive") -> None:
        """Send a presence record, when connected; raises BrokerError."""
        if not sink.connected:
            return
        self._presence_group = self._group()
        await sink.send_presence(self.presence(state))

    async def loop(self, stop: asyncio.Event, sink: Sink) -> None:
        """Persist and send heartbeats (and presence records) until `stop`."""
        loop = asyncio.get_running_loop()
        last = -REPORT_SPACING
        last_presence = -topo.PRESENCE_INTERVAL
        # Jittered, so agents started together (a fleet reboot, a benchmark) do not report in
        # lockstep bursts that the broker and every other agent's intake then queue behind.
        presence_every = topo.PRESENCE_INTERVAL * random.uniform(0.8, 1.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.s.heartbeat_interval * random.uniform(0.9, 1.1)):
                    await self.now.wait()
            # Change reports coalesce: a burst of commits is reported at most once per
            # REPORT_SPACING, carrying the newest state, instead of once per tick.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(last + REPORT_SPACING - loop.time()):
                    await stop.wait()
            self.now.clear()
            try:
                await self.persist()
            except store.StoreError as e:
                log.error("%s: cannot persist status: %s", self.s.host_id, e)
            with contextlib.suppress(BrokerError):
                if sink.connected:
                    await sink.send_heartbeat(self.heartbeat().to_json())
                group_changed = self._group() != self._presence_group
                if group_changed or loop.time() - last_presence >= presence_every:
                    await self.announce(sink)
                    last_presence = loop.time()
            last = loop.time()
