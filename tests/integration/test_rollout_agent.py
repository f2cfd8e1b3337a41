"""The agent's side of a rollout on a real broker, with a real publisher and three in-process
agents running the real example release (hello 0.1.0 -> 0.2.0).

`test_a_grant_lets_exactly_the_granted_host_upgrade`: the publisher's own rollout controller
is kept quiet (its warm-up outlasts the test), and the test publishes signed rollout documents
itself, with the publisher's key: a first install needs no grant; an upgrade waits on every
host until the document grants one host, which then upgrades alone, and the rollout events on
`erel.rollout.events` show waiting -> changing -> converged for that host only.

`test_the_controller_upgrades_one_host_at_a_time`: the same cluster with the publisher's
controller deciding (max_unavailable 1): every host ends on 0.2.0, and the events never show
two hosts changing at once; the agents left the rollout stream after its tail, so their grants
came as the publisher's copies of their own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aio_pika
import pytest

from erel_sync.adapters import store
from erel_sync.adapters.broker import topology as topo
from erel_sync.agent.daemon import Agent
from erel_sync.core.rollout import (
    Grant,
    GroupRollout,
    HostState,
    Phase,
    RolloutDoc,
    grant_id,
    sign_rollout,
)
from erel_sync.core.snapshot import generate_key, load_private_key
from erel_sync.dev.examples import ExampleManifest
from erel_sync.publisher.daemon import Publisher, PublisherSettings
from tests.configrepo import GitRepo
from tests.integration.conftest import kill_release_processes
from tests.integration.test_broker_faults import new_agent, running
from tests.streams import read_stream
from tests.waiting import eventually

pytestmark = pytest.mark.integration

QUIET = 3600.0  # a controller warm-up that outlasts the test: it never decides


def release_yaml(examples: ExampleManifest) -> str:
    lines = [
        "apiVersion: erel/v1",
        "kind: Release",
        "metadata: {name: hello}",
        "spec:",
        "  health: {timeout: 5s, probation: 300ms, start_timeout: 20s}",
        "  stop_timeout: 5s",
        "  versions:",
    ]
    for a in examples:
        if a.name == "hello" and a.version in ("0.1.0", "0.2.0"):
            lines += [
                f'    - version: "{a.version}"',
                f"      artifact: {{url: {a.url()}, sha256: {a.sha256}, size: {a.size}}}",
            ]
    return "\n".join(lines) + "\n"


def group_yaml(prefix: str, version: str) -> str:
    return (
        "apiVersion: erel/v1\nkind: Group\nmetadata: {name: web}\nspec:\n"
        f"  hosts: ['{prefix}-*']\n"
        f'  releases: [{{name: hello, version: "{version}"}}]\n'
        "  rollout: {max_unavailable: 1}\n"
    )


class Cluster:
    """A config repo, a publisher, three agents of group `web`, and their release dirs."""

    def __init__(self, tmp_path: Path, url: str, examples: ExampleManifest) -> None:
        self.tmp, self.url = tmp_path, url
        self.prefix = f"ro{uuid.uuid4().hex[:6]}"
        self.hosts = [f"{self.prefix}-{i}" for i in (1, 2, 3)]
        self.repo = GitRepo(tmp_path / "config")
        self.release = release_yaml(examples)
        self.repo.commit({"r.yaml": self.release, "g.yaml": group_yaml(self.prefix, "0.1.0")})
        self.pem, _ = generate_key()
        store.write_atomic(tmp_path / "k.pem", self.pem)

    def publisher(self, warmup: float) -> Publisher:
        return Publisher(
            PublisherSettings(
                repo=self.repo.root,
                key_file=self.tmp / "k.pem",
                key_id="k1",
                state_dir=self.tmp / "pub",
                amqp_urls=(self.url,),
                poll_interval=0.3,
                broker_heartbeat=2.0,
                rollout_warmup=warmup,
            )
        )

    def upgrade(self) -> None:
        self.repo.commit({"g.yaml": group_yaml(self.prefix, "0.2.0")}, "hello 0.2.0")

    def roots(self) -> list[Path]:
        dirs = [self.tmp / h / "releases" for h in self.hosts]
        return [p for d in dirs if d.exists() for p in d.iterdir() if p.is_dir()]


@asynccontextmanager
async def cluster_running(
    tmp_path: Path, url: str, examples: ExampleManifest, *, warmup: float
) -> AsyncIterator[tuple[Cluster, Publisher, list[Agent]]]:
    c = Cluster(tmp_path, url, examples)
    publisher = c.publisher(warmup)
    agents = [new_agent(tmp_path, url, publisher, h) for h in c.hosts]
    try:
        async with running(publisher, *agents):
            yield c, publisher, agents
    finally:
        await asyncio.to_thread(kill_release_processes, c.roots())


def version(agent: Agent) -> str | None:
    status = agent.reconciler.status
    if status is None:
        return None
    return next((r.version for r in status.releases if r.name == "hello" and r.running), None)


def state(agent: Agent, seq: int) -> HostState | None:
    report = agent.reconciler.rollout_report
    return report.state if report is not None and report.seq == seq else None


async def publish_rollout(url: str, raw: bytes) -> None:
    """Put a signed rollout document on `erel.rollout`, as the controller would."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topo.ROLLOUT_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=topo.ROLLOUT_ROUTING_KEY,
        )


