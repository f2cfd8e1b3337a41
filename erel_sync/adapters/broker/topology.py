"""The RabbitMQ topology of erel-sync: names, types and arguments of every exchange and queue.

Used by `adapters.broker.setup` (the `erel-sync broker setup` command declares it once), by the
broker session (the publisher re-declares it on every connection, agents only check the config
stream passively) and by tests. It lives in one module because a stream re-declared with
different arguments fails with PRECONDITION_FAILED, and because the permission regexes in
`adapters.broker.setup` are written against these exact names. The names and arguments are pure
data; the one way to declare them (`declare_exchanges`, `declare_queue`) takes an
open channel and raises the library's errors, which its callers wrap.

Topology (docs/broker.md has the why):
- `erel.config` fanout exchange -> `erel.config` stream queue. The publisher publishes to the
  exchange, never through the default exchange, so that agents can be denied `amq.default`.
- `erel.status` (topic): heartbeats and reports, routing key `host.<id>`.
- `erel.control` (topic): commands to `host.<id>` or `group.<name>`.
- `erel.status` -> `erel.presence` stream (binding `presence.*`): small presence records each
  agent publishes on connect, every PRESENCE_INTERVAL and when it leaves, read back by
  `erel-sync status`/`members` to know which hosts exist and name the ones that do not answer.
- `erel.status` -> `erel.revisions` stream (binding `publisher.*`): the publisher's revision
  events, `publisher.published` and `publisher.rejected`, kept for a week, so that `erel-sync
  wait` started later (even while the publisher is down) knows what became of a revision.
- `erel.sync` (topic): `state.request` (reply-to `amq.rabbitmq.reply-to`, answered by a
  publisher) and peer replies `reply.<host>` (agents cannot publish to direct reply-to).
- `erel.rollout` fanout exchange -> `erel.rollout` stream: the publisher's signed rollout
  documents (grants), read by agents and the CLI from `last`. An exchange of its own, not
  `erel.config`: a fanout ignores routing keys, so a shared one would put every rollout
  document into the config stream and every snapshot into this one.
- `erel.status` -> `erel.rollout.events` stream (binding `rollout.*`): each agent's rollout
  events (`rollout.<host>`), from which observers reconstruct who changed when. Operator
  commands `rollout.<group>` (promote, retry) go to `erel.control`, where the publisher binds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel

ExchangeType = Literal["fanout", "topic", "direct"]

PREFIX: Final = "erel."

CONFIG_EXCHANGE: Final = "erel.config"
CONFIG_EXCHANGE_TYPE: Final[ExchangeType] = "fanout"
CONFIG_ROUTING_KEY: Final = ""  # fanout ignores it; kept so every publish names one
CONFIG_STREAM: Final = "erel.config"
STATUS_EXCHANGE: Final = "erel.status"
CONTROL_EXCHANGE: Final = "erel.control"
SYNC_EXCHANGE: Final = "erel.sync"

# Names of built-in resources as RabbitMQ's permission checks see them.
DEFAULT_EXCHANGE_RESOURCE: Final = "amq.default"  # publishing with exchange "" checks this name
DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"
SERVER_NAMED_PREFIX: Final = "amq.gen-"  # queues declared with an empty name
AGENT_QUEUE_PREFIX: Final = "erel.agent."  # client-named agent queues: erel.agent.<host>.<use>

# Routing keys.
STATE_REQUEST_KEY: Final = "state.request"  # on erel.sync: publisher and every agent answer
PUBLISHER_STATE_KEY: Final = "state.request.publisher"  # on erel.sync: only publishers answer
PUBLISHER_REJECTED_KEY: Final = "publisher.rejected"  # on erel.status: a revision refused
PUBLISHER_PUBLISHED_KEY: Final = "publisher.published"  # on erel.status: a snapshot published
PUBLISHER_CLAIM_KEY: Final = "publisher.claim"  # on erel.status: an --ha publisher's epoch claim
REVISIONS_PATTERN: Final = "publisher.*"  # on erel.status, into the revisions stream
REVISIONS_STREAM: Final = "erel.revisions"
PRESENCE_PATTERN: Final = "presence.*"  # on erel.status, into the presence stream
PRESENCE_STREAM: Final = "erel.presence"
PRESENCE_INTERVAL: Final = 30.0  # seconds between two presence records of a live agent
ROLLOUT_EXCHANGE: Final = "erel.rollout"
ROLLOUT_EXCHANGE_TYPE: Final[ExchangeType] = "fanout"
ROLLOUT_ROUTING_KEY: Final = "rollout"  # fanout ignores it; kept so every publish names one
ROLLOUT_STREAM: Final = "erel.rollout"
ROLLOUT_PATTERN: Final = "rollout.*"  # on erel.status (events), on erel.control (commands)
ROLLOUT_EVENTS_STREAM: Final = "erel.rollout.events"
PUBLISHER_QUEUE_PREFIX: Final = "erel.publisher."  # the publisher's own named queues
PUBLISHER_LOCK: Final = "erel.publisher.lock"  # exclusive: held by the active --ha publisher
PUBLISHER_REPLY_ID: Final = "publisher"  # `host_id` of the publisher's command replies

# Stream retention. Snapshots are whole states, so only the tail matters; the publisher also
# republishes the current snapshot on a timer, so age-based expiry never empties a live stream.
# Retention drops whole segments, hence segments much smaller than the byte cap.
CONFIG_STREAM_MAX_BYTES: Final = 256 * 1024 * 1024
CONFIG_STREAM_SEGMENT_BYTES: Final = 16 * 1024 * 1024
CONFIG_STREAM_MAX_AGE: Final = "30D"


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: ExchangeType
    durable: bool = True


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, str | int] = field(default_factory=dict)
    durable: bool = True


@dataclass(frozen=True)
class BindingSpec:
    exchange: str
    queue: str
    routing_key: str = ""


# Every stream is replicated on up to three nodes of a RabbitMQ cluster (RabbitMQ caps it at
# the cluster's size: a single node just holds it). An argument RabbitMQ checks at every
# declaration: a stream made before it was set is accepted as it is (`REPLICAS_ARG` in the
# refusal), since its members cannot change by a declaration anyway (docs/broker.md).
REPLICAS_ARG: Final = "x-initial-cluster-size"
STREAM_REPLICAS: Final = 3

CONFIG_STREAM_ARGUMENTS: Final[dict[str, str | int]] = {
    "x-queue-type": "stream",
    REPLICAS_ARG: STREAM_REPLICAS,
    "x-max-length-bytes": CONFIG_STREAM_MAX_BYTES,
    "x-stream-max-segment-size-bytes": CONFIG_STREAM_SEGMENT_BYTES,
    "x-max-age": CONFIG_STREAM_MAX_AGE,
}

# Presence: only the recent past matters (which hosts were alive lately), and records are small;
# small segments so that age-based retention actually drops old ones.
PRESENCE_STREAM_ARGUMENTS: Final[dict[str, str | int]] = {
    "x-queue-type": "stream",
    REPLICAS_ARG: STREAM_REPLICAS,
    "x-max-length-bytes": 64 * 1024 * 1024,
    "x-stream-max-segment-size-bytes": 1024 * 1024,
    "x-max-age": "1D",
}

# Revision events: one small record per commit the publisher took (its commit list is bounded),
# read back by `wait` (and later `history`); a week of them is plenty and stays small.
REVISIONS_STREAM_ARGUMENTS: Final[dict[str, str | int]] = {
    "x-queue-type": "stream",
    REPLICAS_ARG: STREAM_REPLICAS,
    "x-max-length-bytes": 64 * 1024 * 1024,
    "x-stream-max-segment-size-bytes": 1024 * 1024,
    "x-max-age": "7D",
}

# Rollout documents: whole states like snapshots (only the tail matters, republished on a timer),
# one per change of a group's rollout; small segments so that retention actually drops old ones.
ROLLOUT_STREAM_ARGUMENTS: Final[dict[str, str | int]] = {
    "x-queue-type": "stream",
    REPLICAS_ARG: STREAM_REPLICAS,
    "x-max-length-bytes": 64 * 1024 * 1024,
    "x-stream-max-segment-size-bytes": 1024 * 1024,
    "x-max-age": "7D",
}

# Rollout events: a few small records per host and rollout, the history observers replay.
ROLLOUT_EVENTS_STREAM_ARGUMENTS: Final[dict[str, str | int]] = {
    "x-queue-type": "stream",
    REPLICAS_ARG: STREAM_REPLICAS,
    "x-max-length-bytes": 64 * 1024 * 1024,
    "x-stream-max-segment-size-bytes": 1024 * 1024,
    "x-max-age": "7D",
}

EXCHANGES: Final = (
    ExchangeSpec(CONFIG_EXCHANGE, CONFIG_EXCHANGE_TYPE),
    ExchangeSpec(ROLLOUT_EXCHANGE, ROLLOUT_EXCHANGE_TYPE),
    ExchangeSpec(STATUS_EXCHANGE, "topic"),
    ExchangeSpec(CONTROL_EXCHANGE, "topic"),
    ExchangeSpec(SYNC_EXCHANGE, "topic"),
)
CONFIG_QUEUE: Final = QueueSpec(CONFIG_STREAM, dict(CONFIG_STREAM_ARGUMENTS))
PRESENCE_QUEUE: Final = QueueSpec(PRESENCE_STREAM, dict(PRESENCE_STREAM_ARGUMENTS))
REVISIONS_QUEUE: Final = QueueSpec(REVISIONS_STREAM, dict(REVISIONS_STREAM_ARGUMENTS))
ROLLOUT_QUEUE: Final = QueueSpec(ROLLOUT_STREAM, dict(ROLLOUT_STREAM_ARGUMENTS))
ROLLOUT_EVENTS_QUEUE: Final = QueueSpec(
    ROLLOUT_EVENTS_STREAM, dict(ROLLOUT_EVENTS_STREAM_ARGUMENTS)
)
QUEUES: Final = (
    CONFIG_QUEUE,
    PRESENCE_QUEUE,
    REVISIONS_QUEUE,
    ROLLOUT_QUEUE,
    ROLLOUT_EVENTS_QUEUE,
)
BINDINGS: Final = (
    BindingSpec(CONFIG_EXCHANGE, CONFIG_STREAM, CONFIG_ROUTING_KEY),
    BindingSpec(STATUS_EXCHANGE, PRESENCE_STREAM, PRESENCE_PATTERN),
    BindingSpec(STATUS_EXCHANGE, REVISIONS_STREAM, REVISIONS_PATTERN),
    BindingSpec(ROLLOUT_EXCHANGE, ROLLOUT_STREAM, ROLLOUT_ROUTING_KEY),
    BindingSpec(STATUS_EXCHANGE, ROLLOUT_EVENTS_STREAM, ROLLOUT_PATTERN),
)


def host_key(host: str) -> str:
    """Routing key of one host's heartbeats on erel.status and of commands to it on erel.control."""
    return f"host.{host}"


