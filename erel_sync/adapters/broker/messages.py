"""The wire protocol of erel-sync over aio-pika: connect, publish, consume, request, answer.

Each call takes an open channel: the daemons reach them through their `session.Session`, which
picks the channel; tests and the CLI's followers call them on channels of their own. The calls:
the `erel.config` and `erel.rollout` streams of signed documents (publish with confirms, consume
from `last`), the `erel.sync` state.request/reply exchange, operator commands (and copies of
rollout documents) on `erel.control`, and `erel.status` heartbeats (docs/broker.md). Library
errors leave as the adapter's own (`errors`, re-exported here: `BrokerError`, `PublishFailed`).
Names and arguments of the topology live in `topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from erel_sync.adapters.backoff import Backoff
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.acks import SNAPSHOT_PREFETCH, StreamAcks
from erel_sync.adapters.broker.errors import BrokerError, NotFound, PublishFailed, wrapped
from erel_sync.model.brokerurl import BrokerOrder, shown, url_vhost

# The CLI catches these two by this module's name.
__all__ = ["SNAPSHOT_PREFETCH", "BrokerError", "PublishFailed"]

log = logging.getLogger(__name__)

SnapshotHandler = Callable[[bytes], Awaitable[None]]
# A state provider gets the seq the requester already holds (None: it did not say) and returns
# the envelope to answer with, or None for no answer.
StateProvider = Callable[[int | None], bytes | None]
HAVE_FIELD = "have"  # in a state.request body: the seq the requester holds


def refusal(error: BaseException, url: str) -> str:
    """Why a connection failed, in words that point at the fix. RabbitMQ answers an open of a
    vhost that does not exist, or that the user has no permissions in, with Connection.Close,
    which aiormq reports as an unexpected frame (its reply text lost)."""
    if isinstance(error, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(error):
        vhost = url_vhost(url) or "/"
        return f"the broker refused vhost {vhost!r}: no such vhost, or no permissions there"
    # aiormq's connection errors carry the cause in their args ((errno, text), a TLS
    # verification failure included), and print nothing of it.
    said = [str(a) for a in error.args if isinstance(a, str) and a] or [str(error)]
    return f"{type(error).__name__}: {' '.join(said)}"


async def connect(
    urls: Sequence[str] | BrokerOrder,
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
    and own the whole session: any loss ends it and they rebuild it (see agent.daemon).
    A `BrokerOrder` (the daemons') says which node to try first and learns the one reached;
    a plain list is tried in its order."""
    connect_fn: Any = aio_pika.connect_robust if robust else aio_pika.connect
    # Jitter keeps a hundred agents from reconnecting in lock step after an outage.
    backoff, tries, last = Backoff(0.1, max_delay, jitter=0.5), 0, ""
    while True:
        for url in urls.round() if isinstance(urls, BrokerOrder) else urls:
            try:
                connection = await connect_fn(
                    url,
                    client_properties={"connection_name": name},
                    heartbeat=int(max(1, heartbeat)),
                    timeout=10,
                )
                if isinstance(urls, BrokerOrder):
                    urls.connected(url)
                return connection
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as e:
                # A vhost that does not exist or is not allowed to this user must not read as
                # a network problem.
                last = f"{shown(url)}: {refusal(e, url)}".splitlines()[0][:300]
                log.info("broker not reachable: %s", last)
        tries += 1
        if attempts is not None and tries >= attempts:
            raise BrokerError(f"no broker reachable after {tries} rounds (last: {last})")
        if (stop is not None and stop.is_set()) or await backoff.wait(stop):
            raise BrokerError("stopped while connecting")


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
    stream: topo.QueueSpec = topo.CONFIG_QUEUE,
) -> tuple[AbstractQueue, str]:
    """Consume the config stream (or another stream of whole signed documents: `erel.rollout`)
    from `offset`; a delivery is acked only after `handler` returned (it stores the snapshot
    first), in batches (`StreamAcks`). A handler error is logged and the delivery not acked on
    its own.

    Agents consume `passive`ly: they may not (and must not race to) create the stream; until the
    publisher has declared it (or while the broker reports it down) this raises NotFound and
    the agent retries."""
    try:
        with wrapped(f"consume {stream.name}"):
            await channel.set_qos(prefetch_count=SNAPSHOT_PREFETCH)  # streams require a prefetch
            queue = await channel.declare_queue(
                stream.name,
                durable=True,
                passive=passive,
                arguments=None if passive else dict(stream.arguments),
            )
    except NotFound as e:
        raise NotFound(
            f"{stream.name} does not exist yet or is down (publisher not started?)"
        ) from e
    acks = StreamAcks()

    async def on_message(message: AbstractIncomingMessage) -> None:
        try:
            await handler(message.body)
        except Exception:
            log.exception("snapshot handler failed; delivery left unacked")
            return
        acks.done(message)

    with wrapped(f"consume {stream.name}"):
        tag = await queue.consume(on_message, arguments={"x-stream-offset": offset})
    return queue, tag


