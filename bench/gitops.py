"""Benchmark of the GitOps loop on a private RabbitMQ node, printing its figures.

- `git push` -> every agent's snapshot on disk, p50/p99 over COMMITS commits (after WARMUP
  commits that let the freshly started agents settle), for 10 and 100
  agents (agents run in-process, 25 per worker process, each with its own connection and store,
  as the agent core allows), next to the raw aio-pika fan-out floor measured in the same run
  with the same process layout (a 4 KiB-ish message to N consumers, publish -> last receipt).
- join: agent start -> snapshot on disk (the stream holds the newest snapshot).
- idle agent: RSS and CPU of one real `erel-sync agent` process over a quiet interval.
Targets (docs/performance.md): p99 <= 120 ms at 100 agents, join <= 200 ms, idle <= 50 MiB and
<= 0.5 % CPU. Run: `make bench` or `.venv/bin/python bench/gitops.py [--commits N]
[--sizes 100] [--no-join-idle]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika

from erel_sync.adapters import eventloop, store
from erel_sync.agent.daemon import Agent
from erel_sync.core.snapshot import generate_key
from erel_sync.dev.probes import free_port
from erel_sync.dev.rabbitnode import RabbitNode
from erel_sync.model.settings import AgentSettings, TrustedKey

PER_WORKER = int(os.environ.get("BENCH_PER_WORKER", "25"))
WARMUP = 2  # commits before the measured ones, not counted
HERE = Path(__file__).resolve().parent
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}  # fmt: skip
RELEASE = """apiVersion: erel/v1
kind: Release
metadata: {name: hello}
spec:
  versions:
    - version: "0.1.0"
      artifact: {url: "https://artifacts.example.com/hello-0.1.0.tar.gz", sha256: %s}
"""
GROUP = """apiVersion: erel/v1
kind: Group
metadata: {name: web}
spec:
  hosts: ["nobody-*"]
  releases: [{name: hello, version: "0.1.0"}]
  rollout: {max_unavailable: %d}
