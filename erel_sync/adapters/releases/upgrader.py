"""Version changes of one release: the hot and restart paths with probation and automatic
fallback, and recovery of a step a previous agent left unfinished.

Called by `ReleaseDriver.upgrade` / `ReleaseDriver.recover` (`adapters.releases.driver`), under the
release's lock. Split from the driver to keep both modules readable. It reaches the driver only
through `ReleaseHost`, the few public methods it needs (so this module imports nothing from the
driver), uses `NodeOps` and `release_files`, and decides with `core.upgrade`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from erel_sync.adapters.releases import files as release_files
from erel_sync.adapters.releases.erlcall import NodeRef, ensure_epmd
from erel_sync.adapters.releases.meta import ReleaseMeta, now, save_meta
from erel_sync.adapters.releases.nodeops import NodeOps
from erel_sync.core import facts, reasons
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.core.upgrade import RecoveryStep, UpgradePath, choose_upgrade_path
from erel_sync.model.specs import HealthSpec, ReleaseConfig, ReleaseSpec


@dataclass(frozen=True, kw_only=True)
class UpgradeResult(StepResult):
    path: UpgradePath
    from_version: str | None
    to_version: str
    why: str


class UpgradeSettings(Protocol):
    """The driver settings an upgrade reads."""

    @property
    def long_timeout(self) -> float: ...  # unpack / install / rollback
    @property
    def epmd(self) -> str | None: ...


class ReleaseHost(Protocol):
    """What the upgrader needs from the release driver (`ReleaseDriver` is the one). Every
    method runs under the release's lock, which the driver's `upgrade`/`recover` hold."""

    @property
    def ops(self) -> NodeOps: ...
    @property
    def settings(self) -> UpgradeSettings: ...
    def root(self, name: str) -> Path: ...
    def node(self, name: str) -> NodeRef: ...
    def meta(self, name: str) -> ReleaseMeta: ...
    async def install_version(
        self, spec: ReleaseSpec, version: str, config: ReleaseConfig
    ) -> bool: ...
    async def start_version(self, name: str, meta: ReleaseMeta, version: str) -> bool: ...
    def record_pid(self, meta: ReleaseMeta) -> None: ...
    def booted(self, meta: ReleaseMeta, as_name: str | None) -> NodeRef: ...
    async def observe(self, name: str, *, health: bool = False) -> ObservedRelease: ...


class Upgrader:
    def __init__(self, host: ReleaseHost) -> None:
        self.d = host
        self.ops = host.ops

    async def _status(self, node: NodeRef) -> Mapping[str, Any] | None:
        return facts.parse_status(await self.ops.erel_outcome(node, "status", within=2.0))

    async def upgrade(self, spec: ReleaseSpec, to: str, config: ReleaseConfig) -> UpgradeResult:
        name = spec.name
        self.d.meta(name)  # NotInstalled / NotManaged before anything else
        root, node = self.d.root(name), self.d.node(name)
        status = await self._status(node)
        running = status is not None
        current = status.get("current") if status else None
        from_version = current if running else release_files.boot_version(root)
        if (running and current == to and status and status.get("permanent") == to) or (
            not running and from_version == to
        ):
            why = f"{to} is in place"
            return await self._result(name, UpgradePath.NONE, from_version, to, why)
        await self.d.install_version(spec, to, config)
        relup: list[str] | None = None
        if running:
            answer = await self.ops.erel(node, "relup_from", [to], failure=reasons.UpgradeFailed)
            relup = [str(v) for v in answer] if isinstance(answer, list) else []
        decision = choose_upgrade_path(
            spec.upgrade, running=running, current=current, target=to, relup_from=relup
        )
        meta = self.d.meta(name)
        meta.pending = {
            "op": "upgrade",
            "path": decision.path.value,
            "from": from_version,
            "to": to,
            "since": now(),
        }
        save_meta(root, meta)
        try:
            if decision.path is UpgradePath.HOT:
                await self._hot(name, meta, from_version, to)
            elif decision.path is UpgradePath.RESTART:
                await self._restart(name, meta, from_version, to, was_running=running)
            else:  # running `to` but not permanent yet: an interrupted probation
                await self._commit_or_undo(name, meta, from_version, to, hot=True)
        except reasons.DriverError as exc:
            meta.pending = None
            meta.last_result = {"op": "upgrade", "to": to, "reason": exc.reason, "at": now()}
            save_meta(root, meta)
            raise
        meta.pending = None
        meta.last_result = {"op": "upgrade", "to": to, "reason": "Upgraded", "at": now()}
        save_meta(root, meta)
        return await self._result(name, decision.path, from_version, to, decision.why)

    async def _result(
        self, name: str, path: UpgradePath, from_version: str | None, to: str, why: str
    ) -> UpgradeResult:
        """The step's result, with the release as the upgrade left it."""
        observed = await self.d.observe(name, health=True)
        did = (
            f"{to} in place" if path is UpgradePath.NONE else f"{path.value} {from_version} -> {to}"
        )
        return UpgradeResult(
            name=name,
            did=did,
            observed=observed,
            changed=path is not UpgradePath.NONE,
            path=path,
            from_version=from_version,
            to_version=to,
            why=why,
        )

    # ------------------------------------------------------------------------------- hot

    async def _hot(self, name: str, meta: ReleaseMeta, from_version: str | None, to: str) -> None:
        node, root = self.d.node(name), self.d.root(name)
        health = HealthSpec(**meta.health)
        result = await self.ops.erel(
            node,
            "install",
            [to],
            within=self.d.settings.long_timeout,
            failure=reasons.UpgradeFailed,
        )
        if isinstance(result, dict) and result.get("restart"):
            # A relup with restart_new_emulator: the node reboots into `to` by itself.
            await self.ops.wait_ready(node, root, health, expect_version=to)
        await self._commit_or_undo(name, meta, from_version, to, hot=True)

    async def _commit_or_undo(
        self, name: str, meta: ReleaseMeta, from_version: str | None, to: str, *, hot: bool
    ) -> None:
        node = self.d.node(name)
        health = HealthSpec(**meta.health)
        answer = await self.ops.probation(node, health, health.probation)
        if answer.healthy:
            await self.ops.erel(node, "make_permanent", [to], failure=reasons.UpgradeFailed)
            return
        cause = reasons.HealthCheckFailed if answer.reachable else reasons.NodeUnreachable
        if hot:
            await self._hot_rollback(name, meta, from_version)
        else:
            await self._restart_fallback(name, meta, from_version, was_running=True)
        raise reasons.driver_error(
            reasons.RolledBack,
            f"{name} {to} failed its probation ({answer.reason}); back on {from_version}",
            cause=cause,
        )

    async def _hot_rollback(self, name: str, meta: ReleaseMeta, from_version: str | None) -> None:
        node, root = self.d.node(name), self.d.root(name)
        try:
            await self.ops.erel(
                node,
                "rollback",
                within=self.d.settings.long_timeout,
                failure=reasons.RollbackFailed,
            )
            status = await self._status(node)
            if status is not None and status.get("current") == from_version:
                return
        except reasons.DriverError:
            pass
        # The hot downgrade failed or the node died: a fresh boot runs the permanent version.
        await self._stop(node, root, meta)
        release_files.clear_boot_candidate(root)
        try:
            await self.d.start_version(name, meta, release_files.boot_version(root))
        except reasons.DriverError as exc:
            raise reasons.driver_error(
                reasons.RollbackFailed,
                f"{name}: rollback by restart failed: {exc.message}",
                exc.output_tail,
                cause=exc.reason,
            ) from exc

    # --------------------------------------------------------------------------- restart

    async def _restart(
        self, name: str, meta: ReleaseMeta, from_version: str | None, to: str, *, was_running: bool
    ) -> None:
        node, root = self.d.node(name), self.d.root(name)
        health = HealthSpec(**meta.health)
        if was_running:
            await self.ops.halt(node, root, meta.stop_timeout)
        try:
            release_files.set_boot_candidate(root, to)
            await ensure_epmd(self.d.settings.epmd)
            node = self.d.booted(meta, await self.ops.boot(root, name, to))
            await self.ops.wait_ready(node, root, health, expect_version=to)
            answer = await self.ops.probation(node, health, health.probation)
            if not answer.healthy:
                cause = reasons.HealthCheckFailed if answer.reachable else reasons.NodeUnreachable
                raise reasons.driver_error(cause, answer.reason)
            await self.ops.erel(node, "make_permanent", [to], failure=reasons.UpgradeFailed)
        except reasons.DriverError as exc:
            await self._restart_fallback(name, meta, from_version, was_running=was_running)
            back = f"back on {from_version}" if was_running else f"{from_version} stays permanent"
            raise reasons.driver_error(
                reasons.RolledBack,
                f"{name} {to} failed ({exc.reason}: {exc.message}); {back}",
                exc.output_tail,
                cause=exc.reason,
            ) from exc
        self.d.record_pid(meta)

    async def _restart_fallback(
        self, name: str, meta: ReleaseMeta, from_version: str | None, *, was_running: bool
    ) -> None:
        node, root = self.d.node(name), self.d.root(name)
        await self._stop(node, root, meta)
        release_files.clear_boot_candidate(root)
        if not was_running or from_version is None:
            return
        try:
            await self.d.start_version(name, meta, from_version)
        except reasons.DriverError as exc:
            raise reasons.driver_error(
                reasons.RollbackFailed,
                f"{name}: {from_version} did not come back: {exc.message}",
                exc.output_tail,
                cause=exc.reason,
            ) from exc

    async def _stop(self, node: NodeRef, root: Path, meta: ReleaseMeta) -> None:
        """Graceful when the node still answers, immediate otherwise (it is failing anyway)."""
        if await self._status(node) is not None:
            await self.ops.halt(node, root, meta.stop_timeout)
        else:
            await self.ops.kill_now(root)

    # -------------------------------------------------------------------------- recovery

    async def recover(self, name: str, meta: ReleaseMeta, step: RecoveryStep) -> None:
        root = self.d.root(name)
        pending = meta.pending or {}
        try:
            if step is RecoveryStep.START_PERMANENT:
                release_files.clear_boot_candidate(root)
                await self.d.start_version(name, meta, release_files.boot_version(root))
            elif step is RecoveryStep.PROBE_AND_COMMIT:
                await self._commit_or_undo(
                    name,
                    meta,
                    pending.get("from"),
                    str(pending.get("to")),
                    hot=pending.get("path") != UpgradePath.RESTART.value,
                )
        finally:
            meta.pending = None
            save_meta(root, meta)
