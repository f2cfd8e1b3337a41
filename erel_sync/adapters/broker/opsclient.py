"""The operator side of the control plane: commands out on `erel.control`, replies back, the
presence stream read, heartbeats followed. Used by `erel-sync status|members|wait|start|…`
and `erel-sync rollout promote|retry` (commands to the publisher, `rollout.<group>`).

Adapter (AMQP). Replies come to a private queue bound on `erel.sync` under `reply.op-<id>` (the
same path peer agents use for state answers), matched by correlation id. The set of hosts that
*should* answer comes from the presence stream (docs/operating.md): every agent writes a small
record there when it connects, every 30 s and when it stops cleanly, so a host whose agent died
is still known and can be named as unreachable. `wait` also follows the `erel.revisions` stream
(the publisher's `published`/`rejected` events) to learn what became of the revision it awaits.

Every library failure leaves as `broker.BrokerError` (one line for the CLI); a vhost without
erel-sync's exchanges as `TopologyMissing`, which says how to create them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from erel_sync.adapters.broker import messages as broker
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import ConnectionLost, NotFound, classify, first_line
from erel_sync.adapters.broker.permissions import speaks_for
from erel_sync.core import control
from erel_sync.core.control import Command
from erel_sync.model.brokerurl import spread

log = logging.getLogger(__name__)

PRESENCE_IDLE = 0.12  # the presence backlog is delivered at once: this much silence ends it
REVISION_KINDS = ("published", "rejected")

Follower = Callable[[], Awaitable[bool]]  # a stream followed; False: the stream is not there


class TopologyMissing(NotFound):
    """The vhost lacks an exchange or stream of erel-sync: nothing was set up there yet (an
    operator must run `broker setup` or start the publisher: not transient for the CLI)."""

    transient = False


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """aiormq/aio-pika failures of one step as BrokerError, bounded and on one line; a missing
    exchange or stream as TopologyMissing, which says how to create it."""
    try:
        yield
    except TopologyMissing:
        raise
    except NotFound as e:
        raise _missing(what, e) from e
    except broker.BrokerError:
        raise
    except aiormq.exceptions.ChannelNotFoundEntity as e:
        raise _missing(what, e) from e
    except (aiormq.exceptions.AMQPError, ConnectionError, TimeoutError, RuntimeError) as e:
        raise classify(what, e) from e


def _missing(what: str, e: BaseException) -> TopologyMissing:
    if isinstance(e, NotFound) and e.__cause__ is not None:
        e = e.__cause__  # the broker's own words, not the adapter's step name twice
    return TopologyMissing(
        f"{what}: {first_line(e)}: this vhost has no erel-sync topology; create it with "
        "`erel-sync broker setup` (or start the publisher once), or check --vhost"
    )


class OpsClient:
    """One broker session of an operator command (async context manager)."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.reply_key = f"reply.op-{uuid.uuid4().hex[:12]}"
        self._conn: AbstractRobustConnection | Any = None
        self._channel: AbstractChannel | None = None
        self._replies: dict[str, list[dict[str, Any]]] = {}
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> OpsClient:
        stop = asyncio.Event()
        self._conn = await broker.connect(
            spread(self.urls, self.reply_key), name="erel-sync-cli", stop=stop, robust=False,
            attempts=2,
        )  # fmt: skip
        try:
            with _translated("reply queue on erel.sync"):
                self._channel = await self._conn.channel(publisher_confirms=True)
                exchange = await self._channel.get_exchange(topo.SYNC_EXCHANGE)
                queue = await self._channel.declare_queue("", exclusive=True, auto_delete=True)
                await queue.bind(exchange, routing_key=self.reply_key)
                await queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            # `async with` runs no __aexit__ when __aenter__ fails: close here, or the
            # connection's callbacks fire after the event loop is gone (noise at exit).
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._conn.close()

    async def hold(
        self,
        stop: asyncio.Event,
        *,
        every: float = 5.0,
        tick: Callable[[], Awaitable[None]] | None = None,
        absent: Sequence[Follower] = (),
    ) -> None:
        """A long-lived reader's session (`web`, `notify`): return at `stop`, raise
        ConnectionLost when the connection goes (`keep_session` then connects again); `tick`
        runs every `every` seconds meanwhile, and so does each follower of `absent` (from
        `follow_all`) until its stream exists."""
        lost = asyncio.Event()
        self._conn.close_callbacks.add(lambda *_: lost.set())
        if self._conn.is_closed:
            lost.set()
        ends = {asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())}
        try:
            while not any(t.done() for t in ends):
                await asyncio.wait(ends, timeout=every, return_when=asyncio.FIRST_COMPLETED)
                if any(t.done() for t in ends):
                    break
                absent = await self.follow_all(*absent)
                if tick is not None:
                    await tick()
        finally:
            for t in ends:
                t.cancel()
        if not stop.is_set():
            raise ConnectionLost("connection to the broker lost")

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None, "use OpsClient as an async context manager"
        return self._channel

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        doc = control.parse_reply(message.body)
        if doc is None or message.correlation_id is None:
            return
        if not speaks_for(message.user_id, doc.get("host_id")):
            # Another host's agent user answering in this host's name (per-host users make
            # the broker vouch for user_id): dropped, so it cannot make the host look well.
            log.warning("reply for %s sent by %s: dropped", doc.get("host_id"), message.user_id)
            return
        doc["received"] = time.time()
        self._replies.setdefault(message.correlation_id, []).append(doc)
        self._arrived.set()

    async def send(self, cmd: Command, ttl: float) -> None:
        """Publish a command; a `host.<id>` command nobody is bound for raises PublishFailed
        (no live agent for that host), as does a `rollout.<group>` one (no publisher takes
        them); group and `all` commands may reach nobody. A vhost without `erel.control`
        raises TopologyMissing."""
        with _translated(f"exchange {topo.CONTROL_EXCHANGE}"):
            await self.channel.get_exchange(topo.CONTROL_EXCHANGE)
        await broker.publish(
            self.channel,
            topo.CONTROL_EXCHANGE,
            cmd.target,
            cmd.encode(),
            mandatory=cmd.target.startswith(("host.", "rollout.")),
            reply_to=self.reply_key,
            correlation_id=cmd.id,
            expiration=ttl,  # the broker drops it too once stale
        )

    async def collect(
        self,
        cmd_id: str,
        *,
        expected: set[str],
        within: float,
        settle: float = 0.05,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Replies by host until every expected host answered (then a short settle, to catch
        a second agent wrongly claiming the same host id) or `within` seconds passed."""
        deadline = time.monotonic() + within
        seen = 0
        while True:
            got = self._replies.get(cmd_id, [])
            if on_reply is not None:
                for doc in got[seen:]:
                    on_reply(doc)
            seen = len(got)
            hosts = {d["host_id"] for d in got}
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait = left
            if expected and expected <= hosts:
                wait = min(left, settle)
            self._arrived.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
            except TimeoutError:
                if expected and expected <= hosts:
                    break
        out: dict[str, list[dict[str, Any]]] = {}
        for d in self._replies.get(cmd_id, []):
            out.setdefault(d["host_id"], []).append(d)
        return out

    async def read_presence(self, since: float, *, max_wait: float = 3.0) -> list[dict[str, Any]]:
        """Presence records sent after `since` (unix seconds); [] when the stream is missing.

        A stream never says "that was the last one", so the client first appends a marker
        record of its own and reads until the marker comes back: exact, and no waiting for
        silence. A user who may not write `erel.status` falls back to PRESENCE_IDLE of silence.
        """
        with _translated(f"read {topo.PRESENCE_STREAM}"):
            return await self._read_presence(since, max_wait)

    async def _read_presence(self, since: float, max_wait: float) -> list[dict[str, Any]]:
        marker = uuid.uuid4().hex
        marked = await self._append_marker(marker)
        channel = await self._conn.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=2000)
        records: list[dict[str, Any]] = []
        arrived, done = asyncio.Event(), asyncio.Event()
        try:
            queue = await channel.declare_queue(topo.PRESENCE_STREAM, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return records

        async def on_message(message: AbstractIncomingMessage) -> None:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                doc = json.loads(message.body)
                # Only a record under its own host's key counts: the operator user may write
                # the marker key (`presence.~marker`), and must not make hosts up with it.
                if (
                    isinstance(doc, dict)
                    and doc.get("kind") == "presence"
                    and message.routing_key == topo.presence_key(str(doc.get("host_id")))
                ):
                    records.append(doc)
                elif isinstance(doc, dict) and doc.get("marker") == marker:
                    done.set()
            arrived.set()
            await message.ack()

        start = dt.datetime.fromtimestamp(since, tz=dt.UTC)
        tag = await queue.consume(on_message, arguments={"x-stream-offset": start})
        try:
            if marked:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max_wait):
                        await done.wait()
            else:
                await self._until_silent(arrived, max_wait)
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
                await channel.close()
        return records

    async def _append_marker(self, marker: str) -> bool:
        channel = await self._conn.channel(publisher_confirms=True)
        try:
            await broker.publish(
                channel,
                topo.STATUS_EXCHANGE,
                topo.presence_key("~marker"),
                json.dumps({"kind": "presence-marker", "marker": marker}).encode(),
                mandatory=True,  # returned when the stream (binding) does not exist
            )
            return True
        except broker.PublishFailed:
            return False
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    @staticmethod
    async def _until_silent(arrived: asyncio.Event, max_wait: float) -> None:
        deadline = time.monotonic() + max_wait
        while time.monotonic() < deadline:
            arrived.clear()
            try:
                async with asyncio.timeout(PRESENCE_IDLE):
                    await arrived.wait()
            except TimeoutError:
                return

    async def follow_heartbeats(
        self, handler: Callable[[dict[str, Any]], None], pattern: str = "host.*"
    ) -> None:
        async def on_status(key: str, body: bytes) -> None:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                doc = json.loads(body)
                # Only under its own host's key: with one user per host, the broker lets no
                # host publish under another's (adapters.broker.permissions).
                if (
                    isinstance(doc, dict)
                    and doc.get("kind") == "heartbeat"
                    and key == topo.host_key(str(doc.get("host_id")))
                ):
                    doc["received"] = time.time()
                    handler(doc)

        with _translated(f"follow {topo.STATUS_EXCHANGE}"):
            await broker.consume_status(self.channel, on_status, pattern=pattern)

    async def follow_publisher(
        self,
        on_revision: Callable[[dict[str, Any]], None],
        on_rollout: Callable[[dict[str, Any]], None],
    ) -> list[Follower]:
        """A long-lived reader's view of the publisher (`web`, `notify`): its revision events
        and rollout documents. The followers whose stream does not exist yet are returned, for
        `hold(absent=)`: a reader started before the publisher ever ran (a fresh vhost, the
        exchanges there but not yet the streams) would otherwise never see a revision until
        it reconnects."""
        return await self.follow_all(
            functools.partial(self.follow_revisions, on_revision),
            functools.partial(self.follow_rollouts, on_rollout),
        )

    @staticmethod
    async def follow_all(*followers: Follower) -> list[Follower]:
        """Start each follower; the ones whose stream is not there are returned."""
        return [f for f in followers if not await f()]

    async def follow_revisions(
        self, handler: Callable[[dict[str, Any]], None], *, max_wait: float = 3.0
    ) -> bool:
        """Every record the `erel.revisions` stream keeps, then each new one, to `handler`
        until the client closes. Returns once the backlog is in (PRESENCE_IDLE of silence, at
        most `max_wait`); False when the stream does not exist (a publisher older than this
        CLI): `wait` then knows revisions only from what the hosts report.

        No marker is appended (unlike presence): the stream is the publisher's history, and
        reading it needs no write right. A record arriving late is simply handled later."""
        return await self._follow_stream(
            topo.REVISIONS_STREAM, "first", REVISION_KINDS, handler, max_wait, prefetch=1000
        )

    async def follow_rollouts(
        self, handler: Callable[[dict[str, Any]], None], *, max_wait: float = 2.0
    ) -> bool:
        """The newest rollout documents of the `erel.rollout` stream (from its last chunk), then
        each new one, to `handler` until the client closes. Returns once the tail is in; False
        when the stream does not exist (a publisher older than rollouts). Not verified: the
        CLI holds no publisher key, and only the publisher may write the stream."""
        return await self._follow_stream(
            topo.ROLLOUT_STREAM, "last", ("rollout",), handler, max_wait, prefetch=100
        )

    async def _follow_stream(
        self,
        name: str,
        offset: str,
        kinds: Sequence[str],
        handler: Callable[[dict[str, Any]], None],
        max_wait: float,
        *,
        prefetch: int,
    ) -> bool:
        """Records of stream `name` from `offset` whose `kind` is one of `kinds`, to `handler`
        until the client closes; returns once the backlog is in (or False: no such stream)."""
        with _translated(f"read {name}"):
            channel = await self._conn.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
            arrived = asyncio.Event()

            async def on_message(message: AbstractIncomingMessage) -> None:
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    doc = json.loads(message.body)
                    if isinstance(doc, dict) and doc.get("kind") in kinds:
                        handler(doc)
                arrived.set()
                await message.ack()

            await queue.consume(on_message, arguments={"x-stream-offset": offset})
            await self._until_silent(arrived, max_wait)
        return True
