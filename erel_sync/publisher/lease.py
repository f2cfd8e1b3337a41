"""Publishers that take turns (`erel-sync publisher --ha`): the broker's lock, and the epoch
each activation claims.

The lock is RabbitMQ's own: a queue declared exclusive to one connection
(`erel.publisher.lock`). Whoever declares it is the active publisher until its connection ends
(a crash, a kill, a broker that stops hearing its heartbeats: the broker then deletes the
queue); the others retry every LOCK_RETRY and stay standby meanwhile, signing nothing.

Right after taking the lock, the publisher claims an epoch: it appends a claim record to the
`erel.revisions` stream (`publisher.claim` on `erel.status`) and reads it back; its offset
in the stream plus one is the epoch. Stream offsets only grow and only the lock's holder
claims, so every activation gets an epoch above all before it, and it signs only seqs of its
own epoch (core.epochs). docs/architecture.md, "Standby publishers", has the argument.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid

from erel_sync.adapters.backoff import pause
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import BrokerError, ConnectionLost
from erel_sync.adapters.broker.session import Session
from erel_sync.adapters.clock import utc_now

log = logging.getLogger("erel_sync.publisher")

LOCK_RETRY = 1.0  # seconds between two tries of a standby publisher
CLAIM_WAIT = 15.0  # how long the claim may take to come back from the stream
CLAIM_LOOKBACK = dt.timedelta(hours=1)  # where reading for it starts (clocks may differ)


async def take_turn(
    session: Session, stop: asyncio.Event, standby: asyncio.Event, *, ha: bool = True
) -> bool:
    """Wait until this session holds the lock (True) or `stop` (False). `standby` is set while
    another publisher holds it. Raises ConnectionLost when the session breaks meanwhile.
    A publisher without --ha takes the lock too, so that it never publishes beside an active
    one (its seqs are not of an epoch): it waits, and says why."""
    while not stop.is_set():
        if await session.take_lock(topo.PUBLISHER_LOCK):
            standby.clear()
            return True
        if not standby.is_set():
            if ha:
                log.info("standby: another publisher holds %s", topo.PUBLISHER_LOCK)
            else:
                log.error(
                    "another publisher is active on this broker (it holds %s): this one, "
                    "without --ha, waits until it is gone; run every publisher of a broker "
                    "with --ha",
                    topo.PUBLISHER_LOCK,
                )
            standby.set()
        if session.broken.is_set():
            raise ConnectionLost("the session ended while standing by")
        await pause(LOCK_RETRY, stop)
    return False


async def claim_epoch(session: Session, key_id: str) -> int:
    """Append a claim to `erel.revisions` and return its offset plus one."""
    nonce = uuid.uuid4().hex
    claim = {"kind": "claim", "key_id": key_id, "nonce": nonce, "at": utc_now()}
    await session.publish(
        topo.STATUS_EXCHANGE,
        topo.PUBLISHER_CLAIM_KEY,
        json.dumps(claim).encode(),
        persistent=True,
    )
    found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on(body: bytes, offset: int) -> None:
        if nonce.encode() in body and not found.done():
            found.set_result(offset)

    start = dt.datetime.now(dt.UTC) - CLAIM_LOOKBACK
    consumer = await session.read_stream(topo.REVISIONS_STREAM, start, on)
    try:
        async with asyncio.timeout(CLAIM_WAIT):
            offset = await found
    except TimeoutError as e:
        raise BrokerError(f"the epoch claim did not come back from {topo.REVISIONS_STREAM}") from e
    finally:
        await consumer.cancel()
    return offset + 1


async def activate(
    session: Session, stop: asyncio.Event, standby: asyncio.Event, key_id: str, *, ha: bool
) -> int | None:
    """Stand by until this session holds the lock, then claim an epoch and return it (None
    at `stop`; 0 without --ha, which signs seqs of no epoch)."""
    if not await take_turn(session, stop, standby, ha=ha):
        return None
    if not ha:
        return 0
    epoch = await claim_epoch(session, key_id)
    log.warning("active: holding %s, epoch %d", topo.PUBLISHER_LOCK, epoch)
    return epoch
