"""Worker process for bench/gitops.py: runs N agents (or N raw aio-pika consumers, or one
observer of the config stream) in one process and prints one line per event to stdout:
`<kind> <host> <seq> <unix time>`."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aio_pika
from stubdriver import StubDriver

from erel_sync.adapters import eventloop
from erel_sync.adapters.broker import topology as topo
from erel_sync.agent.daemon import Agent
from erel_sync.core.snapshot import peek_seq
from erel_sync.model.settings import AgentSettings, TrustedKey


class Reporter:
    """Event lines, flushed once the loop's current batch of callbacks has run: 25 agents in a
    process cost one pipe write per commit rather than 25. The time is taken before, so when
    the line is flushed does not change the figure."""

    def __init__(self) -> None:
        self.pending = False

    def __call__(self, line: str) -> None:
        sys.stdout.write(line)
        if not self.pending:
            self.pending = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.pending = False
        sys.stdout.flush()


report = Reporter()


class TimedAgent(Agent):
    async def on_snapshot(self, raw: bytes) -> None:
        before = self.snapshot.seq if self.snapshot else 0
        await super().on_snapshot(raw)
        if self.snapshot and self.snapshot.seq > before:
            report(f"disk {self.s.host_id} {self.snapshot.seq} {time.time():.6f}\n")


def settings_for(spec: dict[str, object], host: str) -> AgentSettings:
    """An agent of the benchmark: its own directories under `work`, quiet timers."""
    d = Path(str(spec["work"])) / host
    return AgentSettings(
        host_id=host,
        # Every node of a cluster (bench/brokers.py), else the one URL.
        broker_urls=tuple(map(str, spec.get("urls") or [spec["url"]])),  # type: ignore[call-overload]
        trusted_keys=(TrustedKey(str(spec["key_id"]), str(spec["public_key"])),),
        state_dir=str(d / "state"),
        releases_dir=str(d / "releases"),
        cache_dir=str(d / "cache"),
        reconcile_interval=300.0,
        heartbeat_interval=30.0,
    )


async def agents(spec: dict[str, object]) -> None:
    stop = asyncio.Event()
    hosts = list(spec["hosts"])  # type: ignore[call-overload]
    tasks = []
    for host in hosts:
        tasks.append(asyncio.create_task(TimedAgent(settings_for(spec, host)).run(stop)))
    print("ready - 0 0", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


async def rollout(spec: dict[str, object]) -> None:
    """Agents whose releases are stood in for by `StubDriver` (bench/rollout.py): every upgrade
    takes `step_time`; prints `start|done|config <host> 0 <time>` as steps begin and end."""
    stop = asyncio.Event()
    tasks = []
    for host in list(spec["hosts"]):  # type: ignore[call-overload]

        def on_step(what: str, _release: str, host: str = host) -> None:
            report(f"{what} {host} 0 {time.time():.6f}\n")

        driver = StubDriver({"hello": "0.1.0"}, float(str(spec["step_time"])), on_step)
        agent = TimedAgent(settings_for(spec, host), driver=driver)
        tasks.append(asyncio.create_task(agent.run(stop)))
    print("ready - 0 0", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


async def observe(spec: dict[str, object]) -> None:
    """One plain consumer of the config stream: when each snapshot was published."""
    conn = await aio_pika.connect(str(spec["url"]))
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=16)
    q = await ch.declare_queue(topo.CONFIG_STREAM, durable=True, passive=True)

    async def on(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        report(f"pub stream {peek_seq(msg.body) or 0} {time.time():.6f}\n")
        await msg.ack()

    await q.consume(on, arguments={"x-stream-offset": "next"})
    print("ready - 0 0", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await conn.close()


async def floor(spec: dict[str, object]) -> None:
    conns = []
    for host in list(spec["hosts"]):  # type: ignore[call-overload]
        conn = await aio_pika.connect(str(spec["url"]))
        conns.append(conn)
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=16)
        ex = await ch.declare_exchange("bench.floor", aio_pika.ExchangeType.FANOUT)
        q = await ch.declare_queue("", exclusive=True)
        await q.bind(ex)

        async def on(msg: aio_pika.abc.AbstractIncomingMessage, host: str = host) -> None:
            seq = peek_seq(msg.body) or 0
            report(f"recv {host} {seq} {time.time():.6f}\n")
            await msg.ack()

        await q.consume(on)
    print("ready - 0 0", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for conn in conns:
        await conn.close()


if __name__ == "__main__":
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    # The agents' event loop is the one `erel-sync agent` runs on; the floor consumers use the
    # same, so the comparison stays like for like.
    modes = {"agents": agents, "floor": floor, "observe": observe, "rollout": rollout}
    eventloop.run(modes[mode](spec))
