"""RabbitMQ adapter for the publisher and the agents (aio-pika): connect, publish, consume.

The only module that imports aio_pika. Wraps the wire protocol of DESIGN.md §3 in a few calls:
the `erel.config` stream of signed snapshots (publish with confirms, consume from `last`), the
`erel.sync` state.request/reply exchange, and `erel.status` heartbeats. Library errors are
wrapped as `BrokerError`. Names and arguments of the topology live in `adapters.topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from yarl import URL

from erel_sync.adapters import topology as topo

log = logging.getLogger(__name__)

SnapshotHandler = Callable[[bytes], Awaitable[None]]
SNAPSHOT_PREFETCH = 16
# Half the snapshot consumer's prefetch, so its credit never runs dry.
ACK_BATCH = SNAPSHOT_PREFETCH // 2
ACK_DELAY = 0.2
StateProvider = Callable[[], bytes | None]


class BrokerError(Exception):
    """The broker refused or could not be reached; retry later."""


class PublishFailed(BrokerError):
    """A publish was nacked, returned as unroutable, or not confirmed in time."""


def with_vhost(url: str, vhost: str | None) -> str:
    if not vhost:
        return url
    u = URL(url)
    return str(u.with_path("/" + vhost.replace("/", "%2F") if vhost != "/" else "/", encoded=True))


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
    delay, tries = 0.1, 0
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
                log.info("broker %s not reachable: %s", URL(url).with_password("***"), e)
        tries += 1
        if attempts is not None and tries >= attempts:
            raise BrokerError(f"no broker reachable after {tries} rounds")
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
            self._publish = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        return self._publish

    async def consuming(self, prefetch: int = 16) -> AbstractChannel:
        if self._consume is None or self._consume.is_closed:
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


async def declare_topology(channel: AbstractChannel) -> None:
    """Exchanges and the streams (publisher side; agents only declare passively)."""
    await declare_exchanges(channel)
    await declare_stream(channel)
    await declare_presence(channel)


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
    try:
        ex: AbstractExchange = (
            channel.default_exchange if exchange == "" else await channel.get_exchange(exchange)
        )
        confirm = await ex.publish(
            message, routing_key, mandatory=mandatory, timeout=confirm_timeout
        )
    except aio_pika.exceptions.DeliveryError as e:
        raise PublishFailed(f"{exchange}/{routing_key}: returned or nacked ({e})") from e
    except (TimeoutError, aiormq.exceptions.AMQPError, RuntimeError, OSError) as e:
        raise PublishFailed(f"{exchange}/{routing_key}: {type(e).__name__}: {e}") from e
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
    channel: AbstractChannel, provider: StateProvider, *, queue_name: str = ""
) -> AbstractQueue:
    """Answer `state.request` with the stored signed envelope (publisher and every agent).

    Answers go to `erel.sync` with the requester's `reply.<host>` key: agents may not publish to
    direct reply-to or the default exchange (docs/broker.md)."""
    exchange = await channel.get_exchange(topo.SYNC_EXCHANGE)
    queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key=topo.STATE_REQUEST_KEY)

    async def on_request(message: AbstractIncomingMessage) -> None:
        await message.ack()
        await answer(channel, message, provider())

    await queue.consume(on_request)
    return queue


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
    with contextlib.suppress(PublishFailed):
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
    channel: AbstractChannel, requester: str, *, window: float = 0.3
) -> list[bytes]:
    """Ask publisher and peers for their snapshot; every answer received within `window`."""
    answers: list[bytes] = []
    correlation = uuid.uuid4().hex
    exchange = await channel.get_exchange(topo.SYNC_EXCHANGE)
    queue = await channel.declare_queue(
        topo.agent_queue(requester, f"replies.{correlation[:8]}"), exclusive=True, auto_delete=True
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
            topo.STATE_REQUEST_KEY,
            b"{}",
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
            raise
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
    the config stream, STREAM_RETRY passes (raise BrokerError, so `keep_session` rebuilds it)."""
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
    if not stop.is_set():
        raise BrokerError(
            "connection, channel or stream consumer lost" if stream_ok else "no config stream"
        )