def grant_doc(c: Cluster, seq: int, revision: str, host: str) -> RolloutDoc:
    group = GroupRollout(
        group="web", seq=seq, revision=revision, phase=Phase.PROGRESSING, max_unavailable=1,
        canaries=(), order=tuple(c.hosts),
        granted=MappingProxyType({host: Grant(host, seq, grant_id(seq, host, 0), 0.0)}),
        done=frozenset(), failed=MappingProxyType({}),
        waiting=tuple(h for h in c.hosts if h != host),
        stable=MappingProxyType({"hello": "0.1.0"}),
    )  # fmt: skip
    return RolloutDoc(1, "2026-11-24T00:00:00Z", MappingProxyType({"web": group}))


async def rollout_events(url: str) -> list[dict[str, Any]]:
    """Every rollout event on `erel.rollout.events` so far."""
    return await read_stream(
        url, topo.ROLLOUT_EVENTS_STREAM, topo.STATUS_EXCHANGE, topo.rollout_key("~marker")
    )


def states_by_host(events: list[dict[str, Any]], seq: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in sorted(events, key=lambda e: float(e["at"])):
        if e["seq"] == seq:
            states = out.setdefault(e["host_id"], [])
            if not states or states[-1] != e["state"]:
                states.append(e["state"])
    return out


async def test_a_grant_lets_exactly_the_granted_host_upgrade(
    vhost: str, tmp_path: Path, examples: ExampleManifest
) -> None:
    async with cluster_running(tmp_path, vhost, examples, warmup=QUIET) as (c, pub, agents):
        # A first install needs no grant: no rollout document exists yet.
        await eventually(
            lambda: all(version(a) == "0.1.0" and state(a, 1) is HostState.CONVERGED
                        for a in agents),
            60, what="every host installed 0.1.0 without a grant",
        )  # fmt: skip
        c.upgrade()
        await eventually(lambda: pub.seq == 2, what="the publisher took the upgrade")
        await eventually(
            lambda: all(state(a, 2) is HostState.WAITING for a in agents),
            30, what="every host waits for a grant",
        )  # fmt: skip
        # No document grants anything: a tick of each changes nothing.
        await asyncio.gather(*(a.reconciler.tick("test") for a in agents))
        assert [version(a) for a in agents] == ["0.1.0"] * 3
        assert all(a.heartbeat()["rollout"]["state"] == "waiting" for a in agents)
        assert all(r["state"] == "Waiting" for a in agents for r in a.heartbeat()["releases"])

        granted, others = agents[1], [agents[0], agents[2]]
        key = load_private_key(c.pem)
        raw = sign_rollout(grant_doc(c, 2, pub.revision or "", c.hosts[1]), key, "k1")
        await publish_rollout(vhost, raw)
        await eventually(
            lambda: version(granted) == "0.2.0" and state(granted, 2) is HostState.CONVERGED,
            60, what="the granted host upgraded",
        )  # fmt: skip
        # The others hold the same document, and a tick of theirs still changes nothing.
        await eventually(
            lambda: all((d := a.rollout.current()) is not None and d.version == 1 for a in others),
            30, what="every host holds the document",
        )  # fmt: skip
        await asyncio.gather(*(a.reconciler.tick("test") for a in others))
        assert [version(a) for a in others] == ["0.1.0", "0.1.0"]
        assert all(state(a, 2) is HostState.WAITING for a in others)
        report = granted.heartbeat()["rollout"]
        assert (report["state"], report["grant"]) == ("converged", f"2:{c.hosts[1]}:0")

    events = await rollout_events(vhost)
    by_host = states_by_host(events, 2)
    assert by_host[c.hosts[1]] == ["waiting", "changing", "converged"]
    assert by_host[c.hosts[0]] == by_host[c.hosts[2]] == ["waiting"]
    changing = next(e for e in events if e["state"] == "changing")
    assert (changing["group"], changing["grant"]) == ("web", f"2:{c.hosts[1]}:0")


async def test_the_controller_upgrades_one_host_at_a_time(
    vhost: str, tmp_path: Path, examples: ExampleManifest
) -> None:
    async with cluster_running(tmp_path, vhost, examples, warmup=1.5) as (c, _pub, agents):
        await eventually(
            lambda: all(version(a) == "0.1.0" for a in agents), 60, what="0.1.0 everywhere"
        )
        c.upgrade()
        await eventually(
            lambda: all(version(a) == "0.2.0" and state(a, 2) is HostState.CONVERGED
                        for a in agents),
            120, what="every host upgraded, one after the other",
        )  # fmt: skip
        # The controller's documents say it sends each host its own copies: every agent left
        # the stream after its tail, so every grant after that reached it as a copy.
        assert all(a.counters["rollout_stream_left"] >= 1 for a in agents)
        held = [a.rollout.held() for a in agents]
        assert all(h["version"] > 0 and h["view"] is not None for h in held), held

    events = [e for e in await rollout_events(vhost) if e["seq"] == 2]
    busy: set[str] = set()
    most = 0
    for e in sorted(events, key=lambda e: float(e["at"])):
        if e["state"] == "changing":
            busy.add(e["host_id"])
        else:
            busy.discard(e["host_id"])
        most = max(most, len(busy))
    assert most == 1, events
    by_host = states_by_host(events, 2)
    assert sorted(by_host) == c.hosts
    assert all(states[-1] == "converged" for states in by_host.values()), by_host
