"""The publisher's rollout controller (`publisher.rollout`) on a real broker: a real publisher
and git repository, four hosts of one group played by the test, which publishes their
heartbeats and rollout events on `erel.status` as agents do, takes its turn only when the
newest signed rollout document grants it (`core.rollout.may_disturb`), and reports converged
or failed when the test says so. Every document on `erel.rollout` is read and verified: none
may grant more than `max_unavailable` places at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from erel_sync.adapters import store
from erel_sync.adapters.broker import messages as amqp
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.clock import utc_now
from erel_sync.adapters.store import SlotFile
from erel_sync.core.rollout import (
    HostReport,
    HostState,
    Phase,
    RolloutDoc,
    may_disturb,
    verify_rollout,
)
from erel_sync.core.snapshot import generate_key
from erel_sync.model.settings import TrustedKey
from erel_sync.publisher.daemon import Publisher, PublisherSettings
from tests.cli import erel_sync
from tests.configrepo import GitRepo, group_yaml, release_yaml
from tests.waiting import eventually

HOSTS = ("r-1", "r-2", "r-3", "r-4")
GROUP = "web"
LIMIT = 2
BEAT = 0.25  # seconds between two heartbeats of a fake host
WARMUP = 1.0


def files(rollout: str) -> dict[str, str]:
    hosts = "[" + ", ".join(HOSTS) + "]"
    return {
        "r.yaml": release_yaml(versions=("0.1.0", "0.2.0")),
        "g.yaml": group_yaml(GROUP, hosts, (("hello", "0.2.0"),), extra=rollout),
    }


class Cluster:
    """The publisher's surroundings: fake hosts, every rollout document seen, the keys."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.repo = GitRepo(tmp / "config")
        pem, _ = generate_key()
        store.write_atomic(tmp / "pub.pem", pem)
        op_pem, self.operator_public = generate_key()
        self.operator_key = tmp / "ops.pem"
        store.write_atomic(self.operator_key, op_pem)
        self.reports: dict[str, HostReport] = {}
        self.docs: list[RolloutDoc] = []
        self.publisher: Publisher | None = None
        self._connection: Any = None
        self._status: Any = None
        self._stop = asyncio.Event()

    def new_publisher(self) -> Publisher:
        self.publisher = Publisher(
            PublisherSettings(
                repo=self.repo.root,
                key_file=self.tmp / "pub.pem",
                key_id="k1",
                state_dir=self.tmp / "pub",
                amqp_urls=(self.url,),
                poll_interval=0.5,
                operator_keys=(TrustedKey("ops", self.operator_public),),
                rollout_warmup=WARMUP,
            )
        )
        return self.publisher

    @property
    def seq(self) -> int:
        assert self.publisher is not None
        return self.publisher.seq

    @property
    def newest(self) -> RolloutDoc | None:
        return max(self.docs, key=lambda d: d.version) if self.docs else None

    def rollout(self) -> Any:
        doc = self.newest
        return doc.groups.get(GROUP) if doc is not None else None

    # --- the hosts' side
    async def report(self, host: str, state: HostState, reason: str = "") -> None:
        """What an agent sends on a change: a rollout event, and its next heartbeats say it."""
        doc = self.newest
        grant = doc.groups[GROUP].granted.get(host) if doc and GROUP in doc.groups else None
        report = HostReport(
            host,
            GROUP,
            self.seq,
            state,
            reason,
            time.time(),
            grant.id if grant is not None else None,
        )
        self.reports[host] = report
        await amqp.publish(
            self._status, topo.STATUS_EXCHANGE, topo.rollout_key(host),
            json.dumps(report.to_json(time=utc_now())).encode(), mandatory=False,
        )  # fmt: skip

    async def _heartbeats(self) -> None:
        while True:
            for host, r in self.reports.items():
                beat = {
                    "format": 1,
                    "kind": "heartbeat",
                    "host_id": host,
                    "group": GROUP,
                    "snapshot": {"seq": r.seq},
                    "converged": r.state is HostState.CONVERGED,
                    "rollout": {
                        "seq": r.seq,
                        "state": r.state.value,
                        "reason": r.reason,
                        "at": r.at,
                        "grant": r.grant,
                    },
                    "heartbeat_interval": BEAT * 2,
                    "sent": utc_now(),
                }
                with contextlib.suppress(amqp.BrokerError):
                    await amqp.publish(
                        self._status, topo.STATUS_EXCHANGE, topo.host_key(host),
                        json.dumps(beat).encode(), mandatory=False,
                    )  # fmt: skip
            with contextlib.suppress(TimeoutError):  # the heartbeat period of these fake agents
                async with asyncio.timeout(BEAT):
                    await self._stop.wait()
            if self._stop.is_set():
                return

    async def _on_doc(self, message: AbstractIncomingMessage) -> None:
        assert self.publisher is not None
        doc = verify_rollout(message.body, self.publisher.trusted)
        self.docs.append(doc)
        await message.ack()
        # Like an agent: a waiting host that now holds a place for its seq starts changing.
        for host, r in list(self.reports.items()):
            if r.state is HostState.WAITING and may_disturb(doc, GROUP, host, r.seq):
                await self.report(host, HostState.CHANGING)

    @asynccontextmanager
    async def hosts(self) -> AsyncIterator[None]:
        """Connect the fake hosts and the document reader (the publisher declared the stream)."""
        async with await aio_pika.connect(self.url) as connection:
            self._status = await connection.channel(publisher_confirms=True)
            reader = await connection.channel()
            await reader.set_qos(prefetch_count=100)
            stream = await reader.declare_queue(topo.ROLLOUT_STREAM, passive=True)
            await stream.consume(self._on_doc, arguments={"x-stream-offset": "first"})
            self._stop.clear()
            for host in HOSTS:
                if host not in self.reports:  # after a publisher restart: where they stood
                    await self.report(host, HostState.WAITING)
            beats = asyncio.create_task(self._heartbeats())
            try:
                yield
            finally:
                self._stop.set()
                await beats

    async def decided_again(self, times: int = 2) -> None:
        """Wait until the controller took `times` more decisions (its 1 s timer steps too),
        each with every host's newest report: a grant that must not come did not."""
        assert self.publisher is not None
        steps = self.publisher.counters.extra
        start = steps.get("rollout_steps", 0)
        await eventually(
            lambda: steps.get("rollout_steps", 0) >= start + times, 10, what="more decisions"
        )

    # --- what the documents say
    def in_flight(self) -> set[str]:
        r = self.rollout()
        return set(r.in_flight) if r is not None else set()

    def check_limit(self) -> None:
        for doc in self.docs:
            if GROUP in doc.groups:
                busy = doc.groups[GROUP].in_flight
                assert len(busy) <= LIMIT, f"version {doc.version} grants {sorted(busy)}"
        changing = [h for h, r in self.reports.items() if r.state is HostState.CHANGING]
        assert len(changing) <= LIMIT, changing

    async def cli(self, *args: str, key: Path | None = None) -> Any:
        """`erel-sync rollout ARGS` in a thread: the publisher runs on this event loop."""
        return await asyncio.to_thread(
            erel_sync,
            "rollout", *args, "--key", str(key or self.operator_key),
            *(() if key else ("--key-id", "ops")), "--amqp-url", self.url, "--timeout", "10",
            clean=True,
        )  # fmt: skip


@asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(publisher.run(stop, ready))
    try:
        async with asyncio.timeout(60):
            await ready.wait()
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_limit_holds_grants_advance_and_survive_a_publisher_restart(
    vhost: str, tmp_path: Path
) -> None:
    c = Cluster(tmp_path, vhost)
    c.repo.commit(files(f"  rollout:\n    max_unavailable: {LIMIT}\n"))
    async with running(c.new_publisher()), c.hosts():
        await eventually(lambda: c.in_flight() == {"r-1", "r-2"}, what="first two granted")
        await eventually(
            lambda: (
                {h for h, r in c.reports.items() if r.state is HostState.CHANGING} == {"r-1", "r-2"}
            ),
            what="both changing",
        )
        await c.decided_again()  # nobody else may go
        assert c.in_flight() == {"r-1", "r-2"}
        c.check_limit()
        await c.report("r-1", HostState.CONVERGED)
        await eventually(lambda: c.in_flight() == {"r-2", "r-3"}, what="r-3 takes r-1's place")
        assert c.rollout().done == frozenset({"r-1"})
        c.check_limit()
        before = c.rollout()
        version = c.newest.version if c.newest else 0

    # The publisher is down: hosts mid-change finish meanwhile; a restarted publisher loads
    # its state (rollout.slot-a|-b) and remembers every place it gave.
    saved = json.loads(SlotFile(tmp_path / "pub" / "rollout").read() or b"{}")
    assert verify_rollout(saved["signed"].encode(), c.publisher.trusted).version == version
    async with running(c.new_publisher()), c.hosts():
        await eventually(lambda: c.newest is not None and c.newest.version >= version)
        await c.decided_again()  # past the warm-up: it decides again
        after = c.rollout()
        assert dict(after.granted) == dict(before.granted)
        assert c.newest is not None and c.newest.version >= version
        c.check_limit()
        for host in ("r-2", "r-3"):
            await c.report(host, HostState.CONVERGED)
        await eventually(lambda: c.in_flight() == {"r-4"}, what="the last host's turn")
        await c.report("r-4", HostState.CONVERGED)
        await eventually(lambda: c.rollout().phase is Phase.COMPLETE, what="complete")
        assert dict(c.rollout().stable) == {"hello": "0.2.0"}
        c.check_limit()