async def consume_offsets(
    channel: AbstractChannel,
    stream: str,
    offset: Any,
    handler: Callable[[bytes, int], None],
) -> tuple[AbstractQueue, str]:
    """Consume `stream` from `offset`, giving `handler` each body with its offset in the
    stream (the `x-stream-offset` header RabbitMQ sets on every delivery)."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        at = (message.headers or {}).get("x-stream-offset")
        if isinstance(at, int):
            handler(message.body, at)
        await message.ack()

    with wrapped(f"consume {stream}"):
        await channel.set_qos(prefetch_count=SNAPSHOT_PREFETCH)
        queue = await channel.declare_queue(stream, passive=True)
        tag = await queue.consume(on_message, arguments={"x-stream-offset": offset})
    return queue, tag


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

    async def on_request(message: AbstractIncomingMessage) -> None:
        await message.ack()
        await answer(channel, message, provider(requester_holds(message.body)))

    with wrapped("serve state requests"):
        exchange = await channel.get_exchange(topo.SYNC_EXCHANGE)
        queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
        for key in keys:
            await queue.bind(exchange, routing_key=key)
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
    user_id: str | None = None,
) -> None:
    """Send `body` to the requester's `reply.<…>` key on `erel.sync`, with its correlation id
    (and `user_id`, which the broker checks: readers know which user answered).
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
            user_id=user_id,
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
Notice = Callable[[bytes], Awaitable[None]]  # a message on erel.control that gets no reply


async def serve_control(
    channel: AbstractChannel,
    host: str,
    instance: str,
    handler: CommandHandler,
    on_grant: Notice | None = None,
    *,
    user_id: str | None = None,
) -> AbstractQueue:
    """Take operator commands for this host: `host.<id>`, every `group.*` (the handler keeps
    only its current group's, so a group change needs no rebinding) and `all`; with `on_grant`,
    the publisher's copies of rollout documents for it (`grant.<id>`, no reply).

    The queue name carries the agent instance, so two agents wrongly sharing a host id both
    run (and `erel-sync members` shows both) instead of one failing on an exclusive queue."""
    keys = (topo.host_key(host), topo.group_key("*"), topo.ALL_KEY)
    notices = {topo.grant_key(host): on_grant} if on_grant is not None else {}
    queue = topo.agent_queue(host, f"control.{instance}")
    return await serve_commands(channel, queue, keys, handler, notices, user_id=user_id)


async def serve_commands(
    channel: AbstractChannel,
    queue_name: str,
    keys: Sequence[str],
    handler: CommandHandler,
    notices: Mapping[str, Notice] | None = None,
    *,
    user_id: str | None = None,
) -> AbstractQueue:
    """Take commands on `erel.control` for these binding keys through an exclusive queue of
    that name (agents: `serve_control`; the publisher: `rollout.*`); replies go to `erel.sync`
    under the command's `reply.<…>` reply-to, with its correlation id. `notices`: more binding
    keys, each with its own handler and no reply."""
    notices = dict(notices or {})

    async def on_command(message: AbstractIncomingMessage) -> None:
        if (notice := notices.get(message.routing_key or "")) is not None:
            await notice(message.body)
            return
        body = await handler(message.body)
        await answer(channel, message, body, expiration=60.0, user_id=user_id)

    with wrapped("serve commands"):
        exchange = await channel.get_exchange(topo.CONTROL_EXCHANGE)
        queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
        for key in (*keys, *notices):
            await queue.bind(exchange, routing_key=key)
        await queue.consume(on_command, no_ack=True)
    return queue


async def consume_status(
    channel: AbstractChannel,
    handler: Callable[[str, bytes], Awaitable[None]],
    *,
    pattern: str | Sequence[str] = "#",
) -> AbstractQueue:
    """Follow `erel.status` (heartbeats, rejections; one binding per pattern) through a private
    auto-delete queue."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        await handler(message.routing_key or "", message.body)

    with wrapped(f"follow {topo.STATUS_EXCHANGE}"):
        exchange = await channel.get_exchange(topo.STATUS_EXCHANGE)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in (pattern,) if isinstance(pattern, str) else pattern:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(on_message, no_ack=True)
    return queue
