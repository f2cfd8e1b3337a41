"""Reading a whole RabbitMQ stream in a test, exactly: the reader appends a marker record of its
own through the stream's exchange, then reads from the first record until the marker comes back
(a stream never says "that was the last one"; waiting for silence would be a guess)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aio_pika


async def read_stream(
    url: str, queue: str, exchange: str, routing_key: str, within: float = 30.0
) -> list[dict[str, Any]]:
    """Every JSON record of stream `queue` (bound to `exchange` for `routing_key`), oldest
    first, without the marker."""
    marker = uuid.uuid4().hex
    records: list[dict[str, Any]] = []
    done = asyncio.Event()
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await (await channel.get_exchange(exchange)).publish(
            aio_pika.Message(json.dumps({"kind": "test-marker", "marker": marker}).encode()),
            routing_key=routing_key,
        )
        await channel.set_qos(prefetch_count=500)
        stream = await channel.declare_queue(queue, passive=True)

        async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            doc = json.loads(message.body)
            if doc.get("marker") == marker:
                done.set()
            elif doc.get("kind") != "test-marker":
                records.append(doc)
            await message.ack()

        await stream.consume(on, arguments={"x-stream-offset": "first"})
        async with asyncio.timeout(within):
            await done.wait()
    return records