async def test_canary_pause_promote_halt_and_retry_through_the_cli(
    vhost: str, tmp_path: Path
) -> None:
    c = Cluster(tmp_path, vhost)
    c.repo.commit(
        files(
            f"  rollout:\n    max_unavailable: {LIMIT}\n    canary: 1\n"
            "    pause_after_canary: true\n"
        )
    )
    async with running(c.new_publisher()), c.hosts():
        await eventually(lambda: c.in_flight() == {"r-1"}, what="only the canary")
        assert c.rollout().phase is Phase.CANARY
        await c.report("r-1", HostState.CONVERGED)
        await eventually(lambda: c.rollout().phase is Phase.PAUSED, what="paused after canary")
        await c.decided_again()
        assert c.in_flight() == set()

        # Refused: a key the publisher does not trust, a group it does not know.
        stranger, _ = generate_key()
        store.write_atomic(tmp_path / "stranger.pem", stranger)
        out = await c.cli("promote", GROUP, key=tmp_path / "stranger.pem")
        assert out.returncode == 1, out.stderr
        assert "UnknownKey" in out.stderr
        out = await c.cli("promote", "nosuchgroup")
        assert out.returncode == 1 and "UnknownGroup" in out.stderr, out.stderr
        assert c.rollout().phase is Phase.PAUSED

        out = await c.cli("promote", GROUP)
        assert out.returncode == 0, out.stderr
        assert "promote web: ok" in out.stdout
        await eventually(lambda: c.in_flight() == {"r-2", "r-3"}, what="promoted: two go")
        await c.report("r-2", HostState.FAILED, "RolledBack: health check failed")
        await eventually(lambda: c.rollout().phase is Phase.HALTED, what="halted")
        assert dict(c.rollout().failed) == {"r-2": "RolledBack: health check failed"}
        await c.report("r-3", HostState.CONVERGED)  # it was changing: it finishes
        await c.decided_again()
        assert "r-4" not in c.in_flight()  # a halted rollout grants nobody
        assert c.reports["r-4"].state is HostState.WAITING
        c.check_limit()

        out = await c.cli("retry", GROUP)
        assert out.returncode == 0, out.stderr
        await eventually(lambda: c.rollout().retry == 1 and not c.rollout().failed)
        # The agent forgets its failure of this seq once the retry is out, and waits again.
        await c.report("r-2", HostState.WAITING)
        await eventually(lambda: c.in_flight() == {"r-2", "r-4"}, what="both go again")
        for host in ("r-2", "r-4"):
            await c.report(host, HostState.CONVERGED)
        await eventually(lambda: c.rollout().phase is Phase.COMPLETE, what="complete")
        c.check_limit()

    # No publisher: nobody takes the command.
    out = await c.cli("retry", GROUP)
    assert out.returncode == 3, (out.stdout, out.stderr)


async def test_each_host_gets_its_own_copy_once_on_the_stream_and_again_when_stale(
    vhost: str, tmp_path: Path
) -> None:
    """Documents go to every reader through the stream, and to each host whose view they
    changed as a copy of its own (`grant.<host>` on erel.control), only once the stream holds
    them. A host that says it holds a stale view gets the current document again; one whose
    view is current, or an older agent that says nothing, gets nothing."""
    c = Cluster(tmp_path, vhost)
    c.repo.commit(files(f"  rollout:\n    max_unavailable: {LIMIT}\n"))
    copies: dict[str, list[RolloutDoc]] = {h: [] for h in HOSTS}
    async with running(c.new_publisher()), c.hosts():
        assert c.publisher is not None
        trusted, counters = c.publisher.trusted, c.publisher.counters.extra
        async with await aio_pika.connect(vhost) as connection:
            channel = await connection.channel()
            control = await channel.get_exchange(topo.CONTROL_EXCHANGE)
            for host in HOSTS:
                queue = await channel.declare_queue("", exclusive=True)
                await queue.bind(control, topo.grant_key(host))

                async def on_copy(m: AbstractIncomingMessage, host: str = host) -> None:
                    copies[host].append(verify_rollout(m.body, trusted))

                await queue.consume(on_copy, no_ack=True)
            await eventually(lambda: c.in_flight() == {"r-1", "r-2"}, what="first two granted")
            await eventually(lambda: copies["r-1"] and copies["r-2"], what="their copies")
            for host in ("r-1", "r-2"):
                doc = copies[host][0]
                assert doc.direct and host in doc.groups[GROUP].granted
                # Sent once the stream held it: the stream's reader sees it too.
                await eventually(lambda v=doc.version: v in {d.version for d in c.docs})
            assert counters.get("rollout_copies") == 2  # r-3 and r-4: nothing changed for them
            assert copies["r-3"] == [] and copies["r-4"] == []

            async def beat(host: str, held: dict[str, Any]) -> None:
                body = {
                    "format": 1, "kind": "heartbeat", "host_id": host, "group": GROUP,
                    "heartbeat_interval": BEAT * 2, "sent": utc_now(), "rollout_held": held,
                }  # fmt: skip
                await amqp.publish(
                    c._status, topo.STATUS_EXCHANGE, topo.host_key(host),
                    json.dumps(body).encode(), mandatory=False,
                )  # fmt: skip

            version = c.newest.version if c.newest else 0
            await beat("r-3", {"version": 1, "view": [["1:r-3:0", 1], None, None]})
            await eventually(lambda: copies["r-3"], what="a stale host's copy")
            assert copies["r-3"][0].version >= version
            await beat("r-4", {"version": version, "view": [None, None, None, []]})
            await c.decided_again()
            assert copies["r-4"] == []
