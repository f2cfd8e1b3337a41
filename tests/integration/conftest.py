"""Fixtures for tests that drive real Erlang releases.

`examples`: the example release tarballs (hello 0.1.0/0.2.0/0.3.0, ticker 0.1.0), built once
into `<repo>/build/examples` by `erlang/build-examples.sh` (cached across runs by the script).
`release_env`: a private releases dir, cache dir and unique host id per test, so node names
never collide with another test or a developer's agent; at teardown every process of every
release root it holds is killed by PID (checked against the root first) and waited for.
"""

from __future__ import annotations

import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

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

REPO = Path(__file__).resolve().parents[2]

FAST_HEALTH = HealthSpec(rpc="erel:health/0", timeout=5.0, probation=0.3, start_timeout=15.0)


@pytest.fixture(scope="session")
def examples() -> ExampleManifest:
    for tool in ("erl_call", "epmd", "rebar3"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run `make setup`")
    return build_examples(REPO / "build" / "examples")


@dataclass
class ReleaseEnv:
    examples: ExampleManifest
    releases_dir: Path
    cache_dir: Path
    host_id: str
    driver: ReleaseDriver

    @property
    def settings(self) -> DriverSettings:
        return self.driver.settings

    def spec(
        self,
        name: str = "hello",
        *,
        mode: UpgradeMode = UpgradeMode.AUTO,
        health: HealthSpec = FAST_HEALTH,
        stop_timeout: float = 10.0,
    ) -> ReleaseSpec:
        versions = tuple(
            ReleaseVersionSpec(a.version, Artifact(a.url(), a.sha256, a.size))
            for a in self.examples
            if a.name == name
        )
        return ReleaseSpec(
            name=name, versions=versions, upgrade=mode, health=health, stop_timeout=stop_timeout
        )

    def with_health(self, spec: ReleaseSpec, **changes: Any) -> ReleaseSpec:
        return replace(spec, health=replace(spec.health, **changes))

    def roots(self) -> list[Path]:
        if not self.releases_dir.exists():
            return []
        return [p for p in self.releases_dir.iterdir() if p.is_dir()]


def kill_release_processes(roots: list[Path], deadline_s: float = 10.0) -> None:
    for root in roots:
        nodeproc.kill_pids(nodeproc.node_pids(root), root, signal.SIGKILL)
    deadline = time.monotonic() + deadline_s
    for root in roots:
        while nodeproc.node_pids(root) and time.monotonic() < deadline:
            time.sleep(0.02)  # poll until the processes are gone or the deadline


@pytest.fixture
def release_env(tmp_path: Path, examples: ExampleManifest) -> Iterator[ReleaseEnv]:
    releases_dir = tmp_path / "releases"
    cache_dir = tmp_path / "cache"
    host_id = f"it-{uuid.uuid4().hex[:10]}.test"
    driver = ReleaseDriver(
        DriverSettings(releases_dir=releases_dir, cache_dir=cache_dir, host_id=host_id)
    )
    env = ReleaseEnv(examples, releases_dir, cache_dir, host_id, driver)
    try:
        yield env
    finally:
        kill_release_processes(env.roots())
