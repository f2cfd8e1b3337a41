"""Files of a release root: first install, versions added side by side, rendered config files,
and the release_handler's `RELEASES` / `start_erl.data`.

Called by `adapters.releases.driver` (and `adapters.releases.nodeops` before every boot). Lives in
`adapters` because it writes the disk; what to write comes from pure code (`core.nodeconfig`,
`core.upgrade`). Every tarball is inspected whole before any byte of it is written
(`adapters.releases.archive`).

The node runs with exactly the `releases/<vsn>/vm.args` and `sys.config` rendered here: what a
tarball ships in their place (a root-level `vm.args`, relx templates `vm.args.src` /
`sys.config.src`, `*.orig` copies) is removed at every render and every boot
(`remove_displaced_config`); their content is not used (the Release config is the source).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from erel_sync.adapters.releases.archive import (
    ArchiveLimits,
    extract_tarball,
    inspect_tarball,
    staging_dir,
)
from erel_sync.adapters.releases.meta import (
    PRIVATE_DIR,
    ReleaseMeta,
    create_private_dirs,
    save_meta,
    stage_cookie,
    write_atomic,
)
from erel_sync.adapters.store import fsync_dir
from erel_sync.core import reasons
from erel_sync.core.nodeconfig import RenderError, displaced_config_files, render_config_files
from erel_sync.core.upgrade import (
    ReleasesEntry,
    clear_tmp_current,
    mark_tmp_current,
    parse_releases,
    parse_start_erl_data,
    releases_entry_from_rel,
    render_releases,
)
from erel_sync.model.specs import ReleaseConfig


def archive_limits(releases_dir: Path, max_unpacked_bytes: int, max_members: int) -> ArchiveLimits:
    """What a release tarball may hold: nothing inside the agent's private directory of a root
    (node identity: home, cookie, pipes, the record), and no more than the limit or the free
    space of the releases directory."""
    return ArchiveLimits(
        max_unpacked_bytes=max_unpacked_bytes,
        max_members=max_members,
        reserved=frozenset({PRIVATE_DIR}),
        free_space_of=releases_dir,
    )


def check_tarball(tarball: Path, release: str, version: str, *, limits: ArchiveLimits) -> None:
    """Refuse an unsafe tarball, or one that does not hold `release` `version`."""
    names = set(inspect_tarball(tarball, limits))
    wanted = f"releases/{version}/{release}.rel"
    if wanted not in names:
        raise reasons.driver_error(
            reasons.InstallFailed,
            f"the artifact does not hold release {release} {version} (no {wanted})",
        )


def remove_displaced_config(root: Path, version: str) -> list[str]:
    """Remove what relx's start script would read instead of, or render over, the agent's
    config files of `version` (`core.nodeconfig.displaced_config_files`); returns what was there.
    Runs after every unpack (through `render_version_config`) and before every boot, so a root
    unpacked by an older agent or by release_handler inside the node is covered too."""
    try:
        names = displaced_config_files(version)
    except RenderError as exc:
        raise reasons.driver_error(reasons.InstallFailed, str(exc)) from exc
    removed: list[str] = []
    for name in names:
        path = root / name
        if not os.path.lexists(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(name)
    for parent in {(root / name).parent for name in removed}:
        fsync_dir(parent)
    return removed


COOKIE_RE = re.compile(r"[!-~]{20,255}")


def render_version_config(
    root: Path,
    version: str,
    node: str,
    config: ReleaseConfig,
    *,
    loopback_only: bool,
    ports: tuple[int, int] | None = None,
    cookie: str | None = None,
) -> bool:
    """Write `releases/<vsn>/vm.args` and `sys.config`, after removing what would displace
    them, and a clustered release's shared `cookie` for the next boot; True when vm.args or
    the cookie changed (a running node only picks those up on its next boot)."""
    try:
        files = render_config_files(node, config, loopback_only=loopback_only, ports=ports)
    except RenderError as exc:
        raise reasons.driver_error(reasons.InstallFailed, f"config: {exc}") from exc
    if cookie is not None and not COOKIE_RE.fullmatch(cookie):
        raise reasons.driver_error(
            reasons.InstallFailed, "the cookie must be 20 to 255 printable characters, no spaces"
        )
    target = root / "releases" / version
    if not target.is_dir():
        raise reasons.driver_error(reasons.InstallFailed, f"{target} does not exist")
    remove_displaced_config(root, version)
    vm_args = target / "vm.args"
    try:
        before = vm_args.read_text(encoding="utf-8")
    except OSError:
        before = None
    for name, text in files.items():
        write_atomic(target / name, text.encode("utf-8"), mode=0o600)  # may hold secrets
    new_cookie = cookie is not None and stage_cookie(root, cookie)
    return before != files["vm.args"] or new_cookie


def install_fresh(
    tarball: Path,
    root: Path,
    meta: ReleaseMeta,
    version: str,
    config: ReleaseConfig,
    *,
    limits: ArchiveLimits,
    render: dict[str, Any],
) -> None:
    """A first install: unpack into a staging dir beside `root`, render, record, then rename
    into place, so `root` appears complete or not at all."""
    for stale in root.parent.glob(f".{root.name}.tmp-*"):  # an install cut short by a crash
        shutil.rmtree(stale, ignore_errors=True)
    with staging_dir(root.parent, root.name) as stage:
        extract_tarball(tarball, stage, limits)
        try:
            _, boot_vsn = parse_start_erl_data(
                (stage / "releases" / "start_erl.data").read_text(encoding="utf-8")
            )
        except (OSError, ValueError) as exc:
            raise reasons.driver_error(
                reasons.InstallFailed, f"not a relx release tarball: {exc}"
            ) from exc
        if boot_vsn != version:
            raise reasons.driver_error(
                reasons.InstallFailed, f"the tarball boots version {boot_vsn}, not {version}"
            )
        create_private_dirs(stage)
        render_version_config(stage, version, meta.node, config, **render)
        save_meta(stage, meta)
        if root.exists():
            raise reasons.driver_error(reasons.NotManaged, f"{root} appeared while installing")
        os.rename(stage, root)
    fsync_dir(root.parent)


def add_version_offline(
    tarball: Path, root: Path, release: str, version: str, *, limits: ArchiveLimits
) -> None:
    """Unpack another version beside the installed ones while no node runs: existing files are
    kept (as release_handler does), and RELEASES learns the version as `unpacked`."""
    extract_tarball(tarball, root, limits, keep_existing=True)
    rel_file = root / "releases" / version / f"{release}.rel"
    try:
        entry = releases_entry_from_rel(rel_file.read_text(encoding="utf-8"), str(root))
    except (OSError, ValueError) as exc:
        raise reasons.driver_error(reasons.InstallFailed, f"{rel_file.name}: {exc}") from exc
    entries = read_releases(root)
    if not any(e.version == version for e in entries):
        write_releases(root, [entry, *entries])


def stage_tarball_for_node(tarball: Path, root: Path, version: str) -> None:
    """Copy the tarball where `erel_rpc:unpack/1` looks for it (`releases/<vsn>.tar.gz`)."""
    target = root / "releases" / f"{version}.tar.gz"
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copyfile(tarball, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_releases(root: Path) -> list[ReleasesEntry]:
    path = root / "releases" / "RELEASES"
    try:
        return parse_releases(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise reasons.driver_error(reasons.InstallFailed, f"releases/RELEASES: {exc}") from exc


def write_releases(root: Path, entries: list[ReleasesEntry]) -> None:
    write_atomic(root / "releases" / "RELEASES", render_releases(entries).encode("utf-8"))


def set_boot_candidate(root: Path, version: str) -> None:
    """Before booting a version that is not permanent: mark it `tmp_current` (core.upgrade)."""
    write_releases(root, mark_tmp_current(read_releases(root), version))


def clear_boot_candidate(root: Path) -> None:
    entries = read_releases(root)
    cleared = clear_tmp_current(entries)
    if cleared != entries:
        write_releases(root, cleared)


def boot_version(root: Path) -> str:
    """The version a boot starts: release_handler's permanent one (`start_erl.data`)."""
    try:
        return parse_start_erl_data(
            (root / "releases" / "start_erl.data").read_text(encoding="utf-8")
        )[1]
    except (OSError, ValueError) as exc:
        raise reasons.driver_error(
            reasons.InstallFailed, f"releases/start_erl.data: {exc}"
        ) from exc


def unpacked_versions(root: Path) -> set[str]:
    try:
        return {e.version for e in read_releases(root)}
    except reasons.DriverError:
        return set()


def subdirs(path: Path) -> list[Path]:
    """The release roots under `path` (hidden names are staging dirs)."""
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except FileNotFoundError:
        return []


def safe_boot_version(root: Path) -> str | None:
    try:
        return boot_version(root)
    except reasons.DriverError:
        return None
