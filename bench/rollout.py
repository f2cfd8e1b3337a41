"""Benchmark of a rollout's coordination: 100 hosts, `max_unavailable: 10`, an upgrade that
takes a fixed time STEP (upgrade + probation, stood in for by `bench/stubdriver.py`), so that
only what erel-sync adds is measured. A real private RabbitMQ node, a real publisher (its
rollout controller), agents in worker processes of 25.

Prints the total rollout time (git push -> the last host done) beside waves x STEP, the
overhead per wave ((total - waves x STEP) / waves; target < 50 ms), push -> first upgrade
started, and what crossed the broker per host during the rollout (AMQP frames counted by
RabbitMQ on the agents' connections; a message is 3 frames). Run: `.venv/bin/python
bench/rollout.py [--hosts 100] [--max-unavailable 10] [--step 0.5]`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gitops
from gitops import Workers, bench_cluster, cpu_seconds, git

# gitops' release, with a second version to upgrade to.
RELEASE = (
    gitops.RELEASE
    + """    - version: "0.2.0"
      artifact: {url: "https://artifacts.example.com/hello-0.2.0.tar.gz", sha256: %s}
"""
)
GROUP = """apiVersion: erel/v1
kind: Group
metadata: {name: web}
spec:
  hosts: ["roll-*"]
  releases: [{name: hello, version: "%s"}]
  rollout: {max_unavailable: %d}
"""


def frames(node: object, prefix: str) -> int:
    """AMQP frames RabbitMQ received and sent on the connections named `prefix...`."""
    out = node.ctl("list_connections", "client_properties", "recv_cnt", "send_cnt", "-q")  # type: ignore[attr-defined]
    total = 0
    for line in out.splitlines():
        if prefix in line:
            parts = line.rsplit(maxsplit=2)
            total += int(parts[-2]) + int(parts[-1])
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--max-unavailable", type=int, default=10)
    ap.add_argument("--step", type=float, default=0.5, help="upgrade + probation, seconds")
    args = ap.parse_args()
    n, limit, step = args.hosts, args.max_unavailable, args.step
    hosts = [f"roll-{i:03d}" for i in range(n)]
    with (
        tempfile.TemporaryDirectory(prefix="erel-bench-") as tmp,
        bench_cluster(Path(tmp), f"erelroll-{os.getpid()}", GROUP % ("0.1.0", limit)) as c,
    ):
        work = Path(tmp)
        (c.clone / "releases" / "hello.yaml").write_text(RELEASE % ("ab" * 32, "cd" * 32))
        git(c.clone, "commit", "-qam", "hello 0.2.0 available")
        git(c.clone, "push", "-q", "origin", "main")
        # Dealt round-robin to the worker processes, so that each wave's hosts are spread over
        # them as they would be over machines: in contiguous blocks a whole wave sat in one
        # process and waited for the 24 agents beside it to finish their own work first.
        per = -(-n // gitops.PER_WORKER)
        dealt = [h for k in range(per) for h in hosts[k::per]]
        workers = Workers(
            "rollout",
            dealt,
            {"url": c.node.url, "work": str(work / "agents"), "key_id": "bench",
             "public_key": c.public_key, "step_time": step},
        )  # fmt: skip
        # When the revision is on the config stream: the rollout starts there (before it: git
        # and the publisher's load and validation, the GitOps loop of bench/gitops.py).
        observer = Workers("observe", ["observer"], {"url": c.node.url})
        try:
            # Each host applies the group's config once (a gated, instant step) on joining.
            workers.wait(lambda: len(workers.times("config", 0)) >= n, 120)
            time.sleep(2)  # let the join's reports settle: the rollout is what is measured
            before = frames(c.node, "erel-agent:")
            parties = {"agents": [p.pid for p in workers.procs], "publisher": [c.publisher.pid],
                       "broker": [c.node.pid or 0]}  # fmt: skip

            def cpu() -> dict[str, float]:
                return {k: sum(map(cpu_seconds, pids)) for k, pids in parties.items()}

            cpu_before = cpu()
            (c.clone / "groups" / "web.yaml").write_text(GROUP % ("0.2.0", limit))
            git(c.clone, "commit", "-qam", "hello 0.2.0 everywhere")
            t0 = time.time()
            git(c.clone, "push", "-q", "origin", "main")
            workers.wait(lambda: len(workers.times("done", 0)) >= n, 60 + 10 * n * step)
            total = max(workers.times("done", 0)) - t0
            used = {k: v - cpu_before[k] for k, v in cpu().items()}
            out = min(t for (kind, _), ts in observer.events.items() if kind == "pub" for t in ts
                      if t > t0) - t0  # fmt: skip
            first = min(workers.times("start", 0)) - t0
            seq = max((s for (kind, s) in workers.events if kind == "disk"), default=0)
            disk = sorted(t - t0 for t in workers.times("disk", seq))
            first_wave = sorted(workers.times("start", 0))[limit - 1] - t0
            after = frames(c.node, "erel-agent:")
            starts = sorted(workers.times("start", 0))
            dones = sorted(workers.times("done", 0))
            # At any instant: how many hosts were mid-change (started, not done).
            # A freed place -> the next host starting: the controller's whole round trip
            # (report, step, signed document, the agent's tick and its own report).
            gaps = sorted(s - max(d for d in dones if d <= s) for s in starts[limit:])
            events = sorted([(t, 1) for t in starts] + [(t, -1) for t in dones])
            level = peak = 0
            for _, d in events:
                level += d
                peak = max(peak, level)
        finally:
            workers.close()
            observer.close()
    waves = math.ceil(n / limit)
    ideal = waves * step
    print(f"{n} hosts, max_unavailable {limit}, upgrade + probation {step * 1000:.0f} ms")
    print(
        f"rollout: {total * 1000:.0f} ms from git push to the last host done vs {waves} waves x "
        f"{step * 1000:.0f} ms = {ideal * 1000:.0f} ms; overhead per wave "
        f"{(total - ideal) / waves * 1000:.1f} ms, of which the push -> first "
        f"start below is paid once: {(total - first - ideal) / waves * 1000:.1f} ms per wave after it"
    )
    print(
        f"counted from the revision on the stream ({out * 1000:.0f} ms after the push): "
        f"{(total - out) * 1000:.0f} ms, overhead per wave {(total - out - ideal) / waves * 1000:.1f}"
        " ms (target < 50 ms)"
    )
    print(
        f"push -> first upgrade started: {first * 1000:.0f} ms (snapshot out, hosts report, "
        f"first grants); most hosts mid-change at once: {peak}"
    )
    print(
        f"revision on every disk: median {disk[len(disk) // 2] * 1000:.0f} ms, last "
        f"{disk[-1] * 1000:.0f} ms after the push; the first wave's last start: "
        f"{first_wave * 1000:.0f} ms"
    )
    print(
        f"a place freed -> the next host started: median {gaps[len(gaps) // 2] * 1000:.1f} ms, "
        f"p90 {gaps[int(len(gaps) * 0.9)] * 1000:.1f} ms, max {gaps[-1] * 1000:.1f} ms"
    )
    print(
        "CPU during the rollout: "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in used.items())
        + f" (of {total * 2 * 1000:.0f} ms on 2 cores)"
    )
    print(
        f"broker traffic per host during the rollout: {(after - before) / n:.0f} AMQP frames "
        f"(~{(after - before) / n / 3:.0f} messages)"
    )


if __name__ == "__main__":
    main()
