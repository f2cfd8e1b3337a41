"""Long-lived tasks survive faults (an exception escapes a long-lived task; a
connection silently dropped): real publisher and agent, a real broker frozen with SIGSTOP, a
real git object missing under the publisher's ref watcher.

Before supervision, the agent's heartbeat loop ended for good when the frozen broker's
connection was declared dead (aiormq cancels the pending calls of a dead connection, and that
CancelledError escaped `broker.publish`): the agent reconnected and applied commits but never
sent another heartbeat or presence record. And the publisher's watcher ended at the first error
it did not expect, so no later commit was ever published."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika

from erel_sync.adapters.broker import messages as broker
from erel_sync.dev.rabbitnode import RabbitNode
from tests.configrepo import GitRepo, group_yaml
from tests.integration.test_broker_faults import (
    FILES,
    daemons,
    new_agent,
    on_seq,
    running,
)
from tests.waiting import eventually

AMQP_HEARTBEAT = 1.0  # a silent broker is declared dead after (1 + 1) * 3 = 6 s
DEADLINE = 30.0


class StatusTap:
    """Every message on `erel.status` (heartbeats `host.*`, presence records `presence.*`)
    from the moment it is bound, through a connection of the test's own."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, object], float]] = []

    async def on_message(self, key: str, body: bytes) -> None:
        self.messages.append((key, json.loads(body), time.monotonic()))

    def count(self, key: str, since: float, **fields: object) -> int:
        return sum(
            1
            for k, doc, at in self.messages
            if k == key and at >= since and all(doc.get(f) == v for f, v in fields.items())
        )


@asynccontextmanager
async def tap_status(url: str) -> AsyncIterator[StatusTap]:
    tap = StatusTap()
    async with await aio_pika.connect(url) as connection:
        await broker.consume_status(await connection.channel(), tap.on_message)
        yield tap


@asynccontextmanager
async def frozen(node: RabbitNode) -> AsyncIterator[None]:
    """The broker's VM stopped (SIGSTOP) for the block: sockets stay open, nothing answers."""
    pid = node.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_heartbeats_presence_and_publishing_go_on_after_the_broker_was_frozen(
    fresh_rabbit: RabbitNode, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    url = fresh_rabbit.url
    async with daemons(tmp_path, url, repo, ("h-1",), broker_heartbeat=AMQP_HEARTBEAT) as (
        publisher,
        agents,
    ):
        (agent,) = agents
        await eventually(on_seq(agents, 1), what="first snapshot")
        await eventually(lambda: agent.connected and publisher.connected, what="connected")
        async with frozen(fresh_rabbit):
            # Heartbeats go on being attempted meanwhile: one is stuck when the end comes.
            await eventually(
                lambda: not agent.connected, what="the agent declared the connection dead"
            )
            await eventually(lambda: not publisher.connected, what="so did the publisher")
        resumed = time.monotonic()
        await eventually(lambda: agent.connected, DEADLINE, what="the agent is back")
        async with tap_status(url) as tap:
            await eventually(
                lambda: tap.count("host.h-1", resumed, broker="connected") >= 2,
                DEADLINE,
                what="heartbeats flow again",
            )
            # The publisher publishes the next commit; the heartbeat loop sends the presence
            # record that says the host changed group.
            repo.commit(
                {"g.yaml": group_yaml(hosts="['h-1']", releases=(), extra="  allow_empty: true\n")},
                "h-1 joins web",
            )
            await eventually(on_seq(agents, 2), DEADLINE, what="the commit reached the agent")
            await eventually(
                lambda: tap.count("presence.h-1", resumed, group="web", state="alive") >= 1,
                DEADLINE,
                what="presence record with the new group",
            )
        # Nothing had to be restarted: the dead connection's CancelledError no longer escapes.
        assert not [k for k in agent.counters if k.startswith("task_restarts.")], agent.counters
        assert agent.counters["broker_errors"] >= 1


def object_path(repo: GitRepo, sha: str) -> Path:
    return repo.root / ".git" / "objects" / sha[:2] / sha[2:]


async def test_publisher_watcher_restarted_after_an_unexpected_error(
    vhost: str, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, ("h-1",)) as (publisher, agents):
        await eventually(on_seq(agents, 1), what="first snapshot")
        # A commit whose file object is missing (a half-synced repository): reading it raises
        # an error of git's that the watcher does not handle.
        (repo.root / "g.yaml").write_text(group_yaml(hosts="['nobody-*', 'other']"))
        repo.git("add", "-A")
        tree = repo.git("write-tree")
        commit = repo.git("commit-tree", tree, "-p", "HEAD", "-m", "blob missing")
        blob = repo.git("rev-parse", f"{tree}:g.yaml")
        aside = tmp_path / "blob"
        shutil.move(object_path(repo, blob), aside)
        repo.git("update-ref", "refs/heads/main", commit)
        await eventually(
            lambda: publisher.counters.extra.get("task_restarts.watch", 0) >= 1,
            what="the watcher ended and was restarted",
        )
        assert publisher.seq == 1
        shutil.move(aside, object_path(repo, blob))  # the object arrives after all
        await eventually(on_seq(agents, 2), DEADLINE, what="the commit is published after all")
        assert publisher.revision == commit


async def test_a_clean_stop_says_the_agent_left(vhost: str, tmp_path: Path) -> None:
    """SIGTERM's path: the supervised broker session gets a moment to publish presence `left`
    (so `status` does not wait for this host), instead of being cancelled with the rest."""
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, ()) as (publisher, _):
        await eventually(lambda: publisher.connected, what="the publisher is up")
        async with tap_status(vhost) as tap:
            agent = new_agent(tmp_path, vhost, publisher, "h-1")
            async with running(agent):
                await eventually(lambda: agent.connected, what="connected")
            await eventually(
                lambda: tap.count("presence.h-1", 0.0, state="left") == 1,
                DEADLINE,
                what="presence `left`",
            )
    assert not [k for k in agent.counters if k.startswith("task_restarts.")], agent.counters