def group_key(group: str) -> str:
    return f"group.{group}"


def presence_key(host: str) -> str:
    return f"presence.{host}"


def rollout_key(name: str) -> str:
    """A host's rollout events on erel.status (`rollout.<host>`), and operator rollout commands
    for a group on erel.control (`rollout.<group>`)."""
    return f"rollout.{name}"


def grant_key(host: str) -> str:
    """On erel.control: the publisher's own copy of a rollout document that changed this host's
    grant, to the host's control queue (the stream delivers the same bytes to everyone, later)."""
    return f"grant.{host}"


ALL_KEY: Final = "all"  # on erel.control: every agent


def reply_key(host: str) -> str:
    """Where peer agents send `state.request` answers (they may not use direct reply-to)."""
    return f"reply.{host}"


def agent_queue(host: str, use: str) -> str:
    return f"{AGENT_QUEUE_PREFIX}{host}.{use}"


async def declare_exchanges(channel: AbstractChannel) -> None:
    """Every exchange of erel-sync (idempotent)."""
    for x in EXCHANGES:
        await channel.declare_exchange(x.name, x.type, durable=x.durable)


async def declare_queue(channel: AbstractChannel, spec: QueueSpec, *, exists: bool = False) -> None:
    """One stream and its bindings (after the exchanges). A stream the broker reports down
    raises NOT_FOUND; one that exists with other arguments PRECONDITION_FAILED. `exists`:
    only check that it does (passive), then bind it."""
    queue = await channel.declare_queue(
        spec.name,
        durable=spec.durable,
        passive=exists,
        arguments=None if exists else dict(spec.arguments),
    )
    for b in BINDINGS:
        if b.queue == spec.name:
            await queue.bind(b.exchange, routing_key=b.routing_key)


def made_before_replicas(refusal: BaseException) -> bool:
    """A PRECONDITION_FAILED that is only about a stream declared before `REPLICAS_ARG`."""
    return f"inequivalent arg '{REPLICAS_ARG}'" in str(refusal)
