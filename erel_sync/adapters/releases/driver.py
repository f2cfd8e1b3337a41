"""The release driver: install, start, stop, upgrade, observe and delete the Erlang releases of
ONE host.

Called by the agent's reconciler (`agent.reconciler`, through its `Driver` protocol) and
directly by `erel-sync release ...`. Lives in `adapters`: it is the edge where desired state
becomes files, processes and RPCs. Decisions that need no I/O are in `core.upgrade`; what an
answer of a node means in `core.facts`; node steps in `adapters.releases.nodeops`; files in
`adapters.releases.files`; version changes in `adapters.releases.upgrader`, which sees the
driver only through its `ReleaseHost` protocol.

Each step (install, start, stop, restart, upgrade, delete) returns a `StepResult` with the
release as the step left it, so the reconciler does not observe it again. `observe` is one
erl_call per release (`erel_rpc:observe` when health is asked, `status` otherwise).

Layout: `releases_dir/<name>/` is one relx release root shared by all versions (release_handler
keeps them side by side in `lib/<app>-<vsn>` and `releases/<vsn>/`); the driver's record, the
cookie and run_erl's pipes live in `<root>/.erel-sync/` (see `adapters.releases.meta`).

Upgrade paths (`core.upgrade.choose_upgrade_path`):
- hot: copy the tarball to `releases/<vsn>.tar.gz`, `erel_rpc:unpack`, render the config files,
  `erel_rpc:install`, probation (health probes for `health.probation`), `make_permanent`. A bad
  probe -> `erel_rpc:rollback` (hot downgrade) -> `RolledBack`.
- restart: unpack beside the running version, stop it, mark the new version `tmp_current` in
  RELEASES (OTP's own emulator-restart mechanism), boot `bin/<rel>-<vsn>`, wait healthy,
  probation, `make_permanent`. Failure -> stop it, unmark, boot the permanent version again.
Each step records `pending` in the release record first, so a restarted agent can `recover`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from erel_sync.adapters.releases import files as release_files
from erel_sync.adapters.releases import nodeproc
from erel_sync.adapters.releases.archive import ArchiveLimits
from erel_sync.adapters.releases.artifacts import ArtifactSettings, ArtifactStore
from erel_sync.adapters.releases.driversettings import DriverSettings
from erel_sync.adapters.releases.erlcall import ErlCall, NodeRef, NodeRpc, ensure_epmd
from erel_sync.adapters.releases.meta import ReleaseMeta, home_dir, load_meta, now, save_meta
from erel_sync.adapters.releases.nodeops import NodeOps
from erel_sync.adapters.releases.rendering import Rendering, fqdn, rendering
from erel_sync.adapters.releases.upgrader import Upgrader, UpgradeResult
from erel_sync.adapters.store import fsync_dir
from erel_sync.core import facts, reasons
from erel_sync.core.observed import ObservedRelease, StepResult
from erel_sync.core.rpccodec import RpcStatus, encode_config_payload
from erel_sync.core.upgrade import (
    RecoveryStep,
    decide_recovery,
    node_name,
)
from erel_sync.model.names import NAME_RE
from erel_sync.model.secrets import has_secrets
from erel_sync.model.specs import HealthSpec, ReleaseConfig, ReleaseSpec

__all__ = ["DriverSettings", "ReleaseDriver"]  # DriverSettings is imported from here


class ReleaseDriver:
    def __init__(self, settings: DriverSettings, *, rpc: NodeRpc | None = None) -> None:
        self.settings = settings
        self.rpc: NodeRpc = rpc or ErlCall(settings.erl_call)
        self.ops = NodeOps(
            self.rpc, rpc_timeout=settings.rpc_timeout, long_timeout=settings.long_timeout
        )
        self.artifacts = ArtifactStore(
            ArtifactSettings(cache_dir=settings.cache_dir, max_bytes=settings.max_artifact_bytes)
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._nodes: dict[str, str] = {}  # release -> its booted node's name

    # ------------------------------------------------------------------------- identity

    def root(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise reasons.driver_error(reasons.NotManaged, f"bad release name {name!r}")
        return self.settings.releases_dir / name

    def node(self, name: str) -> NodeRef:
        """The node as booted (the record's name: a clustered one's is long), else as it will be."""
        root = self.root(name)
        if name not in self._nodes:
            meta = load_meta(root)
            self._nodes[name] = meta.node if meta is not None else self._private_node(name)
        return NodeRef(self._nodes[name], home_dir(root))

    def _private_node(self, name: str) -> str:
        place = str(self.settings.releases_dir.resolve())
        return f"{node_name(name, self.settings.host_id, place)}@{self.settings.node_host}"

    def _rendering(self, spec: ReleaseSpec, config: ReleaseConfig) -> Rendering:
        return rendering(
            release=spec.name, private_node=self._private_node(spec.name),
            cluster_host=self.settings.cluster_host or fqdn(),
            loopback_only=self.settings.loopback_only, config=config,
            distribution=spec.distribution, decrypt=self.settings.decrypt,
        )  # fmt: skip

    def booted(self, meta: ReleaseMeta, as_name: str | None) -> NodeRef:
        """After a boot: the node is named as its rendered vm.args says; the record follows."""
        if as_name is not None and as_name != meta.node:
            meta.node = as_name
            save_meta(self.root(meta.release), meta)
        self._nodes[meta.release] = meta.node
        return self.node(meta.release)

    @contextlib.asynccontextmanager
    async def _step(self, name: str) -> AsyncIterator[None]:
        """One operation at a time per release; a stray OSError becomes a DriverError."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            try:
                yield
            except OSError as exc:
                raise reasons.driver_error(
                    reasons.DiskError, f"{name}: {type(exc).__name__}: {exc}"
                ) from exc

    def meta(self, name: str) -> ReleaseMeta:
        root = self.root(name)
        meta = load_meta(root)
        if meta is None:
            if root.exists():
                raise reasons.driver_error(
                    reasons.NotManaged, f"{root} exists but was not installed by erel-sync"
                )
            raise reasons.driver_error(reasons.NotInstalled, f"{name} is not installed")
        if meta.host_id != self.settings.host_id or meta.release != name:
            raise reasons.driver_error(
                reasons.NotManaged, f"{root} belongs to host {meta.host_id!r}, not this one"
            )
        return meta

    @property
    def _limits(self) -> ArchiveLimits:
        return release_files.archive_limits(
            self.settings.releases_dir,
            self.settings.max_unpacked_bytes,
            self.settings.max_archive_members,
        )

    # -------------------------------------------------------------------------- install

    async def install(
        self, spec: ReleaseSpec, version: str, config: ReleaseConfig | None = None
    ) -> StepResult:
        """Make `version` present in the release root (first install, or beside the installed
        versions) with its config files rendered. Starts nothing and switches nothing."""
        async with self._step(spec.name):
            fresh = not self.root(spec.name).exists()
            await self.install_version(spec, version, config or spec.config)
            # A fresh root has no node yet: nothing to ask (the agent starts it right after).
            observed = (
                self._stopped(spec.name) if fresh else await self.observe(spec.name, health=True)
            )
        return StepResult(spec.name, f"installed {version}", observed)

    async def install_version(self, spec: ReleaseSpec, version: str, config: ReleaseConfig) -> bool:
        """`install` under the caller's lock (also the upgrader's first step). Returns whether
        a node was running (the version was then unpacked through it)."""
        r = self._rendering(spec, config)
        vspec = spec.version(version)
        if vspec is None:
            raise reasons.driver_error(
                reasons.VersionUnknown, f"{spec.name} has no version {version}"
            )
        root = self.root(spec.name)
        node = self.node(spec.name)
        meta = self.meta(spec.name) if root.exists() else None
        tarball = await self.artifacts.fetch(vspec.artifact)
        await asyncio.to_thread(
            release_files.check_tarball, tarball, spec.name, version, limits=self._limits
        )
        if meta is None:
            meta = ReleaseMeta(release=spec.name, host_id=self.settings.host_id, node=r.node)
            self._nodes[spec.name] = r.node
            self._remember(meta, spec, version, vspec.artifact.sha256)
            await asyncio.to_thread(
                release_files.install_fresh, tarball, root, meta, version, r.config,
                limits=self._limits, render=r.kwargs(),
            )  # fmt: skip
            return False
        running = (await self.ops.erel_outcome(node, "status", within=2.0)).status is RpcStatus.OK
        if version not in release_files.unpacked_versions(root):
            if running:
                await asyncio.to_thread(
                    release_files.stage_tarball_for_node, tarball, root, version
                )
                await self.ops.erel(
                    node,
                    "unpack",
                    [version],
                    within=self.settings.long_timeout,
                    failure=reasons.InstallFailed,
                )
            else:
                await asyncio.to_thread(
                    release_files.add_version_offline,
                    tarball,
                    root,
                    spec.name,
                    version,
                    limits=self._limits,
                )
        release_files.render_version_config(root, version, r.node, r.config, **r.kwargs())
        self._remember(meta, spec, version, vspec.artifact.sha256)
        save_meta(root, meta)
        return running

    def _remember(self, meta: ReleaseMeta, spec: ReleaseSpec, version: str, sha: str) -> None:
        meta.versions[version] = {"sha256": sha, "installed_at": now()}
        meta.health = asdict(spec.health)
        meta.stop_timeout = spec.stop_timeout

    # ------------------------------------------------------------------------ lifecycle

    async def start(self, name: str) -> StepResult:
        """Boot the permanent version as a daemon; wait until erel answers and health is ok
        within `health.start_timeout`. A running release is left alone."""
        async with self._step(name):
            meta = self.meta(name)
            version = release_files.boot_version(self.root(name))
            booted = await self.start_version(name, meta, version)
            observed = await self.observe(name, health=True)
        did = f"started {version}" if booted else "already running"
        return StepResult(name, did, observed, changed=booted)

    async def start_version(self, name: str, meta: ReleaseMeta, version: str) -> bool:
        """Boot `version` unless a node answers; under the caller's lock. True if it booted."""
        root, node, health = self.root(name), self.node(name), HealthSpec(**meta.health)
        if (await self.ops.erel_outcome(node, "status", within=2.0)).status is RpcStatus.OK:
            return False
        await ensure_epmd(self.settings.epmd)
        if not nodeproc.node_pids(root):
            node = self.booted(meta, await self.ops.boot(root, name, version))
        try:
            await self.ops.wait_ready(node, root, health, expect_version=version)
        except reasons.DriverError:
            await self.ops.kill_now(root)  # a half-started node would block the next attempt
            raise
        self.record_pid(meta)
        return True

    def record_pid(self, meta: ReleaseMeta) -> None:
        """Remember the VM's pid in the record (checked against /proc before any use)."""
        root = self.root(meta.release)
        beam = [p for p in nodeproc.node_pids(root) if nodeproc.is_vm(p)]
        meta.os_pid = beam[0] if beam else None
        save_meta(root, meta)

    async def stop(self, name: str) -> StepResult:
        """Graceful `init:stop()`, forced kill after the release's stop_timeout."""
        async with self._step(name):
            meta = self.meta(name)
            ran = await self.ops.halt(self.node(name), self.root(name), meta.stop_timeout)
            observed = self._stopped(name)  # `halt` returns once no process of the root is left
        return StepResult(name, "stopped" if ran else "was not running", observed, changed=ran)

    async def restart(self, name: str) -> StepResult:
        async with self._step(name):
            meta = self.meta(name)
            await self.ops.halt(self.node(name), self.root(name), meta.stop_timeout)
            version = release_files.boot_version(self.root(name))
            await self.start_version(name, meta, version)
            observed = await self.observe(name, health=True)
        return StepResult(name, f"restarted {version}", observed)

    async def delete(self, name: str) -> StepResult:
        """Stop the node and remove the release root: only a root this host's driver installed."""
        async with self._step(name):
            meta = self.meta(name)
            root, node = self.root(name), self.node(name)
            await self.ops.halt(node, root, meta.stop_timeout)
            await asyncio.to_thread(shutil.rmtree, root)
            fsync_dir(root.parent)
            self._nodes.pop(name, None)
            self.ops.forget(node)
        self._locks.pop(name, None)
        return StepResult(name, "deleted", facts.unmanaged(name, exists=False))

    async def reconfigure(self, spec: ReleaseSpec, config: ReleaseConfig | None = None) -> bool:
        """Render the running version's config; apply its env live (`erel_rpc:apply_config`,
        not with secrets: they would be on erl_call's command line). True: a restart must."""
        config = config or spec.config
        secret, r = has_secrets(config.sys_config), self._rendering(spec, config)
        async with self._step(spec.name):
            self.meta(spec.name)  # ours, or NotManaged
            root, node = self.root(spec.name), self.node(spec.name)
            version = release_files.boot_version(root)
            outcome = await self.ops.erel_outcome(node, "status", within=2.0)
            status = facts.parse_status(outcome)
            if status is not None:
                version = status.get("current") or version
            vm_changed = release_files.render_version_config(
                root, version, r.node, r.config, **r.kwargs()
            )
            if outcome.status is RpcStatus.OK and not secret:
                await self.ops.erel(
                    node, "apply_config", [encode_config_payload(r.config.sys_config)]
                )
            # A new node name (private <-> clustered) or cookie is in vm.args or the staged
            # cookie: both need a boot, which `booted` records.
            return vm_changed or secret

    async def set_peers(self, name: str, nodes: list[str]) -> Any:
        return await self.ops.set_peers(self.node(name), nodes)

    # ------------------------------------------------------------------------ observing

    async def observe(self, name: str, *, health: bool = False) -> ObservedRelease:
        """One erl_call (`erel_rpc:observe` with health, `status` without; see
        `NodeOps.probe`), parsed by `core.facts`; a /proc look only when the node does not
        answer. Takes no lock: steps call it to report where they ended."""
        root = self.root(name)
        meta = load_meta(root)
        if meta is None or meta.host_id != self.settings.host_id:
            return facts.unmanaged(name, exists=root.exists())
        node = self.node(name)
        asked = HealthSpec(**meta.health) if health else None
        answer = await self.ops.probe(node, asked, within=self.settings.status_timeout)
        answered = answer.status is not None
        return facts.observed_release(
            name,
            node=node.name,
            pending=meta.pending,
            answer=answer,
            health_asked=health,
            alive=not answered and nodeproc.root_alive(root, meta.os_pid),
            permanent=None if answered else release_files.safe_boot_version(root),
        )

    def _stopped(self, name: str) -> ObservedRelease:
        """The observation of a release no process of which runs (checked by the caller)."""
        root = self.root(name)
        meta = self.meta(name)
        return facts.stopped(
            name,
            node=self.node(name).name,
            pending=meta.pending,
            permanent=release_files.safe_boot_version(root),
        )

    async def observe_all(self, *, health: bool = False) -> dict[str, ObservedRelease]:
        """Every release this host's driver installed, probed in parallel."""
        names = sorted(
            p.name
            for p in release_files.subdirs(self.settings.releases_dir)
            if NAME_RE.match(p.name)
            and (m := load_meta(p)) is not None
            and m.host_id == self.settings.host_id
        )
        results = await asyncio.gather(*(self.observe(n, health=health) for n in names))
        return dict(zip(names, results, strict=True))

    # ------------------------------------------------------------------------- upgrades

    async def upgrade(
        self, spec: ReleaseSpec, to_version: str, config: ReleaseConfig | None = None
    ) -> UpgradeResult:
        """Move to `to_version` (see the module docstring); ends with an observation."""
        async with self._step(spec.name):
            return await Upgrader(self).upgrade(spec, to_version, config or spec.config)

    async def recover(self, name: str) -> RecoveryStep:
        """Finish or undo a step a previous agent left `pending` (it died mid-way)."""
        async with self._step(name):
            meta = self.meta(name)
            obs = await self.observe(name)
            step = decide_recovery(
                meta.pending, running=obs.running, current=obs.current, permanent=obs.permanent
            )
            await Upgrader(self).recover(name, meta, step)
            return step
