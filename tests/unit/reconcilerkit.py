"""What the reconciler's unit tests share: signed snapshots of a small repository, a clock to
move by hand, observations of `hello`, and a fake driver of one release that records its steps
and fails them on cue."""

from __future__ import annotations

from collections.abc import Mapping

from erel_sync.core import reasons
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.core.snapshot import (
    Snapshot,
    build_envelope,
    generate_key,
    load_private_key,
    verify_envelope,
)
from erel_sync.core.upgrade import RecoveryStep
from erel_sync.model.specs import ReleaseConfig, ReleaseSpec
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml

PEM, PUB = generate_key()
T0 = 1_000_000.0


def snapshot(
    seq: int,
    version: str | None = None,
    *,
    releases: tuple[tuple[str, str], ...] | None = None,
    release_extra: str = "",
) -> Snapshot:
    """Seq `seq` of hello (0.1.0, 0.2.0) and ticker, the group running hello at `version` (or
    `releases`), signed with PEM (key id "k") and verified as an agent would."""
    files = {
        "r.yaml": release_yaml(versions=("0.1.0", "0.2.0"), extra=release_extra),
        "t.yaml": release_yaml(name="ticker"),
        "g.yaml": group_yaml(releases=releases or (("hello", version or "0.1.0"),)),
    }
    state = validate_sources([SourceFile(p, c.encode()) for p, c in files.items()]).require()
    raw = build_envelope(
        state, seq=seq, revision=f"{seq:040x}", created="2026-11-24T00:00:00Z",
        key=load_private_key(PEM), key_id="k",
    )  # fmt: skip
    return verify_envelope(raw, {"k": PUB})


class Clock:
    """The reconciler's clock, moved by the test (`now`)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def running(version: str) -> ObservedRelease:
    return ObservedRelease(
        "hello", installed=True, running=True, reachable=True, current=version,
        permanent=version, healthy=True, reason=reasons.Healthy,
    )  # fmt: skip


def stopped(version: str) -> ObservedRelease:
    return ObservedRelease("hello", installed=True, permanent=version, reason=reasons.Stopped)


class FakeDriver:
    """One release, `hello`. A step fails with the next error of `script` (None: it succeeds),
    or, once the script is spent, with `fail[step name]` (used once). `calls` lists the steps
    run; `vm_changed` is what `reconfigure` answers."""

    def __init__(self, hello: ObservedRelease | None = None) -> None:
        self.hello = hello
        self.script: list[reasons.DriverError | None] = []
        self.fail: dict[str, reasons.DriverError] = {}
        self.calls: list[str] = []
        self.vm_changed = False

    def _step(self, what: str) -> None:
        self.calls.append(what)
        error = (
            self.script.pop(0) if self.script else self.fail.pop(what.split(maxsplit=1)[0], None)
        )
        if error is not None:
            raise error

    def _result(self, did: str) -> StepResult:
        assert self.hello is not None
        return StepResult("hello", did, self.hello)

    def _running_again(self, did: str) -> StepResult:
        assert self.hello is not None and self.hello.version is not None
        self.hello = running(self.hello.version)
        return self._result(did)

    async def observe(self, name: str, *, health: bool = False) -> ObservedRelease:
        return self.hello or ObservedRelease(name, installed=False)

    async def observe_all(self, *, health: bool = False) -> Mapping[str, ObservedRelease]:
        return {"hello": self.hello} if self.hello else {}

    async def install(
        self, spec: ReleaseSpec, version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        self._step(f"install {version}")
        self.hello = stopped(version)
        return self._result(f"installed {version}")

    async def start(self, name: str) -> StepResult:
        self._step("start")
        return self._running_again("started")

    async def restart(self, name: str) -> StepResult:
        self._step("restart")
        return self._running_again("restarted")

    async def upgrade(
        self, spec: ReleaseSpec, to_version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        self._step(f"upgrade {to_version}")
        self.hello = running(to_version)
        return self._result(f"upgraded to {to_version}")

    async def reconfigure(self, spec: ReleaseSpec, config: ReleaseConfig | None = None) -> bool:
        self._step("reconfigure")
        return self.vm_changed

    async def stop(self, name: str) -> StepResult:
        raise AssertionError("not planned here")

    async def delete(self, name: str) -> StepResult:
        raise AssertionError("not planned here")

    async def recover(self, name: str) -> RecoveryStep:
        raise AssertionError("not planned here")
