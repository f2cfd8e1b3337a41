"""A new host's join does not trust the tail of the config stream (bad input on the stream):
junk, or an older valid snapshot replayed at the tail by someone with write on `erel.config`,
must not leave the host with nothing or with an old state. Real publisher, real agents, a real
broker; the bad tail is written by the test as the broker's admin.

The publisher's republish timer is set far out, so only the join itself can bring the newest
snapshot within the deadlines below.

And a config stream that stops giving what the cluster has (a consumer the broker stopped
feeding, a tail lost in a failover): after `stream_silence` the agent asks the cluster, takes
the newer snapshot and consumes the stream afresh."""

from __future__ import annotations

import json
from pathlib import Path

import aio_pika
import aiormq

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
from tests.streams import read_stream
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


async def in_stream(url: str, seq: int) -> bool:
    """Whether snapshot `seq` is in the config stream (published, not only taken from git)."""
    try:
        records = await read_stream(
            url, topo.CONFIG_STREAM, topo.CONFIG_EXCHANGE, topo.CONFIG_ROUTING_KEY, within=5
        )
    except (
        aiormq.exceptions.ChannelNotFoundEntity,  # not declared yet
        aiormq.exceptions.ChannelPreconditionFailed,  # declared, its member not started yet
        TimeoutError,  # a stream just started: the reader's marker may not come back
    ):
        return False
    return any(r.get("seq") == seq for r in records)


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


async def test_a_stream_silent_while_the_cluster_has_newer_is_consumed_afresh(
    vhost: str, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, (), republish_interval=NO_REPUBLISH) as (
        publisher,
        _,
    ):
        # Taken from git at once; published once the broker session is up.
        await eventually(lambda: in_stream(vhost, 1), what="the first snapshot")
        first = publisher.envelope
        second_commit(repo)
        await eventually(lambda: in_stream(vhost, 2), what="the second snapshot")
        second = publisher.envelope
    assert first is not None and second is not None
    # The stream's tail says 1; only the publisher's answer (the test's, from here on) says 2.
    await append_to_stream(vhost, first)
    agent = new_agent(tmp_path, vhost, publisher, "h-1", stream_silence=1.0)
    async with running(agent):
        await eventually(on_seq([agent], 1), JOIN_DEADLINE, what="the agent on the tail's seq")
        # Its join asked the publisher (nobody answered) before it asked its peers.
        await eventually(lambda: agent.counters["joins_via_peers"] == 1, what="joined")
        connects = agent.counters["connects"]
        async with await aio_pika.connect(vhost) as connection:
            await broker.serve_state_requests(
                await connection.channel(),
                lambda have: second,
                keys=(topo.PUBLISHER_STATE_KEY,),
            )
            await eventually(on_seq([agent], 2), JOIN_DEADLINE, what="the cluster's newer seq")
            assert agent.counters["stream_stalled"] == 1
            await eventually(
                lambda: agent.counters["connects"] > connects,
                what="the stream consumed afresh",
            )
            # Silent again, but nothing newer anywhere: checked, and the session kept.
            checks = agent.counters["stream_silence_checks"]
            await eventually(
                lambda: agent.counters["stream_silence_checks"] > checks,
                JOIN_DEADLINE,
                what="one more check of the quiet stream",
            )
            assert agent.counters["stream_stalled"] == 1
