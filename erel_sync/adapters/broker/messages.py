"""RabbitMQ adapter for the publisher and the agents (aio-pika): connect, publish, consume.

The only module that imports aio_pika. Wraps the wire protocol of DESIGN.md §3 in a few calls:
the `erel.config` stream of signed snapshots (publish with confirms, consume from `last`), the
`erel.sync` state.request/reply exchange, and `erel.status` heartbeats. Library errors are
wrapped as `BrokerError`. Names and arguments of the topology live in `adapters.broker.topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from erel_sync.adapters.broker import topology as topo
from erel_sync.model.brokerurl import mask, url_vhost

log = logging.getLogger(__name__)

SnapshotHandler = Callable[[bytes], Awaitable[None]]
SNAPSHOT_PREFETCH = 16
# Half the snapshot consumer's prefetch, so its credit never runs dry.
ACK_BATCH = SNAPSHOT_PREFETCH // 2
ACK_DELAY = 0.2
# A state provider gets the seq the requester already holds (None: it did not say) and returns
# the envelope to answer with, or None for no answer.
StateProvider = Callable[[int | None], bytes | None]
HAVE_FIELD = "have"  # in a state.request body: the seq the requester holds

# What aio-pika and aiormq raise when a connection or channel fails (plus a confirm timeout).
LIBRARY_ERRORS = (TimeoutError, *aio_pika.exceptions.CONNECTION_EXCEPTIONS)


class BrokerError(Exception):
    """The broker refused or could not be reached; retry later."""


class PublishFailed(BrokerError):
    """A publish was nacked, returned as unroutable, or not confirmed in time."""


def cancelled_by_us() -> bool:
    """Whether a CancelledError seen now is a cancellation of the current task (shutdown, a
    timeout, a supervisor), rather than aiormq rejecting the futures of a dead connection with
    CancelledError (its default close reason), which does not touch the awaiting task."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


@contextlib.contextmanager
def wrapped(what: str, error: type[BrokerError] = BrokerError) -> Iterator[None]:
    """Library failures of a broker call as `error`; a CancelledError that comes from a dead
    connection too (it would otherwise end the caller's loop as if it had been cancelled).
    A real cancellation of the calling task stays a CancelledError."""
    try:
        yield
    except asyncio.CancelledError as e:
        if cancelled_by_us():
            raise
        raise error(f"{what}: connection lost (its pending calls were cancelled)") from e
    except LIBRARY_ERRORS as e:
        raise error(f"{what}: {type(e).__name__}: {str(e)[:200]}") from e


