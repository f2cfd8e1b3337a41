"""One broker connection's life, as the agent and the publisher own it: `Session`.

A session holds the connection, a channel with publisher confirms, a channel for consumers and
unconfirmed publishes, and config-stream consumers on channels of their own. Losing any part
that the daemon relies on (the connection, the consuming channel, a watched stream consumer,
which the broker cancels when the stream is deleted) sets `broken`; `hold` then raises and
`keep_session` builds a new session after a backoff. There is no reconnect-and-restore inside
a session (aio-pika's robust connection): a daemon that rebuilds everything after any loss has
one code path for start and recovery (docs/broker.md).

Used by `agent.link` and `publisher.daemon`. Every call raises only the adapter's errors
(`errors.BrokerError` and its subclasses), so the daemons never import aio-pika or aiormq. The
wire calls themselves live in `messages`; the methods here pick the channel for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from erel_sync.adapters.backoff import Backoff, pause
from erel_sync.adapters.broker import messages
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import (
    BrokerError,
    ConnectionLost,
    NotFound,
    PreconditionFailed,
    cancelled_by_us,
    wrapped,
)
from erel_sync.model.brokerurl import BrokerOrder

log = logging.getLogger(__name__)

STREAM_RETRY = 5.0  # a session without the config stream is rebuilt this often to retry it
SESSION_RETRY = (0.2, 5.0)  # backoff between two sessions: first and longest delay


def _nothing() -> None:
    return None


class StreamConsumer:
    """A config-stream consumer on a channel of its own (a missing or down stream closes only
    that channel, not the session's)."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        tag: str,
        unwatch: Callable[[], None] = _nothing,
    ) -> None:
        self._channel, self._queue, self._tag = channel, queue, tag
        self._unwatch = unwatch

    async def cancel(self) -> None:
        """Stop consuming and close the channel, without breaking a session that watched it;
        a dead one has nothing left to cancel."""
        self._unwatch()
        with contextlib.suppress(Exception):
            await self._queue.cancel(self._tag)
        with contextlib.suppress(Exception):
            await self._channel.close()


