"""Decisions of the release driver that need no I/O: node names, the upgrade path, the probation
schedule, recovery of an unfinished step, and the release_handler's `RELEASES` bookkeeping.

Pure. `adapters.releases.driver` calls these between its observations and its actions, so the
choices are tested table-driven without a node.

RELEASES: the restart path boots a version release_handler only knows as `unpacked`. OTP's own
emulator-restart upgrade marks such a version `tmp_current` before rebooting; at boot the
release_handler then holds it as `current`, so `make_permanent` works after the probation. The
driver does the same (`mark_tmp_current`), and adds versions unpacked while no node ran with
`releases_entry_from_rel`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from erel_sync.core import reasons
from erel_sync.core.erlterm import Atom, parse_term, render_term
from erel_sync.model.specs import UpgradeMode

NODE_RELEASE_CHARS = 32
NODE_HOST_CHARS = 16
NODE_HASH_CHARS = 16  # 64 bits of sha256 over the exact (release, host id) pair


def node_name(release: str, host_id: str, place: str = "") -> str:
    """A short node name (the part before `@`) unique to (release, host id, place).

    Readable prefix (release, host id with dots as dashes, both cut) plus a hash of the exact
    triple: cutting or mapping characters can make two prefixes equal, the hash tells them
    apart. `place` is the releases directory: two agents that share a machine (tests, `dev`, a
    second run next to a stale one) never fight over one epmd name. At most 66 characters,
    only `[A-Za-z0-9_-]`.
    """
    if not release or not host_id:
        raise ValueError("release and host id must be non-empty")
    key = f"{release}\0{host_id}\0{place}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:NODE_HASH_CHARS]
    rel = re.sub(r"[^A-Za-z0-9_-]", "_", release)[:NODE_RELEASE_CHARS]
    host = re.sub(r"[^A-Za-z0-9_-]", "-", host_id)[:NODE_HOST_CHARS]
    return f"{rel}_{host}_{digest}"


# ------------------------------------------------------------------------------ upgrade path


class UpgradePath(StrEnum):
    NONE = "none"  # already there
    HOT = "hot"  # release_handler install with the relup, probation, make_permanent
    RESTART = "restart"  # side by side, stop old, boot new, probation, make_permanent


@dataclass(frozen=True)
class UpgradeDecision:
    path: UpgradePath
    why: str


def choose_upgrade_path(
    mode: UpgradeMode,
    *,
    running: bool,
    current: str | None,
    target: str,
    relup_from: Sequence[str] | None,
) -> UpgradeDecision:
    """Which way to go from the running version to `target`.

    `relup_from` is what `erel_rpc:relup_from(target)` answered (None when unknown, e.g. no
    node runs). `auto` goes hot only when the relup names the running version. `hot` without
    such a relup is refused (the release author asked for no restart), as is `hot` with no
    node running. Raises `StalledError(UpgradeImpossible)`.
    """
    if running and current == target:
        return UpgradeDecision(UpgradePath.NONE, f"{target} is already running")
    has_relup = running and current is not None and current in (relup_from or ())
    if mode is UpgradeMode.RESTART:
        return UpgradeDecision(UpgradePath.RESTART, "upgrade mode is restart")
    if has_relup:
        return UpgradeDecision(UpgradePath.HOT, f"{target} has a relup from {current}")
    if mode is UpgradeMode.HOT:
        why = (
            "no node is running to hot-upgrade"
            if not running
            else f"{target} has no relup from {current}"
        )
        raise reasons.driver_error(reasons.UpgradeImpossible, f"upgrade mode is hot but {why}")
    if not running:
        return UpgradeDecision(UpgradePath.RESTART, "no node is running: boot the new version")
    return UpgradeDecision(UpgradePath.RESTART, f"{target} has no relup from {current}")


def probe_interval(probation: float) -> float:
    """Seconds between health probes during a probation: about ten probes, 0.1 s to 1 s apart."""
    return min(1.0, max(0.1, probation / 10.0))


# --------------------------------------------------------------------------------- recovery


class RecoveryStep(StrEnum):
    CLEAR = "clear"  # nothing half-done: forget the pending intent
    PROBE_AND_COMMIT = "probe_and_commit"  # the target runs, not permanent: probation, then commit
    START_PERMANENT = "start_permanent"  # no node: boot what release_handler says is permanent


def decide_recovery(
    pending: dict[str, Any] | None,
    *,
    running: bool,
    current: str | None,
    permanent: str | None,
) -> RecoveryStep:
    """What to do with an intent a previous agent recorded and did not clear (it died)."""
    if not pending:
        return RecoveryStep.CLEAR
    if not running:
        return RecoveryStep.START_PERMANENT
    target = pending.get("to")
    if current == target and permanent != target:
        return RecoveryStep.PROBE_AND_COMMIT
    return RecoveryStep.CLEAR


# -------------------------------------------------------------------------------- RELEASES

RELEASES_HEADER = "%% coding: utf-8\n"


@dataclass(frozen=True)
class ReleasesEntry:
    """One `{release, Name, Vsn, ErtsVsn, Libs, Status}` of the RELEASES file."""

    name: str
    version: str
    erts: str
    libs: tuple[Any, ...]  # ({App, AppVsn, Dir}, ...) kept as parsed
    status: str

    def term(self) -> tuple[Any, ...]:
        return (
            Atom("release"),
            self.name,
            self.version,
            self.erts,
            list(self.libs),
            Atom(self.status),
        )


def parse_releases(text: str) -> list[ReleasesEntry]:
    term = parse_term(text)
    if not isinstance(term, list):
        raise ValueError("RELEASES is not a list")
    out: list[ReleasesEntry] = []
    for item in term:
        if (
            not isinstance(item, tuple)
            or len(item) != 6
            or item[0] != Atom("release")
            or not all(isinstance(x, str) for x in item[1:4])
            or not isinstance(item[4], list)
            or not isinstance(item[5], Atom)
        ):
            raise ValueError(f"unexpected RELEASES entry {str(item)[:80]}")
        out.append(ReleasesEntry(item[1], item[2], item[3], tuple(item[4]), item[5].name))
    return out


def render_releases(entries: Sequence[ReleasesEntry]) -> str:
    body = ",\n ".join(render_term(e.term()) for e in entries)
    return f"{RELEASES_HEADER}[{body}].\n"


def mark_tmp_current(entries: Sequence[ReleasesEntry], version: str) -> list[ReleasesEntry]:
    """Mark `version` as the one the next boot should hold as current (see module docstring)."""
    if not any(e.version == version for e in entries):
        raise ValueError(f"{version} is not in RELEASES")
    return [
        ReleasesEntry(e.name, e.version, e.erts, e.libs, "tmp_current")
        if e.version == version and e.status != "permanent"
        else e
        for e in entries
    ]


def clear_tmp_current(entries: Sequence[ReleasesEntry]) -> list[ReleasesEntry]:
    return [
        ReleasesEntry(e.name, e.version, e.erts, e.libs, "unpacked")
        if e.status == "tmp_current"
        else e
        for e in entries
    ]


def releases_entry_from_rel(rel_text: str, root: str) -> ReleasesEntry:
    """The RELEASES entry for a version unpacked while no node ran, from its `.rel` file
    (`{release, {Name, Vsn}, {erts, EVsn}, [{App, AppVsn} | {App, AppVsn, Type} ...]}`)."""
    term = parse_term(rel_text)
    try:
        tag, (name, vsn), (erts_tag, erts), apps = term
    except (TypeError, ValueError):
        raise ValueError("not a .rel file") from None
    if tag != Atom("release") or erts_tag != Atom("erts") or not isinstance(apps, list):
        raise ValueError("not a .rel file")
    libs: list[tuple[Atom, str, str]] = []
    for app in apps:
        if not isinstance(app, tuple) or len(app) < 2 or not isinstance(app[0], Atom):
            raise ValueError(f"unexpected application entry {str(app)[:80]}")
        libs.append((app[0], app[1], f"{root}/lib/{app[0].name}-{app[1]}"))
    return ReleasesEntry(name, vsn, erts, tuple(libs), "unpacked")


def parse_start_erl_data(text: str) -> tuple[str, str]:
    """`releases/start_erl.data` ("ERTS_VSN REL_VSN") -> (erts version, release version)."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError("start_erl.data is not 'ERTS_VSN REL_VSN'")
    return parts[0], parts[1]
