"""The publisher's streams on a new broker session: declare them, and read a stream's tail.

Called by `publisher.daemon` (topology and seq recovery on every session) and by
`publisher.rollout` (the newest rollout document, for a publisher whose state directory is new
or older than the stream). Kept out of the daemon so that it stays about heads and snapshots;
the wire calls themselves are the broker session's (`adapters.broker.session`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import BrokerError, NotFound
from erel_sync.adapters.broker.session import Session
from erel_sync.core.snapshot import SIGNED_REFUSALS, SnapshotRejected, verify_envelope

log = logging.getLogger("erel_sync.publisher")

T = TypeVar("T")

TAIL_WAIT = 0.5  # how long an empty stream is given to deliver its tail (`last`)
TAIL_SETTLE = 0.05  # silence that ends the newest chunk's burst

# Without these only their readers lose something: `status` its memory of silent hosts
# (presence), `wait` its durable record of rejections (revisions), observers the history of
# rollouts (events). The rollout stream is declared here too, and a failure only stops
# rollout documents (their own publishing loop retries): snapshots go on.
SIDE_STREAMS = (
    topo.PRESENCE_QUEUE,
    topo.REVISIONS_QUEUE,
    topo.ROLLOUT_QUEUE,
    topo.ROLLOUT_EVENTS_QUEUE,
)


async def ensure_topology(session: Session, extra: dict[str, int]) -> bool:
    """Declare the topology (`adapters.broker.topology`); False when the config stream cannot
    be had. `extra`: the publisher's counters (`stream_recreated`, `stream_unavailable`).

    A stream the broker reports down (RabbitMQ 3.10 does not restart a single-node stream
    after a crash) is deleted and declared again: it only holds whole snapshots, and the
    current one is republished right after. If even that fails, the publisher keeps answering
    `state.request` (agents join through it) and retries on the next session."""
    await session.declare_exchanges()
    for spec in SIDE_STREAMS:
        try:
            await session.declare_queue(spec)
        except BrokerError as e:
            log.error("%s stream unavailable (%s)", spec.name, e)
    try:
        await session.declare_queue(topo.CONFIG_QUEUE)
        return True
    except NotFound as e:
        log.error("config stream is down on the broker (%s): re-creating it", e)
    try:
        await session.delete_queue(topo.CONFIG_STREAM)
        await session.declare_queue(topo.CONFIG_QUEUE)
    except BrokerError as e:
        log.error("config stream cannot be re-created (%s); serving peers meanwhile", e)
        extra["stream_unavailable"] = extra.get("stream_unavailable", 0) + 1
        return False
    extra["stream_recreated"] = extra.get("stream_recreated", 0) + 1
    return True


async def stream_tail(
    session: Session,
    stream: topo.QueueSpec,
    parse: Callable[[bytes], T | None],
    *,
    wait: float = TAIL_WAIT,
) -> list[T]:
    """What `parse` makes of the messages at the stream's tail (`last`: the newest chunk, so
    possibly a few); [] when the stream is empty or nothing there parses within `wait`."""
    found: list[T] = []
    arrived = asyncio.Event()

    async def on_message(raw: bytes) -> None:
        value = parse(raw)
        if value is not None:
            found.append(value)
            arrived.set()

    consumer = await session.consume_config(on_message, offset="last", watch=False, stream=stream)
    try:
        # `last` starts at the newest chunk, oldest message first: the rest of the chunk comes
        # in the same burst, so the read ends at the first short silence after it began.
        limit = wait
        while True:
            arrived.clear()
            try:
                async with asyncio.timeout(limit):
                    await arrived.wait()
            except TimeoutError:
                return found
            limit = TAIL_SETTLE
    finally:
        await consumer.cancel()


async def config_tail_seqs(session: Session, trusted: Mapping[str, str]) -> list[int]:
    """The seqs at the config stream's tail, of snapshots signed by a trusted key."""

    def seq_of(raw: bytes) -> int | None:
        try:
            return verify_envelope(raw, trusted).seq
        except SnapshotRejected as e:
            # Signed by a trusted key but not loadable here (a newer publisher's body):
            # its seq is genuine and taken all the same, or this one could sign it again.
            return e.seq if e.reason in SIGNED_REFUSALS else None

    return await stream_tail(session, topo.CONFIG_QUEUE, seq_of)