class Session:
    """One connection and its channels (async context manager: closed on exit)."""

    def __init__(self, connection: AbstractConnection, order: BrokerOrder | None = None) -> None:
        self._connection = connection
        self._order = order
        # Every publish names the user it was sent as (RabbitMQ refuses any other): readers
        # tell whose a heartbeat or reply is (adapters.broker.permissions.speaks_for).
        self.user: str | None = getattr(getattr(connection, "url", None), "user", None) or None
        self._publish: AbstractChannel | None = None
        self._consume: AbstractChannel | None = None
        self.broken = asyncio.Event()
        connection.close_callbacks.add(self._lost)

    @classmethod
    async def open(
        cls,
        urls: Sequence[str] | BrokerOrder,
        *,
        name: str,
        heartbeat: float = 10.0,
        stop: asyncio.Event | None = None,
        attempts: int | None = None,
    ) -> Session:
        """Connect to the first broker of `urls` that answers, retrying with backoff (every
        round of URLs counts as one of `attempts`; None: until `stop`). With a `BrokerOrder`,
        losing the session moves its next round past the node it was on."""
        connection = await messages.connect(
            urls, name=name, heartbeat=heartbeat, stop=stop, attempts=attempts, robust=False
        )
        return cls(connection, urls if isinstance(urls, BrokerOrder) else None)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._connection.close()

    def _lost(self, *_: Any) -> None:
        if self._order is not None and not self.broken.is_set():
            self._order.lost()
        self.broken.set()

    # --- channels
    async def _publishing(self) -> AbstractChannel:
        """The confirming channel; a failed declare closes it, so it is reopened when needed
        (its loss alone does not break the session)."""
        if self._publish is None or self._publish.is_closed:
            with wrapped("open publishing channel"):
                self._publish = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
        return self._publish

    async def _consuming(self) -> AbstractChannel:
        """The channel of the session's consumers (state requests, commands): losing it breaks
        the session, whose consumers would otherwise be gone unnoticed."""
        if self._consume is None or self._consume.is_closed:
            with wrapped("open consuming channel"):
                self._consume = await self._connection.channel(publisher_confirms=False)
                await self._consume.set_qos(prefetch_count=messages.SNAPSHOT_PREFETCH)
            self._consume.close_callbacks.add(self._lost)
        return self._consume

    # --- topology
    async def declare_exchanges(self) -> None:
        with wrapped("declare exchanges"):
            await topo.declare_exchanges(await self._publishing())

    async def declare_queue(self, spec: topo.QueueSpec) -> None:
        """Declare a stream and its bindings: NotFound when the broker reports it down,
        PreconditionFailed when it exists with other arguments (but for a stream made before
        its replicas were set: taken as it is)."""
        try:
            with wrapped(f"declare {spec.name}"):
                await topo.declare_queue(await self._publishing(), spec)
        except PreconditionFailed as e:
            if not topo.made_before_replicas(e):
                raise
            log.warning(
                "%s was made with other replicas: kept as it is (docs/broker.md)", spec.name
            )
            with wrapped(f"declare {spec.name}"):
                await topo.declare_queue(await self._publishing(), spec, exists=True)

    async def delete_queue(self, name: str) -> None:
        with wrapped(f"delete {name}"):
            await (await self._publishing()).queue_delete(name)

    # --- the wire calls, each on its channel
    async def publish(
        self, exchange: str, routing_key: str, body: bytes, *, confirm: bool = True, **kw: Any
    ) -> None:
        """`messages.publish`; `confirm=False` sends on the consuming channel without waiting
        for the broker (heartbeats: periodic, and superseded by the next one)."""
        channel = await (self._publishing() if confirm else self._consuming())
        kw.setdefault("user_id", self.user)
        await messages.publish(channel, exchange, routing_key, body, **kw)

    async def consume_config(
        self,
        handler: messages.SnapshotHandler,
        *,
        offset: str | int = "last",
        passive: bool = False,
        watch: bool = True,
        stream: topo.QueueSpec = topo.CONFIG_QUEUE,
    ) -> StreamConsumer:
        """Consume the config stream (or `stream`: `erel.rollout`) on a channel of its own
        (`messages.consume_snapshots`). `watch`: the session is broken when this consumer is
        lost (its channel closes, or the broker cancels it because the stream was deleted)."""
        with wrapped("open stream channel"):
            channel = await self._connection.channel(publisher_confirms=False)
        unwatch: Callable[[], None] = _nothing
        try:
            queue, tag = await messages.consume_snapshots(
                channel, handler, offset=offset, passive=passive, stream=stream
            )
            if watch:
                channel.close_callbacks.add(self._lost)
                with wrapped("watch the stream consumer"):
                    underlay = await channel.get_underlay_channel()
                underlay.on_consumer_cancel_callbacks.add(self._lost)

                def unwatch() -> None:
                    channel.close_callbacks.discard(self._lost)
                    underlay.on_consumer_cancel_callbacks.discard(self._lost)

        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        return StreamConsumer(channel, queue, tag, unwatch)

    async def take_lock(self, name: str) -> bool:
        """Declare `name` as a queue exclusive to this connection: True when it was free (it
        is this session's until the connection ends, however it ends, when the broker deletes
        it), False when another connection holds it (RESOURCE_LOCKED). A lock, not a protocol
        of our own: RabbitMQ holds it, cluster-wide."""
        with wrapped("open lock channel"):
            channel = await self._connection.channel(publisher_confirms=False)
        try:
            with wrapped(f"declare {name}"):
                await channel.declare_queue(name, exclusive=True, auto_delete=False)
            return True
        except BrokerError as e:
            if isinstance(e.__cause__, aiormq.exceptions.ChannelLockedResource):
                return False
            raise
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def read_stream(
        self, stream: str, offset: Any, handler: Callable[[bytes, int], None]
    ) -> StreamConsumer:
        """Follow `stream` from `offset` (`first`, a number, a datetime) on a channel of its
        own, giving `handler` each message's body and its offset in the stream; cancel the
        returned consumer when done."""
        with wrapped("open stream channel"):
            channel = await self._connection.channel(publisher_confirms=False)
        try:
            queue, tag = await messages.consume_offsets(channel, stream, offset, handler)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        return StreamConsumer(channel, queue, tag)

    async def serve_state_requests(
        self,
        provider: messages.StateProvider,
        *,
        queue_name: str = "",
        keys: Sequence[str] = (topo.STATE_REQUEST_KEY,),
    ) -> None:
        await messages.serve_state_requests(
            await self._consuming(), provider, queue_name=queue_name, keys=keys
        )

    async def serve_control(
        self,
        host: str,
        instance: str,
        handler: messages.CommandHandler,
        on_grant: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        await messages.serve_control(
            await self._consuming(), host, instance, handler, on_grant, user_id=self.user
        )

    async def serve_commands(
        self, queue_name: str, keys: Sequence[str], handler: messages.CommandHandler
    ) -> None:
        """`messages.serve_commands` (the publisher's `rollout.*` on erel.control)."""
        await messages.serve_commands(await self._consuming(), queue_name, keys, handler)

    async def follow_status(
        self, handler: Callable[[str, bytes], Awaitable[None]], patterns: Sequence[str]
    ) -> None:
        """`messages.consume_status` on the consumers' channel (the rollout controller's
        heartbeats, presence records and rollout events)."""
        await messages.consume_status(await self._consuming(), handler, pattern=patterns)

    async def request_state(
        self, requester: str, *, key: str, have: int | None, window: float
    ) -> list[bytes]:
        return await messages.request_state(
            await self._publishing(), requester, key=key, have=have, window=window
        )

    async def hold(
        self, stop: asyncio.Event, *, stream_ok: bool, also: asyncio.Task[Any] | None = None
    ) -> None:
        """`hold_session` on this session's `broken` signal."""
        await hold_session(stop, self.broken, stream_ok=stream_ok, also=also)


async def keep_session(
    session: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    on_failure: Callable[[Exception, float], None],
    *,
    max_delay: float = SESSION_RETRY[1],
) -> None:
    """Run `session` until `stop`; whenever it fails (broker down, topology missing, anything
    lost), report through `on_failure(error, delay)` and run it again after a backoff. The
    publisher and the agent both own their sessions this way (docs/architecture.md)."""
    # Jittered: the clients of a node that restarts do not all come back in the same instant.
    backoff = Backoff(SESSION_RETRY[0], max_delay, jitter=0.5)
    while not stop.is_set():
        try:
            await session(stop)
            return
        except asyncio.CancelledError:
            if cancelled_by_us():
                raise
            # aiormq rejected a pending call of a connection that died: a lost session, not
            # the end of the loop (which would leave the daemon without a broker for good).
            error: Exception = ConnectionLost("connection lost (its pending calls were cancelled)")
        except Exception as e:
            error = e
        delay = backoff.next()
        on_failure(error, delay)
        await pause(delay, stop)


async def hold_session(
    stop: asyncio.Event,
    broken: asyncio.Event,
    *,
    stream_ok: bool,
    also: asyncio.Task[Any] | None = None,
) -> None:
    """Keep a session until `stop` (return) or until it is `broken`, `also` ends, or, without
    the config stream, STREAM_RETRY passes (raise BrokerError, so `keep_session` rebuilds it;
    an `also` that failed is named in it)."""
    stopped = asyncio.create_task(stop.wait())
    lost = asyncio.create_task(broken.wait())
    waiting = {stopped, lost, *([also] if also is not None else [])}
    try:
        await asyncio.wait(
            waiting,
            timeout=None if stream_ok else STREAM_RETRY,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for t in waiting:
            t.cancel()
    if stop.is_set():
        return
    if also is not None and also.done() and not also.cancelled() and also.exception():
        raise BrokerError(f"{also.get_name()} failed: {also.exception()!r:.200}")
    if not stream_ok:
        raise NotFound(f"no {topo.CONFIG_STREAM} stream: a new session tries it again")
    raise ConnectionLost("connection, channel or stream consumer lost")
