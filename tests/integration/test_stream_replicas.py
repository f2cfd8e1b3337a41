"""Streams are declared replicated (`x-initial-cluster-size`, adapters.broker.topology), and a
broker whose streams an older publisher made without it keeps working: RabbitMQ refuses the
re-declaration as inequivalent, and the publisher (and `broker setup`) then take the stream as
it is, with its bindings, instead of failing every session."""

from __future__ import annotations

import aio_pika
import pytest

from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.session import Session
from erel_sync.adapters.broker.setup import declare_topology
from erel_sync.publisher.streams import ensure_topology
from tests.streams import read_stream

pytestmark = pytest.mark.integration


async def test_streams_made_before_replicas_are_taken_as_they_are(vhost: str) -> None:
    assert topo.CONFIG_STREAM_ARGUMENTS[topo.REPLICAS_ARG] == topo.STREAM_REPLICAS
    old = {k: v for k, v in topo.CONFIG_STREAM_ARGUMENTS.items() if k != topo.REPLICAS_ARG}
    connection = await aio_pika.connect(vhost)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(topo.CONFIG_STREAM, durable=True, arguments=old)
        refused = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as info:
            await refused.declare_queue(
                topo.CONFIG_STREAM, durable=True, arguments=dict(topo.CONFIG_STREAM_ARGUMENTS)
            )
        assert topo.made_before_replicas(info.value)

    extra: dict[str, int] = {}
    async with await Session.open([vhost], name="test", attempts=3) as session:
        assert await ensure_topology(session, extra) is True
        assert extra == {}  # not re-created: the stream and what it holds stay
        # Bound all the same: a snapshot published to the exchange lands in the stream.
        await session.publish(topo.CONFIG_EXCHANGE, topo.CONFIG_ROUTING_KEY, b'{"x": 1}')
    await declare_topology(vhost)  # `broker setup` on the same broker

    records = await read_stream(
        vhost, topo.CONFIG_STREAM, topo.CONFIG_EXCHANGE, topo.CONFIG_ROUTING_KEY
    )
    assert records == [{"x": 1}]


async def test_a_new_stream_is_made_with_its_replicas(vhost: str) -> None:
    async with await Session.open([vhost], name="test", attempts=3) as session:
        assert await ensure_topology(session, {}) is True
    connection = await aio_pika.connect(vhost)
    async with connection:
        # The same arguments again are accepted; without the replicas they are not.
        channel = await connection.channel()
        await channel.declare_queue(
            topo.CONFIG_STREAM, durable=True, arguments=dict(topo.CONFIG_STREAM_ARGUMENTS)
        )
        old = {k: v for k, v in topo.CONFIG_STREAM_ARGUMENTS.items() if k != topo.REPLICAS_ARG}
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await (await connection.channel()).declare_queue(
                topo.CONFIG_STREAM, durable=True, arguments=old
            )
