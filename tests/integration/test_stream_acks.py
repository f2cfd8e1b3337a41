"""The config stream consumer on a real broker: batched acks keep the credit flowing.

On a stream, an ack only returns consumer credit; `broker.consume_snapshots` acks in batches
(`multiple`) after the handler returned. If a batch were never flushed, consumption would stall
once `SNAPSHOT_PREFETCH` deliveries were unacked; if a failing handler blocked the batch, every
later snapshot would stall behind it.
"""

from __future__ import annotations

import asyncio
import json

import aio_pika

from erel_sync.adapters.broker import messages as broker
from erel_sync.adapters.broker import topology as topo
from tests.rabbit import Rabbit
from tests.waiting import eventually

DEADLINE = 20.0


def unacked(rabbit: Rabbit, vhost_url: str) -> int:
    vhost = vhost_url.rsplit("/", 1)[1]
    rows = json.loads(
        rabbit.ctl(
            "-q", "list_channels", "-p", vhost, "messages_unacknowledged", "--formatter", "json"
        )
    )
    return sum(int(r["messages_unacknowledged"]) for r in rows)


async def test_batched_acks_return_credit_and_flush_when_idle(vhost: str, rabbit: Rabbit) -> None:
    n = broker.SNAPSHOT_PREFETCH * 4 + 3  # several times the credit, and a partial batch
    got: list[int] = []
    done = asyncio.Event()

    async def handler(raw: bytes) -> None:
        seq = json.loads(raw)["seq"]
        if seq == 5:
            raise OSError("disk full")  # left unacked alone; must not hold up the rest
        got.append(seq)
        if seq == n:
            done.set()

    async with await aio_pika.connect(vhost) as connection:
        consume = await connection.channel()
        await broker.consume_snapshots(consume, handler, offset="first")
        publish = await connection.channel()
        for seq in range(1, n + 1):
            await publish.default_exchange.publish(
                aio_pika.Message(json.dumps({"seq": seq}).encode()),
                routing_key=topo.CONFIG_STREAM,
            )
        async with asyncio.timeout(DEADLINE):
            await done.wait()
        assert got == [s for s in range(1, n + 1) if s != 5]

        # The last partial batch is acked once the consumer has been idle for ACK_DELAY.
        async def all_acked() -> bool:  # the broker's own count
            return await asyncio.to_thread(unacked, rabbit, vhost) == 0

        await eventually(all_acked, DEADLINE, what="no delivery left unacked", every=0.1)
