"""The agent's broker link: one `adapters.broker.session.Session` at a time, rebuilt after any
loss, and what the agent does on it.

Called by `agent.daemon` (the `Agent` owns one `Link`; `loop` runs as a supervised task, `once`
serves `erel-sync agent --once`). On each session: consume the config stream from `last` on a
channel of its own (passively: only the publisher creates it), follow the rollout stream
(`erel.rollout`, from `last`, passively; while it is absent the session goes on without it and
tries it again every ROLLOUT_RETRY seconds; left once a document says the publisher sends this
host its own copies), answer peers' state requests, take operator commands and those copies,
join (`agent.intake`), announce presence and this host's rollout report; then hold the session
until stop or until any part of it is lost. The agent starts and reconciles without a
broker: the link retries with backoff meanwhile and reports `BrokerDisconnected` in heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from erel_sync.adapters import logs
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import BrokerError
from erel_sync.adapters.broker.session import Session, StreamConsumer, keep_session
from erel_sync.adapters.clock import utc_now
from erel_sync.agent.intake import Intake, SnapshotHandler
from erel_sync.agent.reporter import Reporter
from erel_sync.agent.rollout import RolloutFollower
from erel_sync.core.rollout import HostReport
from erel_sync.model.brokerurl import BrokerOrder
from erel_sync.model.settings import AgentSettings

log = logging.getLogger("erel_sync.agent")

CommandHandler = Callable[[bytes], Coroutine[Any, Any, bytes | None]]

ROLLOUT_RETRY = 5.0  # seconds between two tries of a rollout stream that is absent


class StreamStalled(BrokerError):
    """The config stream stopped delivering what the cluster has."""


class Link:
    def __init__(
        self,
        settings: AgentSettings,
        instance: str,
        counters: Counter[str],
        intake: Intake,
        reporter: Reporter,
        *,
        on_snapshot: SnapshotHandler,
        on_command: CommandHandler,
        joined: Callable[[], None],
        rollout: RolloutFollower | None = None,
    ) -> None:
        self.s = settings
        self.instance = instance
        self.counters = counters
        self.intake = intake
        self.reporter = reporter
        self.on_snapshot = on_snapshot  # the agent's (a benchmark's subclass times it)
        self.on_command = on_command
        self.joined = joined  # after each join: reconcile and report at once
        self.rollout = rollout  # where rollout documents go (None: not followed)
        self._rollout_stream: StreamConsumer | None = None
        self._leaving: asyncio.Task[None] | None = None
        self.connected = False
        self.commands: set[asyncio.Task[bytes | None]] = set()  # running remote commands
        self._session: Session | None = None
        self._rollout_ok = False
        # Hosts spread over the broker nodes by host id; a lost node's hosts over the others.
        self.brokers = BrokerOrder(settings.amqp_urls, settings.host_id)
        self._heard = time.monotonic()  # the config stream's last delivery (or a check of it)

    # --- a Sink for the reporter
    async def send_heartbeat(self, doc: Mapping[str, Any]) -> None:
        await self._send(topo.host_key(self.s.host_id), self._with_held(doc))

    async def send_presence(self, doc: Mapping[str, Any]) -> None:
        await self._send(topo.presence_key(self.s.host_id), doc)

    async def send_rollout(self, report: HostReport) -> None:
        """A rollout event, at once, unconfirmed like the heartbeats and on their channel
        (observers rebuild who changed when from these); raises BrokerError. Not connected:
        dropped, the heartbeats carry the report and the next session sends it again."""
        doc = report.to_json(time=utc_now())
        await self._send(topo.rollout_key(self.s.host_id), self._with_held(doc))

    def _with_held(self, doc: Mapping[str, Any]) -> Mapping[str, Any]:
        """A report says which rollout document this agent holds and what it reads in it: the
        publisher sends the current one again when that differs (docs/broker.md)."""
        return doc if self.rollout is None else {**doc, "rollout_held": self.rollout.held()}

    async def on_rollout(self, raw: bytes) -> None:
        """A rollout document, from the stream or the publisher's direct copy. Once the
        publisher says it sends each host what concerns it (`direct`), the stream, which
        carries every document of every group, is left for this session: followed by a
        hundred agents it cost more than all else in a rollout."""
        if self.rollout is None:
            return
        await self.rollout.on_rollout(raw)
        stream = self._rollout_stream
        if stream is not None and self.rollout.direct:
            self._rollout_stream = None
            self.counters["rollout_stream_left"] += 1
            # From a task of its own: this delivery runs on the channel being closed.
            self._leaving = asyncio.create_task(stream.cancel(), name="leave-rollout-stream")

    async def _send(self, key: str, doc: Mapping[str, Any]) -> None:
        session = self._session
        if session is None or not self.connected:
            return
        # Heartbeats are periodic and superseded by the next one: no confirm round trip.
        body = json.dumps(doc).encode()
        await session.publish(topo.STATUS_EXCHANGE, key, body, confirm=False, mandatory=False)

    # --- sessions
    async def loop(self, stop: asyncio.Event) -> None:
        """Keep a broker session up while reconciling goes on from the disk."""

        def failed(e: Exception, delay: float) -> None:
            self.connected = False
            self.counters["broker_errors"] += 1
            # Retried all the same; one that will not pass by itself (permissions) is louder.
            level = logging.WARNING if getattr(e, "transient", True) else logging.ERROR
            said = logs.fields("broker_disconnected", reason="BrokerDisconnected")
            log.log(
                level,
                "%s: BrokerDisconnected (%s); retry in %.1fs",
                self.s.host_id,
                e,
                delay,
                extra=said,
            )

        await keep_session(self._session_life, stop, failed)

    async def _open(self, stop: asyncio.Event, attempts: int | None = None) -> Session:
        return await Session.open(
            self.brokers,
            name=f"erel-agent:{self.s.host_id}",
            heartbeat=self.s.broker_heartbeat,
            stop=stop,
            attempts=attempts,
        )

    async def _session_life(self, stop: asyncio.Event) -> None:
        """One connection's life: consume the stream, answer peers, join; returns at stop and
        raises when anything of it is lost (connection, channel, or the stream consumer, which
        the broker cancels when the stream is deleted), so `loop` rebuilds it."""
        async with await self._open(stop) as session:
            self._session = session
            follow: asyncio.Task[None] | None = None
            watch: asyncio.Task[None] | None = None
            try:
                stream_ok = await self._join(session)
                if self.rollout is not None and not self._rollout_ok:
                    follow = asyncio.create_task(self._retry_rollout(session, stop))
                if stream_ok and self.s.stream_silence > 0:
                    watch = asyncio.create_task(self._watch_stream(session), name="stream-watch")
                with contextlib.suppress(BrokerError):
                    await self.reporter.announce(self)
                    report = self.reporter.reconciler.rollout_report
                    if report is not None:  # one made while disconnected was not sent
                        await self.send_rollout(report)
                # Without the stream (down on the broker) the agent still joined through peers;
                # the session is rebuilt after a while to pick the stream up again.
                await session.hold(stop, stream_ok=stream_ok, also=watch)
                if stop.is_set():
                    # A clean stop says so: `status` then does not list this host as unreachable.
                    with contextlib.suppress(BrokerError):
                        await self.reporter.announce(self, "left")
            finally:
                for task in (follow, watch):
                    if task is not None:
                        task.cancel()
                        # A watch that ended the session was named in hold's error.
                        with contextlib.suppress(asyncio.CancelledError, BrokerError):
                            await task
                self.connected = False
                self._session = None
                self._rollout_stream = None

    async def _join(self, session: Session, *, serve: bool = True) -> bool:
        """Consume the stream, serve peers and commands (`serve`), join. True when the config
        stream is consumed."""
        stream_ok = await self._consume_stream(session)
        self._rollout_ok = await self._consume_rollout(session)
        if serve:
            await session.serve_state_requests(
                self.intake.stored_envelope,
                queue_name=topo.agent_queue(self.s.host_id, f"state.{self.instance}"),
            )
            # The publisher's own copy of a document that grants this host a place comes
            # through here, ahead of the stream's (docs/broker.md): the same handler takes both.
            await session.serve_control(
                self.s.host_id, self.instance, self._command, on_grant=self.on_rollout
            )
        self.connected = True
        self.counters["connects"] += 1
        await self.intake.join(session, self.on_snapshot)
        self.joined()
        return stream_ok

    async def _from_stream(self, raw: bytes) -> None:
        self._heard = time.monotonic()
        await self.on_snapshot(raw)

    async def _watch_stream(self, session: Session) -> None:
        """The publisher republishes the current snapshot every minute or so: a config stream
        quiet for `stream_silence` may be a consumer the broker stopped feeding (a stream
        member restarted under it, a failover) or a tail lost in one. Ask the cluster, as at a
        join; when it has something newer than the stream gave, end (the session is rebuilt
        and consumes the stream afresh). Nothing newer: the publisher is quiet or down, and the
        stream is given another `stream_silence`."""
        silence = self.s.stream_silence
        self._heard = time.monotonic()
        while True:
            await asyncio.sleep(max(0.0, self._heard + silence - time.monotonic()))
            if time.monotonic() - self._heard < silence:
                continue
            before = self.intake.held_seq()
            self.counters["stream_silence_checks"] += 1
            await self.intake.join(session, self.on_snapshot)
            self._heard = time.monotonic()
            if self.intake.held_seq() > before:
                self.counters["stream_stalled"] += 1
                log.warning(
                    "%s: config stream silent for %.0fs while the cluster had seq %d: "
                    "consuming it afresh",
                    self.s.host_id,
                    silence,
                    self.intake.held_seq(),
                )
                raise StreamStalled(f"config stream silent for {silence:.0f}s")

    async def _consume_stream(self, session: Session) -> bool:
        try:
            await session.consume_config(self._from_stream, offset="last", passive=True)
        except BrokerError as e:
            log.warning("%s: config stream unavailable (%s); joining via peers", self.s.host_id, e)
            self.counters["stream_unavailable"] += 1
            return False
        return True

    async def _consume_rollout(self, session: Session) -> bool:
        """Follow the rollout stream from `last` (its tail is the newest document). Lost once
        followed, the session is rebuilt like for the config stream; absent (no publisher has
        declared it yet), the session goes on without it: gated actions wait meanwhile."""
        if self.rollout is None:
            return True
        try:
            self._rollout_stream = await session.consume_config(
                self.on_rollout, offset="last", passive=True, stream=topo.ROLLOUT_QUEUE
            )
        except BrokerError as e:
            if self.counters["rollout_stream_unavailable"] == 0:
                log.warning("%s: rollout stream unavailable (%s)", self.s.host_id, e)
            self.counters["rollout_stream_unavailable"] += 1
            return False
        return True

    async def _retry_rollout(self, session: Session, stop: asyncio.Event) -> None:
        """Try the absent rollout stream again every ROLLOUT_RETRY seconds, for this session."""
        while not await self._consume_rollout(session):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ROLLOUT_RETRY):
                    await stop.wait()
                    return

    async def once(self, within: float) -> bool:
        """One connection round and one join, within `within` seconds (`agent --once`): the
        stream's tail and the answers to the join go through intake. False when no broker
        answered in time."""
        stop = asyncio.Event()
        try:
            async with asyncio.timeout(within):
                async with await self._open(stop, attempts=1) as session:
                    self._session = session
                    try:
                        await self._join(session, serve=False)
                    finally:
                        self.connected = False
                        self._session = None
        except (BrokerError, TimeoutError) as e:
            log.warning("%s: no broker join (%s); using the stored snapshot", self.s.host_id, e)
            return False
        return True

    async def _command(self, raw: bytes) -> bytes | None:
        """A remote command runs in a task of the agent's own: a broker loss cancels the
        delivery's task, and must not cut a driver step in the middle."""
        task = asyncio.create_task(self.on_command(raw))
        self.commands.add(task)
        task.add_done_callback(self.commands.discard)
        return await asyncio.shield(task)