def refusal(error: BaseException, url: str) -> str:
    """Why a connection failed, in words that point at the fix. RabbitMQ answers an open of a
    vhost that does not exist, or that the user has no permissions in, with Connection.Close,
    which aiormq reports as an unexpected frame (its reply text lost)."""
    if isinstance(error, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(error):
        vhost = url_vhost(url) or "/"
        return f"the broker refused vhost {vhost!r}: no such vhost, or no permissions there"
    return f"{type(error).__name__}: {error}"


async def connect(
    urls: Sequence[str],
    *,
    name: str,
    heartbeat: float = 10.0,
    stop: asyncio.Event | None = None,
    max_delay: float = 5.0,
    attempts: int | None = None,
    robust: bool = True,
) -> Any:
    """First connection with retries over all URLs (connect_robust fails fast on the first try).

    `robust`: aio-pika reconnects and restores by itself (publisher, CLI). Agents pass False
    and own the whole session: any loss ends it and they rebuild it (see agent.daemon)."""
    connect_fn: Any = aio_pika.connect_robust if robust else aio_pika.connect
    delay, tries, last = 0.1, 0, ""
    while True:
        for url in urls:
            try:
                return await connect_fn(
                    url,
                    client_properties={"connection_name": name},
                    heartbeat=int(max(1, heartbeat)),
                    timeout=10,
                )
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as e:
                # A vhost that does not exist or is not allowed to this user must not read as
                # a network problem.
                last = f"{mask(url)}: {refusal(e, url)}".splitlines()[0][:300]
                log.info("broker not reachable: %s", last)
        tries += 1
        if attempts is not None and tries >= attempts:
            raise BrokerError(f"no broker reachable after {tries} rounds (last: {last})")
        if stop is not None and stop.is_set():
            raise BrokerError("stopped while connecting")
        # Jitter keeps a hundred agents from reconnecting in lock step after an outage.
        await asyncio.sleep(delay * (0.5 + random.random()))  # backoff
        delay = min(max_delay, delay * 2)


class Channels:
    """A connection's channels: one with confirms for publishing, one for consuming."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._publish: AbstractChannel | None = None
        self._consume: AbstractChannel | None = None

    async def publishing(self) -> AbstractChannel:
        if self._publish is None or self._publish.is_closed:
            with wrapped("open publishing channel"):
                self._publish = await self.connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
        return self._publish

    async def consuming(self, prefetch: int = 16) -> AbstractChannel:
        if self._consume is None or self._consume.is_closed:
            with wrapped("open consuming channel"):
                self._consume = await self.connection.channel(publisher_confirms=False)
                await self._consume.set_qos(prefetch_count=prefetch)
        return self._consume


async def declare_exchanges(channel: AbstractChannel) -> None:
    """Every exchange (publisher side; agents only check passively)."""
    await channel.declare_exchange(topo.CONFIG_EXCHANGE, topo.CONFIG_EXCHANGE_TYPE, durable=True)
    for name in (topo.STATUS_EXCHANGE, topo.CONTROL_EXCHANGE, topo.SYNC_EXCHANGE):
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_stream(channel: AbstractChannel) -> None:
    """The config stream and its binding to the config exchange."""
    config = await channel.get_exchange(topo.CONFIG_EXCHANGE)
    stream = await channel.declare_queue(
        topo.CONFIG_STREAM, durable=True, arguments=dict(topo.CONFIG_STREAM_ARGUMENTS)
    )
    await stream.bind(config, routing_key=topo.CONFIG_ROUTING_KEY)


async def declare_presence(channel: AbstractChannel) -> None:
    """The presence stream, bound to `erel.status` for `presence.*` (docs/operating.md)."""
    status = await channel.get_exchange(topo.STATUS_EXCHANGE)
    stream = await channel.declare_queue(
        topo.PRESENCE_STREAM, durable=True, arguments=dict(topo.PRESENCE_STREAM_ARGUMENTS)
    )
    await stream.bind(status, routing_key=topo.PRESENCE_PATTERN)


async def declare_revisions(channel: AbstractChannel) -> None:
    """The revisions stream, bound to `erel.status` for `publisher.*`: the publisher's
    `published`/`rejected` events, read back by `erel-sync wait` (docs/status.md)."""
    status = await channel.get_exchange(topo.STATUS_EXCHANGE)
    stream = await channel.declare_queue(
        topo.REVISIONS_STREAM, durable=True, arguments=dict(topo.REVISIONS_STREAM_ARGUMENTS)
    )
    await stream.bind(status, routing_key=topo.REVISIONS_PATTERN)


async def declare_topology(channel: AbstractChannel) -> None:
    """Exchanges and the streams (publisher side; agents only declare passively)."""
    await declare_exchanges(channel)
    await declare_stream(channel)
    await declare_presence(channel)
    await declare_revisions(channel)


async def publish(
    channel: AbstractChannel,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    mandatory: bool = True,
    confirm_timeout: float = 10.0,
    message_id: str | None = None,
    user_id: str | None = None,
    headers: dict[str, Any] | None = None,
    persistent: bool = False,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    expiration: float | None = None,
) -> None:
    """Publish and wait for the broker's confirm; unroutable or nacked raises PublishFailed."""
    message = aio_pika.Message(
        body,
        content_type="application/json",
        message_id=message_id or uuid.uuid4().hex,
        user_id=user_id,
        headers=headers or {},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT if persistent else None,
        reply_to=reply_to,
        correlation_id=correlation_id,
        expiration=expiration,
    )
    with wrapped(f"{exchange}/{routing_key}", PublishFailed):
        try:
            ex: AbstractExchange = (
                channel.default_exchange if exchange == "" else await channel.get_exchange(exchange)
            )
            confirm = await ex.publish(
                message, routing_key, mandatory=mandatory, timeout=confirm_timeout
            )
        except aio_pika.exceptions.DeliveryError as e:
            raise PublishFailed(f"{exchange}/{routing_key}: returned or nacked ({e})") from e
    if confirm is not None and not isinstance(confirm, aiormq.spec.Basic.Ack):
        raise PublishFailed(f"{exchange}/{routing_key}: not acknowledged ({confirm!r})")


async def consume_snapshots(
    channel: AbstractChannel,
    handler: SnapshotHandler,
    *,
    offset: str | int = "last",
    passive: bool = False,
) -> tuple[AbstractQueue, str]:
    """Consume the config stream from `offset`; a delivery is acked only after `handler`
    returned (it stores the snapshot first), in batches (`StreamAcks`). A handler error is
    logged and the delivery not acked on its own.

    Agents consume `passive`ly: they may not (and must not race to) create the stream; until the
    publisher has declared it this raises BrokerError and the agent retries."""
    await channel.set_qos(prefetch_count=SNAPSHOT_PREFETCH)  # streams require a prefetch
    try:
        queue = await channel.declare_queue(
            topo.CONFIG_STREAM,
            durable=True,
            passive=passive,
            arguments=None if passive else dict(topo.CONFIG_STREAM_ARGUMENTS),
        )
    except aiormq.exceptions.ChannelNotFoundEntity as e:
        raise BrokerError(
            f"{topo.CONFIG_STREAM} does not exist yet (publisher not started?)"
        ) from e

    acks = StreamAcks()

    async def on_message(message: AbstractIncomingMessage) -> None:
        try:
            await handler(message.body)
        except Exception:
            log.exception("snapshot handler failed; delivery left unacked")
            return
        acks.done(message)

    tag = await queue.consume(on_message, arguments={"x-stream-offset": offset})
    return queue, tag


class StreamAcks:
    """Acks for a stream consumer, batched: `multiple` acks every ACK_BATCH deliveries or
    ACK_DELAY seconds after the first one not yet acked, whichever comes first.

    On a stream an ack only returns consumer credit: nothing is redelivered, and the agent
    resumes from `last`, never from its acks. Each ack is a socket write of its own, which on
    this kind of VM costs about as much CPU as storing the snapshot. A delivery is still acked
    only after its handler returned (it is on disk); a failed one, left unacked alone, may be
    acked by a later `multiple` ack, which on a stream changes nothing."""

    def __init__(self) -> None:
        self.last: AbstractIncomingMessage | None = None
        self.pending = 0
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def done(self, message: AbstractIncomingMessage) -> None:
        self.last = message
        self.pending += 1
        if self.pending >= ACK_BATCH:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(ACK_DELAY, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        message, self.last, self.pending = self.last, None, 0
        if message is None:
            return
        task = asyncio.ensure_future(self._ack(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _ack(message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(Exception):  # the channel closed meanwhile: nothing to return
            await message.ack(multiple=True)


async def serve_state_requests(
    channel: AbstractChannel,
    provider: StateProvider,
    *,
    queue_name: str = "",
    keys: Sequence[str] = (topo.STATE_REQUEST_KEY,),
) -> AbstractQueue:
    """Answer state requests with the stored signed envelope: the publisher binds
    `state.request` and `state.request.publisher`, every agent `state.request` only.

    The provider is told the seq the requester holds (`{"have": N}` in the request; None from
    an older agent, which sends `{}`): agents answer only with something newer, so a hundred
    agents joining at once do not each get a hundred copies of what they hold.
    Answers go to `erel.sync` with the requester's `reply.<host>` key: agents may not publish to
    direct reply-to or the default exchange (docs/broker.md)."""
    exchange = await channel.get_exchange(topo.SYNC_EXCHANGE)
    queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
    for key in keys:
        await queue.bind(exchange, routing_key=key)

    async def on_request(message: AbstractIncomingMessage) -> None:
        await message.ack()
        await answer(channel, message, provider(requester_holds(message.body)))

    await queue.consume(on_request)
    return queue


def requester_holds(body: bytes) -> int | None:
    """The seq a state request says its sender holds; None when it does not say (or is junk)."""
    try:
        have = json.loads(body).get(HAVE_FIELD)
    except (ValueError, AttributeError):
        return None
    return have if isinstance(have, int) and not isinstance(have, bool) else None


async def answer(
    channel: AbstractChannel,
    request: AbstractIncomingMessage,
    body: bytes | None,
    *,
    expiration: float | None = None,
) -> None:
    """Send `body` to the requester's `reply.<…>` key on `erel.sync`, with its correlation id.
    Nothing to send, or a request without a usable reply-to: no answer. A lost answer is the
    requester's timeout, not the answerer's failure."""
    reply = request.reply_to or ""
    if body is None or not reply.startswith("reply."):
        return
    with contextlib.suppress(BrokerError):
        await publish(
            channel,
            topo.SYNC_EXCHANGE,
            reply,
            body,
            mandatory=False,
            correlation_id=request.correlation_id,
            expiration=expiration,
        )


async def request_state(
    channel: AbstractChannel,
    requester: str,
    *,
    window: float = 0.3,
    key: str = topo.STATE_REQUEST_KEY,
    have: int | None = None,
) -> list[bytes]:
    """Ask for the current snapshot; every answer received within `window`. `key`:
    `state.request` reaches the publisher and every agent, `state.request.publisher` the
    publisher only. `have`: the seq the requester holds (agents answer only when newer)."""
    answers: list[bytes] = []
    correlation = uuid.uuid4().hex
    with wrapped("state request"):
        exchange = await channel.get_exchange(topo.SYNC_EXCHANGE)
        queue = await channel.declare_queue(
            topo.agent_queue(requester, f"replies.{correlation[:8]}"),
            exclusive=True,
            auto_delete=True,
        )
        await queue.bind(exchange, routing_key=topo.reply_key(requester))

        async def on_reply(message: AbstractIncomingMessage) -> None:
            if message.correlation_id == correlation:
                answers.append(message.body)

        await queue.consume(on_reply, no_ack=True)
    try:
        await publish(
            channel,
            topo.SYNC_EXCHANGE,
            key,
            b"{}" if have is None else json.dumps({HAVE_FIELD: have}).encode(),
            mandatory=False,
            reply_to=topo.reply_key(requester),
            correlation_id=correlation,
            expiration=max(1.0, window * 4),
        )
        await asyncio.sleep(window)  # the collection window is the behaviour, not a sync
    finally:
        with contextlib.suppress(Exception):
            await queue.delete(if_unused=False, if_empty=False)
    return answers


CommandHandler = Callable[[bytes], Awaitable[bytes | None]]


async def serve_control(
    channel: AbstractChannel, host: str, instance: str, handler: CommandHandler
) -> AbstractQueue:
    """Take operator commands for this host: `host.<id>`, every `group.*` (the handler keeps
    only its current group's, so a group change needs no rebinding) and `all`. Replies go to
    `erel.sync` under the command's `reply.<…>` reply-to, with its correlation id.

    The queue name carries the agent instance, so two agents wrongly sharing a host id both
    run (and `erel-sync members` shows both) instead of one failing on an exclusive queue."""
    exchange = await channel.get_exchange(topo.CONTROL_EXCHANGE)
    queue = await channel.declare_queue(
        topo.agent_queue(host, f"control.{instance}"), exclusive=True, auto_delete=True
    )
    for key in (topo.host_key(host), topo.group_key("*"), topo.ALL_KEY):
        await queue.bind(exchange, routing_key=key)

    async def on_command(message: AbstractIncomingMessage) -> None:
        await answer(channel, message, await handler(message.body), expiration=60.0)

    await queue.consume(on_command, no_ack=True)
    return queue


async def consume_status(
    channel: AbstractChannel,
    handler: Callable[[str, bytes], Awaitable[None]],
    *,
    pattern: str = "#",
) -> AbstractQueue:
    """Follow `erel.status` (heartbeats, rejections) through a private auto-delete queue."""
    exchange = await channel.get_exchange(topo.STATUS_EXCHANGE)
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key=pattern)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await handler(message.routing_key or "", message.body)

    await queue.consume(on_message, no_ack=True)
    return queue


async def keep_session(
    session: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    on_failure: Callable[[Exception, float], None],
    *,
    max_delay: float = 5.0,
) -> None:
    """Run `session` until `stop`; whenever it fails (broker down, topology missing, anything
    lost), report through `on_failure(error, delay)` and run it again after a backoff. The
    publisher and the agent both own their sessions this way (docs/architecture.md)."""
    delay = 0.2
    while not stop.is_set():
        try:
            await session(stop)
            return
        except asyncio.CancelledError:
            if cancelled_by_us():
                raise
            # aiormq rejected a pending call of a connection that died: a lost session, not
            # the end of the loop (which would leave the daemon without a broker for good).
            on_failure(BrokerError("connection lost (its pending calls were cancelled)"), delay)
        except Exception as e:
            on_failure(e, delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        delay = min(max_delay, delay * 2)


STREAM_RETRY = 5.0  # a session without the config stream is rebuilt this often to retry it


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
    raise BrokerError(
        "connection, channel or stream consumer lost" if stream_ok else "no config stream"
    )
