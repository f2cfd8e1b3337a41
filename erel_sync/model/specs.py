"""The desired-state model: frozen specs for Release and Group documents and the whole state.

Pure. Built by `model.documents` from schema-valid documents; `model.canonical` turns a
`DesiredState` back into the canonical snapshot body (normalised documents) and its digest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from erel_sync.model.names import Version

JSON = Any  # a JSON value: None, bool, int, float, str, list, dict


def freeze(value: JSON) -> Any:
    """Deep-freeze a JSON value so specs stay immutable (dict -> mappingproxy, list -> tuple)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> JSON:
    """Inverse of `freeze`: plain dicts and lists for serialisation."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


class UpgradeMode(StrEnum):
    AUTO = "auto"  # hot when the target version has a relup from the running one, else restart
    HOT = "hot"
    RESTART = "restart"


@dataclass(frozen=True)
class Artifact:
    url: str
    sha256: str
    size: int | None = None  # bytes; when given, a download of another size is refused


@dataclass(frozen=True)
class ReleaseVersionSpec:
    version: str
    artifact: Artifact


@dataclass(frozen=True)
class HealthSpec:
    rpc: str = "erel:health/0"  # Module:Function/0 run in the node; `ok` means healthy
    timeout: float = 30.0  # how long a single health call may take
    probation: float = 10.0  # after start or upgrade: health must hold this long
    start_timeout: float = 60.0  # start -> first healthy answer


@dataclass(frozen=True)
class ReleaseConfig:
    """Rendered into `sys.config` and `vm.args`. Frozen JSON; `core.nodeconfig` has the mapping."""

    sys_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    vm_args: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def merged(self, override: ReleaseConfig | None) -> ReleaseConfig:
        """Group-level override on top of the release's config: per application, key by key."""
        if override is None:
            return self
        sys_config = {app: dict(env) for app, env in self.sys_config.items()}
        for app, env in override.sys_config.items():
            sys_config.setdefault(app, {}).update(env)
        return ReleaseConfig(
            sys_config=freeze(sys_config),
            vm_args=MappingProxyType({**self.vm_args, **override.vm_args}),
        )


class DistributionMode(StrEnum):
    PRIVATE = "private"  # one node per host, short name, loopback, a cookie of its own
    CLUSTERED = "clustered"  # the group's nodes form one cluster: long names, a shared cookie


@dataclass(frozen=True)
class DistributionSpec:
    """How a release's nodes are distributed (docs/clustering.md)."""

    mode: DistributionMode = DistributionMode.PRIVATE
    cookie: Mapping[str, Any] | None = None  # a secret ({$secret: ...}): clustered only
    ports: tuple[int, int] | None = None  # inet_dist_listen_min/max

    @property
    def clustered(self) -> bool:
        return self.mode is DistributionMode.CLUSTERED

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mode": self.mode.value}
        if self.cookie is not None:
            doc["cookie"] = thaw(self.cookie)
        if self.ports is not None:
            doc["ports"] = {"min": self.ports[0], "max": self.ports[1]}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DistributionSpec:
        ports = doc.get("ports")
        return cls(
            mode=DistributionMode(doc.get("mode", "private")),
            cookie=freeze(doc["cookie"]) if doc.get("cookie") is not None else None,
            ports=(int(ports["min"]), int(ports["max"])) if ports else None,
        )


@dataclass(frozen=True)
class ReleaseSpec:
    name: str
    versions: tuple[ReleaseVersionSpec, ...]
    upgrade: UpgradeMode = UpgradeMode.AUTO
    health: HealthSpec = HealthSpec()
    config: ReleaseConfig = ReleaseConfig()
    stop_timeout: float = 30.0  # graceful stop, then the node is killed
    distribution: DistributionSpec = DistributionSpec()

    def version(self, version: str) -> ReleaseVersionSpec | None:
        for v in self.versions:
            if v.version == version:
                return v
        return None


class LabelOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: LabelOperator
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selector:
    """Kubernetes-style label selector: every `labels` pair and every expression must hold."""

    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    expressions: tuple[LabelRequirement, ...] = ()


@dataclass(frozen=True)
class GroupRelease:
    name: str
    version: str
    config: ReleaseConfig | None = None  # merged over the Release's own config
    distribution: DistributionSpec | None = None  # replaces the Release's, when given

    def distribution_over(self, release: ReleaseSpec) -> DistributionSpec:
        """How this group runs `release`'s nodes: its own distribution, else the Release's."""
        return self.distribution or release.distribution


@dataclass(frozen=True)
class RolloutSpec:
    """How a group's hosts take a change (`core.rollout` enforces it; docs/configuration.md)."""

    max_unavailable: int | str = 1  # a count, or a percentage such as "25%" (floor, at least 1)
    canary: int | str = 0  # the first N hosts by host id take a change alone ("10%": ceil)
    pause_after_canary: bool = False  # true: the rest waits for `erel-sync rollout promote`
    progress_deadline: float = 600.0  # seconds a granted host may take before it counts failed


@dataclass(frozen=True)
class GroupSpec:
    name: str
    hosts: tuple[str, ...] = ()  # literal host ids and globs
    selector: Selector | None = None
    releases: tuple[GroupRelease, ...] = ()
    rollout: RolloutSpec = RolloutSpec()
    suspend: bool = False  # true: hosts keep what runs, nothing is changed or healed
    allow_empty: bool = False  # an empty release list wipes hosts only when this is true
    recipients: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # age

    def release(self, name: str) -> GroupRelease | None:
        for r in self.releases:
            if r.name == name:
                return r
        return None


@dataclass(frozen=True)
class DesiredState:
    """One revision's whole desired state. Equal content gives an equal digest."""

    releases: Mapping[str, ReleaseSpec]
    groups: Mapping[str, GroupSpec]


def canonical_json(value: JSON) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sort_versions(versions: tuple[ReleaseVersionSpec, ...]) -> tuple[ReleaseVersionSpec, ...]:
    return tuple(sorted(versions, key=lambda v: Version(v.version)))
