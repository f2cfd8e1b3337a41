"""What the release driver saw of one release, and what a driver step did: the input of the
agent's planner and status report.

Pure data. `adapters.releases.driver.ReleaseDriver` builds them (the facts themselves are parsed
from erel's answers by `core.facts`); the agent's planner (`core.reconcile.plan`), its status
report (`core.status`) and the CLI read them, which is why they live in `core` rather than next
to the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from erel_sync.core import reasons


@dataclass(frozen=True)
class ObservedRelease:
    name: str
    installed: bool
    running: bool = False
    reachable: bool = False
    current: str | None = None  # the version the node runs
    permanent: str | None = None  # the version a boot starts
    versions: tuple[tuple[str, str], ...] = ()  # (version, release_handler status)
    healthy: bool | None = None  # None: not probed
    reason: str = reasons.NotInstalled
    message: str = ""
    node: str | None = None
    pending: Mapping[str, Any] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # uptime_ms, memory_bytes, ...

    @property
    def managed(self) -> bool:
        """Installed by this host's agent: only such a release may be changed or deleted."""
        return self.installed and self.reason != reasons.NotManaged

    @property
    def version(self) -> str | None:
        """The version that runs, else the one a boot would start: what planning compares."""
        return self.current or self.permanent

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["versions"] = [{"version": v, "status": s} for v, s in self.versions]
        return doc


@dataclass(frozen=True)
class StepResult:
    """One driver step (install, start, stop, restart, upgrade, delete): what it did, and the
    release as the step left it, so the caller need not observe it again."""

    name: str
    did: str  # short text for logs and the CLI: "started 0.1.0", "already running", ...
    observed: ObservedRelease
    changed: bool = True  # False when the release already was as asked
