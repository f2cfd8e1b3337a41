"""Batched acks for stream consumers (`messages.consume_snapshots`)."""

from __future__ import annotations

import asyncio
import contextlib

from aio_pika.abc import AbstractIncomingMessage

SNAPSHOT_PREFETCH = 16
# Half the snapshot consumer's prefetch, so its credit never runs dry.
ACK_BATCH = SNAPSHOT_PREFETCH // 2
ACK_DELAY = 0.2


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
