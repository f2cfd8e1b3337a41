"""Membership feeds cluster formation, on one host: a real publisher, one in-process agent
running the example release as a clustered release (`hello@127.0.0.1`, its cookie a secret),
and a second member of the group played by the test (heartbeats saying where it is reached,
`127.0.0.9`, where nothing listens). The publisher lists the group's live members in the
document it sends each host; the agent tells its node to connect to the other member; the node
cannot reach it, and `status` says so (`peers`, `Partitioned`). When the second member goes
away, the node is told so and the condition clears. (Nodes that do reach each other need hosts
of their own: network namespaces, docs/clustering.md.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets as pysecrets
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from erel_sync.adapters import age
from erel_sync.adapters.broker import messages as amqp
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.clock import utc_now
from erel_sync.agent.daemon import Agent
from erel_sync.core.conditions import release_error
from erel_sync.dev.examples import ExampleManifest
from erel_sync.model import secrets
from erel_sync.model.settings import AgentSettings, TrustedKey
from tests.integration.conftest import kill_release_processes
from tests.integration.test_broker_faults import running
from tests.integration.test_rollout_agent import Cluster
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def hello(agent: Agent) -> dict[str, Any]:
    status = agent.reconciler.status
    rows = [r.to_json() for r in status.releases if r.name == "hello"] if status else []
    return rows[0] if rows else {}


async def test_members_become_expected_peers_and_an_unreachable_one_shows_partitioned(
    vhost: str, tmp_path: Path, examples: ExampleManifest
) -> None:
    c = Cluster(tmp_path, vhost, examples)
    me, other = c.hosts[0], c.hosts[1]
    key = age.identity(tmp_path / me / "state")
    to = [age.recipient_of(key)]
    cookie = secrets.secret_node(age.encrypt(secrets.plain_json(pysecrets.token_hex(20)), to), to)
    c.repo.commit(
        {"r.yaml": c.release + f"  distribution: {{mode: clustered, cookie: {json.dumps(cookie)}}}\n"},
        "hello, clustered",
    )  # fmt: skip
    publisher = c.publisher(1.0)
    agent = Agent(
        AgentSettings(
            host_id=me, broker_urls=(vhost,), broker_heartbeat=2.0,
            trusted_keys=tuple(TrustedKey(k, v) for k, v in publisher.trusted.items()),
            state_dir=str(tmp_path / me / "state"), releases_dir=str(tmp_path / me / "releases"),
            cache_dir=str(tmp_path / me / "cache"), reconcile_interval=60.0,
            heartbeat_interval=1.0, cluster_host="127.0.0.1",
        )
    )  # fmt: skip
    stop_beats = asyncio.Event()

    async def beats(channel: aio_pika.abc.AbstractChannel) -> None:
        while not stop_beats.is_set():
            doc = {
                "format": 1, "kind": "heartbeat", "host_id": other, "group": "web",
                "cluster_host": "127.0.0.9", "heartbeat_interval": 0.5, "sent": utc_now(),
            }  # fmt: skip
            await amqp.publish(
                channel, topo.STATUS_EXCHANGE, topo.host_key(other), json.dumps(doc).encode(),
                mandatory=False,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):  # the period of this fake member's heartbeats
                await asyncio.wait_for(stop_beats.wait(), 0.5)

    try:
        async with running(publisher, agent), await aio_pika.connect(vhost) as connection:
            await eventually(lambda: hello(agent).get("state") == "Ready", 90, what="hello runs")
            assert agent.driver.node("hello").name == "hello@127.0.0.1"  # type: ignore[attr-defined]
            beating = asyncio.create_task(beats(await connection.channel()))
            await eventually(
                lambda: (hello(agent).get("peers") or {}).get("missing") == ["hello@127.0.0.9"],
                30, what="the other member expected and missing",
            )  # fmt: skip
            row = hello(agent)
            assert row["peers"]["expected"] == ["hello@127.0.0.9"]
            assert row["peers"]["connected"] == []
            assert release_error(row).startswith("Partitioned: connected to 0 of 1 peers")
            stop_beats.set()
            await beating
            await amqp.publish(
                await connection.channel(), topo.STATUS_EXCHANGE, topo.presence_key(other),
                json.dumps({"kind": "presence", "host_id": other, "state": "left"}).encode(),
                mandatory=False,
            )  # fmt: skip
            await eventually(
                lambda: (hello(agent).get("peers") or {}).get("expected") == [],
                30, what="the member gone, no peer expected",
            )  # fmt: skip
            assert release_error(hello(agent)) == ""
    finally:
        await asyncio.to_thread(kill_release_processes, c.roots())
