"""A new host's join does not trust the tail of the config stream (bad input on the stream):
junk, or an older valid snapshot replayed at the tail by someone with write on `erel.config`,
must not leave the host with nothing or with an old state. Real publisher, real agents, a real
broker; the bad tail is written by the test as the broker's admin.

The publisher's republish timer is set far out, so only the join itself can bring the newest
snapshot within the deadlines below."""

from __future__ import annotations

import json
from pathlib import Path

import aio_pika

from erel_sync.adapters.broker import messages as broker
from erel_sync.adapters.broker import topology as topo
from erel_sync.core.snapshot import peek_seq
from tests.configrepo import GitRepo, group_yaml
from tests.integration.test_broker_faults import (
    FILES,
    daemons,
    new_agent,
    on_seq,
    running,
)
from tests.waiting import eventually

JOIN_DEADLINE = 15.0
NO_REPUBLISH = 3600.0


async def append_to_stream(url: str, body: bytes) -> None:
    """Publish `body` into `erel.config` (confirmed): what a replay or a bug could put there."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topo.CONFIG_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=topo.CONFIG_ROUTING_KEY,
        )


async def ask(url: str, have: int | None, key: str = topo.STATE_REQUEST_KEY) -> list[int | None]:
    """A state request as an agent sends it (`have` None: as an older agent, `{}`); the seqs
    of the answers."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        answers = await broker.request_state(channel, "probe", key=key, have=have, window=0.5)
    return sorted((peek_seq(a) for a in answers), key=lambda s: s or 0)


def second_commit(repo: GitRepo) -> None:
    repo.commit({"g.yaml": group_yaml(hosts="['nobody-*', 'other']")}, "second")


async def test_junk_at_the_tail_new_host_ends_on_the_newest(vhost: str, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, ("h-1",), republish_interval=NO_REPUBLISH) as (
        publisher,
        agents,
    ):
        await eventually(on_seq(agents, 1), what="first snapshot")
        second_commit(repo)
        await eventually(on_seq(agents, 2), what="second snapshot in the stream")
        await append_to_stream(vhost, b"not json at all")
        newcomer = new_agent(tmp_path, vhost, publisher, "h-new")
        async with running(newcomer):
            await eventually(
                on_seq([newcomer], 2), JOIN_DEADLINE, what="the new host ends on the newest"
            )
            await eventually(
                lambda: newcomer.counters["rejected.Malformed"] >= 1,
                what="the junk at the tail was refused and counted",
            )
            # The publisher answered: peers were not asked.
            assert newcomer.counters["joins_via_peers"] == 0
            # An older agent's request (`{}`) still gets the publisher's and every peer's answer.
            assert await ask(vhost, None) == [2, 2, 2]


async def test_older_snapshot_replayed_at_the_tail_new_host_ends_on_the_newest(
    vhost: str, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, ("h-1",), republish_interval=NO_REPUBLISH) as (
        publisher,
        agents,
    ):
        await eventually(on_seq(agents, 1), what="first snapshot")
        assert publisher.envelope is not None
        first = publisher.envelope  # validly signed, and older once the next commit is out
        second_commit(repo)
        await eventually(on_seq(agents, 2), what="second snapshot in the stream")
        await append_to_stream(vhost, first)
        newcomer = new_agent(tmp_path, vhost, publisher, "h-new")
        async with running(newcomer):
            await eventually(
                on_seq([newcomer], 2), JOIN_DEADLINE, what="the new host ends on the newest"
            )
            assert agents[0].snapshot is not None and agents[0].snapshot.seq == 2
        # It never went back: whatever it stored, the last is the newest, on disk too.
        raw = newcomer.snapshot_store.read()
        assert raw is not None and json.loads(raw)["seq"] == 2


async def test_publisher_down_peers_answer_only_with_something_newer(
    vhost: str, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, (), republish_interval=NO_REPUBLISH) as (
        publisher,
        _,
    ):
        peer = new_agent(tmp_path, vhost, publisher, "h-peer")
        async with running(peer):
            await eventually(on_seq([peer], 1), what="the peer holds the first snapshot")
            second_commit(repo)
            await eventually(on_seq([peer], 2), what="the peer holds the second")
            # Only publishers bind the publisher key: a peer never answers it.
            assert await ask(vhost, 0, topo.PUBLISHER_STATE_KEY) == [2]
    # The publisher is stopped now, the tail is junk; the peer restarts (from its disk).
    await append_to_stream(vhost, b"\x00junk")
    peer = new_agent(tmp_path, vhost, publisher, "h-peer")
    newcomer = new_agent(tmp_path, vhost, publisher, "h-new")
    async with running(peer, newcomer):
        await eventually(
            on_seq([newcomer], 2), JOIN_DEADLINE, what="the new host ends on the newest"
        )
        assert newcomer.counters["joins_via_peers"] >= 1
        assert newcomer.counters["rejected.Malformed"] >= 1
        # Peers answer only a requester that holds something older: a fleet joining at once
        # does not get a copy of what it holds from every other host.
        assert await ask(vhost, 2) == []
        assert await ask(vhost, 1) == [2, 2]
        assert await ask(vhost, None) == [2, 2]  # an older agent asks with `{}`
