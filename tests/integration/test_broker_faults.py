"""Broker faults (a killed, restarted or wiped node) with the real publisher and agent on a private RabbitMQ node:
daemons started while the broker is down, and a broker killed with a commit made during the
outage. Nothing is lost: every host ends on the newest revision once the broker is back."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from erel_sync.adapters import store
from erel_sync.agent.daemon import Agent
from erel_sync.agent.intake import STORE_RETRY_MAX
from erel_sync.core.snapshot import generate_key, peek_seq
from erel_sync.dev.rabbitnode import RabbitNode
from erel_sync.model.settings import AgentSettings, TrustedKey
from erel_sync.publisher.daemon import Publisher, PublisherSettings
from tests.configrepo import GitRepo, group_yaml, release_yaml
from tests.waiting import eventually

FILES = {"r.yaml": release_yaml(), "g.yaml": group_yaml(hosts="['nobody-*']")}


def new_agent(
    tmp_path: Path,
    url: str,
    publisher: Publisher,
    host: str,
    *,
    broker_heartbeat: float = 2.0,
    stream_silence: float = 180.0,
) -> Agent:
    """An agent trusting `publisher`'s key, with its directories under `tmp_path/host`."""
    return Agent(
        AgentSettings(
            host_id=host,
            broker_urls=(url,),
            broker_heartbeat=broker_heartbeat,
            stream_silence=stream_silence,
            trusted_keys=tuple(TrustedKey(k, v) for k, v in publisher.trusted.items()),
            state_dir=str(tmp_path / host / "state"),
            releases_dir=str(tmp_path / host / "releases"),
            cache_dir=str(tmp_path / host / "cache"),
            reconcile_interval=60.0,
            heartbeat_interval=1.0,
        )
    )


@asynccontextmanager
async def running(*daemons: Publisher | Agent) -> AsyncIterator[None]:
    """Run the daemons until the block ends; then stop them as SIGTERM would and check that
    they ended cleanly."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop)) for d in daemons]
    try:
        yield
    finally:
        stop.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        assert all(r is None for r in results), results


@asynccontextmanager
async def daemons(
    tmp_path: Path,
    url: str,
    repo: GitRepo,
    hosts: tuple[str, ...],
    *,
    broker_heartbeat: float = 2.0,
    republish_interval: float = 60.0,
) -> AsyncIterator[tuple[Publisher, list[Agent]]]:
    pem, _pub = generate_key()
    store.write_atomic(tmp_path / "k.pem", pem)
    publisher = Publisher(
        PublisherSettings(
            repo=repo.root,
            key_file=tmp_path / "k.pem",
            key_id="k1",
            state_dir=tmp_path / "pub",
            amqp_urls=(url,),
            poll_interval=0.5,
            republish_interval=republish_interval,
            broker_heartbeat=broker_heartbeat,
        )
    )
    agents = [
        new_agent(tmp_path, url, publisher, h, broker_heartbeat=broker_heartbeat) for h in hosts
    ]
    async with running(publisher, *agents):
        yield publisher, agents


def on_seq(agents: list[Agent], seq: int) -> Callable[[], bool]:
    return lambda: all(a.snapshot is not None and a.snapshot.seq == seq for a in agents)


async def test_daemons_started_while_the_broker_is_down(
    fresh_rabbit: RabbitNode, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    url = fresh_rabbit.url
    await asyncio.to_thread(fresh_rabbit.stop)
    async with daemons(tmp_path, url, repo, ("h-1", "h-2")) as (publisher, agents):
        # Both daemons are up and retrying; the publisher already took the commit from git.
        await eventually(lambda: publisher.seq == 1, what="the publisher read the head")
        await eventually(
            lambda: all(a.reconciler.ticks >= 1 for a in agents),
            what="agents reconcile from disk meanwhile",
        )
        assert all(not a.connected and a.snapshot is None for a in agents)
        assert all(a.heartbeat()["broker"] == "BrokerDisconnected" for a in agents)
        await asyncio.to_thread(fresh_rabbit.start)
        await eventually(on_seq(agents, 1), what="agents joined once the broker came")
        # The snapshot can arrive while the session is still being set up (the stream consumer
        # starts first): connected follows.
        await eventually(
            lambda: all(a.heartbeat()["broker"] == "connected" for a in agents),
            what="agents report connected",
        )
        on_disk = [store.SlotFile(Path(a.s.state_dir) / "snapshot").read() for a in agents]
        assert all(raw is not None and peek_seq(raw) == 1 for raw in on_disk)


async def test_broker_killed_with_a_commit_during_the_outage(
    fresh_rabbit: RabbitNode, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, fresh_rabbit.url, repo, ("h-1", "h-2", "h-3")) as (pub, agents):
        await eventually(on_seq(agents, 1), what="first snapshot everywhere")
        await asyncio.to_thread(fresh_rabbit.kill)
        await eventually(
            lambda: not any(a.connected for a in agents), 30, what="agents saw the loss"
        )
        repo.commit({"g.yaml": group_yaml(hosts="['nobody-*', 'other']")}, "during the outage")
        await eventually(lambda: pub.seq == 2, what="the publisher took the new commit")
        failures_before = pub.counters.publish_failures
        await asyncio.to_thread(fresh_rabbit.start)
        # RabbitMQ 3.10 leaves a single-node stream down after a crash; the agents then catch
        # up through state.request answers (publisher and peers) until the stream is back.
        await eventually(on_seq(agents, 2), what="every agent caught up to the newest")
        assert pub.counters.publish_failures >= failures_before
        # Never moved backwards, nothing applied twice with effect.
        assert all(a.counters["applied_snapshots"] == 2 for a in agents)


async def test_disk_full_keeps_the_old_snapshot_reports_it_and_retries(
    vhost: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, ("h-1", "h-2")) as (_pub, agents):
        await eventually(on_seq(agents, 1), what="first snapshot everywhere")
        full, fine = agents
        real_pwrite = os.pwrite

        def pwrite(fd: int, data: bytes, offset: int) -> int:
            if fd in full.snapshot_store._fds:  # only h-1's disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(store.os, "pwrite", pwrite)
        repo.commit({"g.yaml": group_yaml(hosts="['nobody-*', 'other']")}, "h-1's disk is full")
        await eventually(on_seq([fine], 2), what="h-2 applied the commit")
        await eventually(
            lambda: "No space left" in (full.heartbeat()["store_error"] or ""),
            what="h-1 reports that it cannot store it",
        )
        # The old snapshot stays in force, in memory and on disk; nothing is torn.
        assert full.snapshot is not None and full.snapshot.seq == 1
        held = store.SlotFile(Path(full.s.state_dir) / "snapshot").read()
        assert held is not None and peek_seq(held) == 1
        assert full.counters["store_failures"] >= 1
        repo.commit({"g.yaml": group_yaml(hosts="['nobody-*', 'x']")}, "still full")
        await eventually(on_seq([fine], 3), what="h-2 applied the second commit")
        await eventually(
            lambda: full._unstored is not None and full._unstored.seq == 3, what="h-1 tried it too"
        )
        monkeypatch.undo()  # space again: the agent's own retry stores it, no new commit needed
        # Its next try is at most one backoff away, however long the disk was full.
        await eventually(
            on_seq([full], 3), within=STORE_RETRY_MAX + 10, what="h-1 stored the newest on its own"
        )
        assert full.heartbeat()["store_error"] is None
        held = store.SlotFile(Path(full.s.state_dir) / "snapshot").read()
        assert held is not None and peek_seq(held) == 3
