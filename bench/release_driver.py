"""Benchmark: the release driver on the real example release (hello).

Prints a first install from the warm artifact cache (target <= 0.8 s), cold start -> healthy
(target <= 0.8 s), hot upgrade 0.1.0 -> 0.2.0 with a zero
probation (target <= 0.4 s), stop, and one status probe of 10 running releases in parallel
(target <= 50 ms total). The 10 releases belong to 10 host ids (10 drivers side by side, as
many agents on one machine would run). Everything it starts is stopped and deleted at the end,
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
from erel_sync.dev.examples import ExampleManifest, build_examples
from erel_sync.model.specs import (
    Artifact,
    HealthSpec,
    ReleaseSpec,
    ReleaseVersionSpec,
    UpgradeMode,
)

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


async def run(tmp: Path, examples: ExampleManifest) -> None:
    spec = spec_for(examples)
    drivers = [
        ReleaseDriver(
            DriverSettings(
                releases_dir=tmp / f"host{i}" / "releases",
                cache_dir=tmp / "cache",
                host_id=f"bench-{i}-{uuid.uuid4().hex[:6]}",
            )
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
        t_start, obs = await timed(first.start("hello"))
        assert obs.running, obs
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

        t_stop, obs = await timed(first.stop("hello"))
        assert not obs.running, obs
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
