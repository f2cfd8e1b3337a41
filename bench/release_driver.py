"""Benchmark: the release driver on the real example release (hello).

Prints a first install from the warm artifact cache (target <= 0.8 s), cold start -> healthy
(target <= 0.8 s), hot upgrade 0.1.0 -> 0.2.0 with a zero
probation (target <= 0.4 s), stop, one status probe of 10 running releases in parallel
(target <= 50 ms total), and the erl_call processes one steady-state reconcile tick spawns per
running release (a real `Reconciler` tick with the real driver, nothing to do; target 1: one
`erel_rpc:observe` with health included). The 10 releases belong to 10 host ids (10 drivers
side by side, as many agents on one machine would run). Everything it starts is stopped and deleted at the end,
and killed by PID if anything went wrong. Run: `.venv/bin/python bench/release_driver.py`
(after `make examples`).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from erel_sync.adapters.releases import nodeproc
from erel_sync.adapters.releases.driver import DriverSettings, ReleaseDriver
from erel_sync.adapters.releases.erlcall import ErlCall
from erel_sync.agent.reconciler import Reconciler
from erel_sync.core.matching import HostIdentity
from erel_sync.core.reconcile import config_digest
from erel_sync.core.releasestatus import ReleaseStatus
from erel_sync.core.snapshot import (
    Snapshot,
    build_envelope,
    generate_key,
    load_private_key,
    verify_envelope,
)
from erel_sync.dev.examples import ExampleManifest, build_examples
from erel_sync.model.specs import (
    Artifact,
    HealthSpec,
    ReleaseSpec,
    ReleaseVersionSpec,
    UpgradeMode,
)
from erel_sync.model.validate import SourceFile, validate_sources

REPO = Path(__file__).resolve().parents[1]
FLEET = 10
PROBES = 30
T = TypeVar("T")


def spec_for(examples: ExampleManifest) -> ReleaseSpec:
    versions = tuple(
        ReleaseVersionSpec(a.version, Artifact(a.url(), a.sha256, a.size))
        for a in examples
        if a.name == "hello"
    )
    health = HealthSpec(timeout=5.0, probation=0.0, start_timeout=20.0)
    return ReleaseSpec("hello", versions, UpgradeMode.AUTO, health, stop_timeout=10.0)


async def timed(awaitable: Awaitable[T]) -> tuple[float, T]:
    t = time.perf_counter()
    result = await awaitable
    return time.perf_counter() - t, result


def line(label: str, seconds: float, target: float | None, note: str = "") -> None:
    verdict = "" if target is None else ("ok" if seconds <= target else "OVER")
    want = f"target <= {target * 1000:.0f} ms" if target else ""
    print(f"{label:<34}{seconds * 1000:8.1f} ms  {want:<18}{verdict:<5}{note}")


def snapshot_for(examples: ExampleManifest, hosts: list[str], version: str) -> Snapshot:
    """A signed snapshot that wants hello `version` on `hosts` (what a publisher would send)."""
    lines = ["apiVersion: erel/v1", "kind: Release", "metadata:", "  name: hello", "spec:"]
    lines += ["  versions:"]
    for a in examples:
        if a.name == "hello":
            lines += [f'    - version: "{a.version}"', "      artifact:"]
            lines += [f"        url: {a.url()}", f"        sha256: {a.sha256}"]
    group = ["apiVersion: erel/v1", "kind: Group", "metadata:", "  name: bench", "spec:"]
    group += [f"  hosts: [{', '.join(hosts)}]", "  releases:", "    - name: hello"]
    group += [f'      version: "{version}"']
    files = {"hello.yaml": "\n".join(lines) + "\n", "bench.yaml": "\n".join(group) + "\n"}
    state = validate_sources([SourceFile(p, c.encode()) for p, c in files.items()]).require()
    pem, pub = generate_key()
    raw = build_envelope(
        state, seq=1, revision="0" * 40, created="2026-01-01T00:00:00Z",
        key=load_private_key(pem), key_id="bench",
    )  # fmt: skip
    return verify_envelope(raw, {"bench": pub})


async def steady_tick_calls(
    examples: ExampleManifest, drivers: list[ReleaseDriver], rpcs: list[ErlCall]
) -> float:
    """erl_call processes per running release in one reconcile tick that has nothing to do."""
    snap = snapshot_for(examples, [d.settings.host_id for d in drivers], "0.1.0")
    reconcilers = []
    for d in drivers:
        r = Reconciler(
            host=HostIdentity(d.settings.host_id, {}),
            driver=d,
            memory={},
            holds={},
        )
        r.snapshot = snap
        _, desired, _ = r.desired()
        assert desired is not None, "the bench group does not match its host"
        r.memory["hello"] = ReleaseStatus(applied_config=config_digest(desired["hello"].config))
        reconcilers.append(r)
    before = sum(rpc.spawned for rpc in rpcs)
    reports = await asyncio.gather(*(r.tick("bench") for r in reconcilers))
    spawned = sum(rpc.spawned for rpc in rpcs) - before
    assert all(rep["converged"] for rep in reports), reports
    return spawned / len(drivers)


async def run(tmp: Path, examples: ExampleManifest) -> None:
    spec = spec_for(examples)
    rpcs = [ErlCall() for _ in range(FLEET)]
    drivers = [
        ReleaseDriver(
            DriverSettings(
                releases_dir=tmp / f"host{i}" / "releases",
                cache_dir=tmp / "cache",
                host_id=f"bench-{i}-{uuid.uuid4().hex[:6]}",
            ),
            rpc=rpcs[i],
        )
        for i in range(FLEET)
    ]
    first = drivers[0]
    try:
        await first.install(spec, "0.1.0")  # warms the artifact cache for the others
        # A first install from the warm cache: verify, inspect every member, extract (our own
        # writer: Debian's Python 3.11.2 has no tarfile filter), render the config.
        t_inst, _ = await timed(drivers[1].install(spec, "0.1.0"))
        line("first install (cached artifact)", t_inst, 0.8, "(inspect + extract + render)")
        t_start, started = await timed(first.start("hello"))
        assert started.observed.running, started
        line("cold start -> healthy", t_start, 0.8)

        t_up, result = await timed(first.upgrade(spec, "0.2.0"))
        assert result.path.value == "hot", result
        line("hot upgrade 0.1.0 -> 0.2.0", t_up, 0.4, "(probation 0 s)")

        await asyncio.gather(*(d.install(spec, "0.1.0") for d in drivers[2:]))
        await asyncio.gather(*(d.start("hello") for d in drivers[1:]))
        samples = []
        for _ in range(PROBES):
            t, seen = await timed(asyncio.gather(*(d.observe("hello") for d in drivers)))
            assert all(o.running for o in seen), seen
            samples.append(t)
        samples.sort()
        line(
            f"status of {FLEET} running releases",
            statistics.median(samples),
            0.05,
            f"(median of {PROBES}; p90 {samples[int(PROBES * 0.9) - 1] * 1000:.1f} ms)",
        )
        # drivers[0] runs 0.2.0 since the upgrade; the other nine run 0.1.0, as desired.
        t_tick, per_release = await timed(steady_tick_calls(examples, drivers[1:], rpcs[1:]))
        verdict = "ok" if per_release <= 1 else "OVER"
        print(
            f"{'erl_call per release, steady tick':<34}{per_release:8.1f}     "
            f"{'target <= 1':<18}{verdict:<5}({FLEET - 1} hosts ticked in parallel: "
            f"{t_tick * 1000:.0f} ms)"
        )

        t_stop, stopped = await timed(first.stop("hello"))
        assert not stopped.observed.running, stopped
        line("stop (graceful init:stop)", t_stop, None)
    finally:
        await asyncio.gather(*(_delete(d) for d in drivers), return_exceptions=True)
        for d in drivers:  # anything left after a failure: by PID, checked against its root
            root = d.settings.releases_dir / "hello"
            nodeproc.kill_pids(nodeproc.node_pids(root), root, signal.SIGKILL)


async def _delete(driver: ReleaseDriver) -> None:
    if (driver.settings.releases_dir / "hello").exists():
        await driver.delete("hello")


def main() -> None:
    examples = build_examples(REPO / "build" / "examples")
    with tempfile.TemporaryDirectory(prefix="erel-bench-") as tmp:
        asyncio.run(run(Path(tmp), examples))


if __name__ == "__main__":
    main()