"""


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=GIT_ENV)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


class Workers:
    """Worker processes; their stdout lines are collected by reader threads.

    Events are indexed by (kind, seq) and waited for on a condition variable: the harness shares
    the 2 cores with what it measures, so it must not poll or rescan a growing event list."""

    def __init__(self, mode: str, hosts: list[str], base: dict[str, Any]) -> None:
        self.events: dict[tuple[str, int], list[float]] = {}
        self.cond = threading.Condition()
        self.procs = []
        for i in range(0, len(hosts), PER_WORKER):
            spec = {**base, "hosts": hosts[i : i + PER_WORKER]}
            profile = os.environ.get("BENCH_PROFILE")  # a directory: workers run under cProfile
            prof = ["-m", "cProfile", "-o", f"{profile}/{mode}-{i}.prof"] if profile else []
            p = subprocess.Popen(
                [sys.executable, *prof, str(HERE / "gitops_worker.py"), mode, json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            self.procs.append(p)
            threading.Thread(target=self._read, args=(p,), daemon=True).start()
        self.wait(lambda: len(self.times("ready", 0)) == len(self.procs), 60)

    def _read(self, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            kind, _host, seq, t = line.split()
            with self.cond:
                self.events.setdefault((kind, int(seq)), []).append(float(t))
                self.cond.notify_all()

    def wait(self, cond: Any, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(cond, timeout):
                raise TimeoutError("workers did not report in time")

    def times(self, kind: str, seq: int) -> list[float]:
        return list(self.events.get((kind, seq), ()))

    def close(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            p.wait(30)


def push_latencies(
    work: Path,
    url: str,
    key_id: str,
    pub: str,
    n: int,
    commits: int,
    others: dict[str, int],
    urls: list[str] | None = None,
) -> tuple[list[float], list[float], dict[str, float], float]:
    """Per commit: push -> all on disk, and push -> on the stream (seen by an observer on
    `url`). `urls`: every node of a cluster, for the agents (each its own order of them)."""
    hosts = [f"bench-{n}-{i:03d}" for i in range(n)]
    workers = Workers("agents", hosts, {"url": url, "urls": urls, "key_id": key_id,
                                        "work": str(work / f"agents-{n}"),
                                        "public_key": pub})  # fmt: skip
    observer = Workers("observe", ["observer"], {"url": url})
    clone = work / "clone"
    state = store.read_json(work / "publisher" / "publisher.json") or {}
    seq = int(state.get("seq", 0))
    workers.wait(lambda: len(workers.times("disk", seq)) == n, 60)  # joined at the current seq
    out: list[float] = []
    published: list[float] = []
    pushes: list[float] = []

    def cpu_now() -> dict[str, float]:
        now = {k: cpu_seconds(p) for k, p in others.items()}
        now["workers"] = sum(cpu_seconds(p.pid) for p in workers.procs)
        now["harness"] = time.process_time()
        return now

    before = cpu_now()
    try:
        for i in range(-WARMUP, commits):
            (clone / "groups" / "web.yaml").write_text(GROUP % (i + WARMUP + 2 + n * 1000))
            git(clone, "commit", "-qam", f"bench {i}")
            seq += 1
            t0 = time.time()
            git(clone, "push", "-q", "origin", "main")
            pushes.append((time.time() - t0) * 1000)
            workers.wait(lambda s=seq: len(workers.times("disk", s)) >= n, 30)
            if i < 0:  # warm-up: the agents' start-up work (first report, presence) settles
                before = cpu_now()
                pushes.clear()
                continue
            out.append((max(workers.times("disk", seq)) - t0) * 1000)
            observer.wait(lambda s=seq: bool(observer.times("pub", s)), 30)
            published.append((observer.times("pub", seq)[0] - t0) * 1000)
        after = cpu_now()
    finally:
        workers.close()
        observer.close()
    cpu = {k: (after[k] - before[k]) * 1000 / commits for k in before}
    return out, published, cpu, statistics.median(pushes)


def floor_latencies(url: str, n: int, rounds: int, size: int) -> tuple[list[float], float]:
    hosts = [f"floor-{i}" for i in range(n)]
    workers = Workers("floor", hosts, {"url": url})
    out: list[float] = []
    before = sum(cpu_seconds(p.pid) for p in workers.procs)

    async def publish_all() -> None:
        conn = await aio_pika.connect(url)
        async with conn:
            ch = await conn.channel()
            ex = await ch.declare_exchange("bench.floor", aio_pika.ExchangeType.FANOUT)
            for seq in range(1, rounds + 1):
                body = json.dumps({"seq": seq, "pad": "x" * size}).encode()
                t0 = time.time()
                await ex.publish(aio_pika.Message(body), routing_key="")
                await asyncio.to_thread(
                    workers.wait, lambda s=seq: len(workers.times("recv", s)) >= n, 30
                )
                out.append((max(workers.times("recv", seq)) - t0) * 1000)

    try:
        asyncio.run(publish_all())
        cpu = (sum(cpu_seconds(p.pid) for p in workers.procs) - before) * 1000 / rounds
    finally:
        workers.close()
    return out, cpu


def join_times(work: Path, url: str, key_id: str, pub: str, runs: int = 5) -> list[float]:
    out = []

    async def one(i: int) -> float:
        d = work / f"join-{i}"
        agent = Agent(AgentSettings(
            host_id=f"join-{i}", broker_urls=(url,), trusted_keys=(TrustedKey(key_id, pub),),
            state_dir=str(d / "state"), releases_dir=str(d / "rel"), cache_dir=str(d / "cache"),
            reconcile_interval=300.0, heartbeat_interval=30.0,
        ))  # fmt: skip
        stop = asyncio.Event()
        t0 = time.monotonic()
        task = asyncio.create_task(agent.run(stop))
        while not agent.snapshot:  # set once the snapshot is on disk
            await asyncio.sleep(0.001)  # poll: the moment it is
        took = time.monotonic() - t0
        stop.set()
        await task
        return took * 1000

    for i in range(runs):
        out.append(eventloop.run(one(i)))
    return out


def idle_agent(
    work: Path, url: str, key_id: str, pub: str, seconds: float, metrics: str = ""
) -> tuple[float, float]:
    """RSS (MiB) and CPU (%) of one idle agent process; `metrics`: HOST:PORT to serve and
    scrape Prometheus metrics on (once a second, as a busy Prometheus would not)."""
    d = work / ("idle-metrics" if metrics else "idle")
    d.mkdir()
    cfg = d / "agent.yaml"
    cfg.write_text(
        f"apiVersion: erel/v1\nkind: AgentSettings\nmetadata: {{name: idle}}\nspec:\n"
        f"  host_id: idle-1\n  broker: {{urls: ['{url}']}}\n"
        f"  trusted_keys: [{{id: {key_id}, public_key: '{pub}'}}]\n"
        f"  state_dir: {d}/state\n  releases_dir: {d}/rel\n  cache_dir: {d}/cache\n"
    )
    served = ["--metrics-listen", metrics] if metrics else []
    p = subprocess.Popen([sys.executable, "-m", "erel_sync", "agent", "--config", str(cfg),
                          "--log-level", "warning", *served])  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while store.SlotFile(d / "state" / "snapshot").read() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("idle agent did not join")
            time.sleep(0.05)  # poll for the join
        time.sleep(3)  # let start-up work settle: the measurement is of an idle agent
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        c0, t0 = cpu(), time.monotonic()
        if metrics:
            while time.monotonic() < t0 + seconds:
                urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read()
                time.sleep(1)  # one scrape a second over the idle interval
        else:
            time.sleep(seconds)  # the idle interval being measured
        c1, t1 = cpu(), time.monotonic()
        rss_kb = next(
            int(line.split()[1])
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        return rss_kb / 1024, (c1 - c0) / (t1 - t0) * 100
    finally:
        p.terminate()
        p.wait(30)


@dataclass
class BenchCluster:
    node: RabbitNode
    clone: Path  # a clone of the bare repository the publisher serves
    publisher: subprocess.Popen[bytes]
    public_key: str  # the publisher's, for the agents' settings (key id "bench")


@contextlib.contextmanager
def bench_cluster(work: Path, node_name: str, group: str) -> Iterator[BenchCluster]:
    """A private RabbitMQ node and a publisher serving a bare config repository on it
    (`serving`); all stopped on exit."""
    node = RabbitNode(work / "rabbit", name=node_name)
    node.start()
    try:
        with serving(work, [node.url], group) as (clone, publisher, pub):
            yield BenchCluster(node, clone, publisher, pub)
    finally:
        node.stop()


@contextlib.contextmanager
def serving(
    work: Path, urls: list[str], group: str
) -> Iterator[tuple[Path, subprocess.Popen[bytes], str]]:
    """A bare config repository (the release `hello` and `group`) with a clone, and a publisher
    process serving it on the brokers `urls` (under cProfile with BENCH_PROFILE), yielded as
    (clone, process, public key) once its first snapshot is out; stopped on exit."""
    publisher = None
    try:
        bare, clone = work / "config.git", work / "clone"
        git(work, "init", "-q", "--bare", "-b", "main", str(bare))
        git(work, "clone", "-q", str(bare), str(clone))
        (clone / "releases").mkdir()
        (clone / "groups").mkdir()
        (clone / "releases" / "hello.yaml").write_text(RELEASE % ("ab" * 32))
        (clone / "groups" / "web.yaml").write_text(group)
        git(clone, "add", "-A")
        git(clone, "commit", "-qm", "init")
        git(clone, "push", "-q", "origin", "main")
        pem, pub = generate_key()
        store.write_atomic(work / "pub.key", pem)
        profile = os.environ.get("BENCH_PROFILE")
        prof = ["-m", "cProfile", "-o", f"{profile}/publisher.prof"] if profile else []
        publisher = subprocess.Popen(
            [sys.executable, *prof, "-m", "erel_sync", "publisher", "--repo", str(bare),
             "--key", str(work / "pub.key"), "--key-id", "bench",
             "--state-dir", str(work / "publisher"), "--log-level", "warning",
             *(arg for u in urls for arg in ("--amqp-url", u))],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (store.read_json(work / "publisher" / "publisher.json") or {}).get("seq"):
            if time.monotonic() > deadline:
                raise TimeoutError("publisher did not publish")
            time.sleep(0.05)  # poll for the first snapshot
        yield clone, publisher, pub
    finally:
        if publisher is not None:
            publisher.terminate()
            publisher.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=50)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--sizes", default="10,100", help="agent counts, e.g. 100 (comma-separated)")
    ap.add_argument("--no-join-idle", action="store_true", help="only the push latencies")
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="erel-bench-") as tmp,
        bench_cluster(Path(tmp), f"erelbench-{os.getpid()}", GROUP % 1) as c,
    ):
        work, node, pub = Path(tmp), c.node, c.public_key
        print(
            f"RabbitMQ {node.node_name}, {os.cpu_count()} cores, agents on "
            f"{eventloop.name()}; {args.commits} commits each"
        )
        for n in [int(x) for x in args.sizes.split(",")]:
            others = {"broker": node.pid or 0, "publisher": c.publisher.pid}
            lat, published, cpu, push = push_latencies(
                work, node.url, "bench", pub, n, args.commits, others
            )
            fl, floor_cpu = floor_latencies(node.url, n, args.commits, 4096)
            print(
                f"{n:4d} agents: git push -> all on disk p50 {pct(lat, 0.5):6.1f} ms  "
                f"p90 {pct(lat, 0.9):6.1f} ms  p99 {pct(lat, 0.99):6.1f} ms  "
                f"max {max(lat):6.1f} ms | aio-pika fan-out floor p50 "
                f"{pct(fl, 0.5):5.1f} ms p99 {pct(fl, 0.99):5.1f} ms"
            )
            fanout = [a - b for a, b in zip(lat, published, strict=True)]
            print(
                f"      of which push -> on the stream p50 {pct(published, 0.5):5.1f} ms "
                f"p99 {pct(published, 0.99):5.1f} ms max {max(published):5.1f} ms; "
                f"stream -> all on disk p50 {pct(fanout, 0.5):5.1f} ms "
                f"p99 {pct(fanout, 0.99):5.1f} ms max {max(fanout):5.1f} ms"
            )
            print(
                "      CPU per commit: "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(cpu.items()))
                + f" | floor consumers {floor_cpu:.0f} ms | `git push` itself p50 {push:.0f} ms"
            )
        if args.no_join_idle:
            return
        joins = join_times(work, node.url, "bench", pub)
        print(f"join (agent start -> snapshot on disk): median {statistics.median(joins):.0f} ms"
              f", max {max(joins):.0f} ms over {len(joins)} runs")  # fmt: skip
        rss, idle_cpu = idle_agent(work, node.url, "bench", pub, args.idle_seconds)
        print(f"idle agent: RSS {rss:.1f} MiB, CPU {idle_cpu:.2f} % "
              f"over {args.idle_seconds:.0f} s")  # fmt: skip
        listen = f"127.0.0.1:{free_port()}"
        rss, idle_cpu = idle_agent(work, node.url, "bench", pub, args.idle_seconds, listen)
        print(f"idle agent serving metrics (scraped every second): RSS {rss:.1f} MiB, "
              f"CPU {idle_cpu:.2f} % over {args.idle_seconds:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
