"""Benchmark of `erel-sync status` over HOSTS live agents on a private RabbitMQ node.

- in-process: OpsClient connect -> `gather_entries` (presence read + status query + every
  answer collected), p50/p99/max over ROUNDS rounds; every host must be reachable.
- CLI: `python -m erel_sync status -o json` wall time (Python start-up included), p50/max, next
  to `python -m erel_sync version` as the interpreter + import floor.
Agents run in-process, 25 per worker process (bench/gitops_worker.py), in a group with no
releases, so they are assigned and idle. Target (docs/performance.md): status < 1 s at 50 hosts.
Run: `make bench` or `.venv/bin/python bench/status.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gitops import Workers, bench_cluster, pct

from erel_sync.adapters import store
from erel_sync.adapters.broker.opsclient import OpsClient
from erel_sync.cli.status import gather_entries
from erel_sync.core import clusterview as view

HOSTS = 50
SINCE = 600.0  # the CLI's default --since (10m)
WITHIN = 2.0  # the CLI's default --timeout
GROUP = """apiVersion: erel/v1
kind: Group
metadata: {name: web}
spec:
  hosts: ["stat-*"]
  releases: []
  allow_empty: true
"""


async def wait_presence(url: str, hosts: set[str], since: float, limit: float) -> None:
    """Until every host's latest presence record names its group (the agent has matched)."""
    deadline = time.monotonic() + limit
    async with OpsClient([url]) as client:
        while True:
            known = view.known_hosts(await client.read_presence(since))
            ready = [h for h in hosts if h in known and known[h].last.get("group") == "web"]
            if len(ready) == len(hosts):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"presence in group web of {len(ready)}/{len(hosts)} hosts")
            await asyncio.sleep(0.2)  # poll the presence stream


async def in_process(url: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        async with OpsClient([url]) as client:
            entries = await gather_entries(
                client, group=None, host=None, since=SINCE, within=WITHIN
            )
            took = (time.perf_counter() - t0) * 1000
        bad = [e["host_id"] for e in entries if not e["reachable"]]
        assert len(entries) == HOSTS and not bad, f"{len(entries)} entries, unreachable: {bad}"
        out.append(took)
    return out


def cli(args: list[str], rounds: int, check: Callable[[str], None] | None = None) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "erel_sync", *args], check=False, capture_output=True, text=True
        )
        took = (time.perf_counter() - t0) * 1000
        assert p.returncode == 0, f"{args[0]} exited {p.returncode}: {p.stderr.strip()}"
        if check is not None:
            check(p.stdout)
        out.append(took)
    return out


def check_status(stdout: str) -> None:
    entries = json.loads(stdout)
    hosts = {e["host_id"] for e in entries if e["reachable"]}
    assert len(entries) == HOSTS and len(hosts) == HOSTS, f"{len(hosts)}/{len(entries)} reachable"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="erel-bench-") as tmp,
        bench_cluster(Path(tmp), f"erelbench-status-{os.getpid()}", GROUP) as c,
    ):
        work, node = Path(tmp), c.node
        seq = int((store.read_json(work / "publisher" / "publisher.json") or {})["seq"])
        hosts = [f"stat-{i:03d}" for i in range(HOSTS)]
        started = time.time()
        workers = Workers("agents", hosts, {"url": node.url, "work": str(work / "agents"),
                                            "key_id": "bench", "public_key": c.public_key})  # fmt: skip
        try:
            workers.wait(lambda: len(workers.times("disk", seq)) == HOSTS, 60)
            asyncio.run(wait_presence(node.url, set(hosts), started - 5, 60))
            print(f"RabbitMQ {node.node_name}, {os.cpu_count()} cores; {HOSTS} agents joined "
                  f"in {time.time() - started:.1f} s; {args.rounds} rounds each")  # fmt: skip
            inproc = asyncio.run(in_process(node.url, args.rounds))
            wall = cli(["status", "-o", "json", "--amqp-url", node.url], args.rounds, check_status)
            floor = cli(["version"], args.rounds)
            print(
                f"status over {HOSTS} hosts: in-process p50 {pct(inproc, 0.5):.0f} ms "
                f"p99 {pct(inproc, 0.99):.0f} ms max {max(inproc):.0f} ms | CLI wall p50 "
                f"{statistics.median(wall):.0f} ms max {max(wall):.0f} ms (python start-up floor "
                f"{statistics.median(floor):.0f} ms) | target < 1000 ms"
            )
        finally:
            workers.close()


if __name__ == "__main__":
    main()
