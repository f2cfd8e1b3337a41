"""What the release driver saw of one release: the input of the agent's planner.

Pure data. `adapters.releases.driver.ReleaseDriver.observe` builds it (one erel status call, plus a
health call when asked); the agent's pure planner and status summary read it, which is why it
lives in `core` rather than next to the driver.
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

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["versions"] = [{"version": v, "status": s} for v, s in self.versions]
        return doc
