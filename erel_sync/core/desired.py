"""What git asks one host to run: the per-host desired release, resolved from its group.

Pure. A group names releases by reference (name, version, config overrides); `host_releases`
resolves each reference against the snapshot's `Release` documents into one `HostReleaseSpec`
(version, merged config, upgrade and health policy), the *desired* side of reconciling. The
agent's reconciler asks it every tick, the planner (`core.reconcile`) and the status report
(`core.status`) compare it with what was observed, and the review diff (`core.revdiff`,
`erel-sync plan`) compares two revisions of it. It lives apart from all of them because each
only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from erel_sync.model.specs import (
    DesiredState,
    DistributionSpec,
    GroupSpec,
    HealthSpec,
    ReleaseConfig,
    ReleaseSpec,
    ReleaseVersionSpec,
    UpgradeMode,
)


@dataclass(frozen=True)
class HostReleaseSpec:
    """What a host in a group is asked to run for one release."""

    version: ReleaseVersionSpec
    config: ReleaseConfig  # the release's config with the group's overrides merged in
    upgrade: UpgradeMode
    health: HealthSpec
    stop_timeout: float
    spec: ReleaseSpec  # the whole Release document (artifacts of every version, for the driver)
    # the group's own, else the Release's
    distribution: DistributionSpec = field(default_factory=DistributionSpec)

    @property
    def effective(self) -> ReleaseSpec:
        """The Release as this host runs it: with the group's distribution (the driver's input)."""
        if self.distribution == self.spec.distribution:
            return self.spec
        return replace(self.spec, distribution=self.distribution)


def host_releases(state: DesiredState, group: GroupSpec) -> dict[str, HostReleaseSpec]:
    """The releases a host of `group` runs, by name."""
    out: dict[str, HostReleaseSpec] = {}
    for ref in group.releases:
        rel = state.releases[ref.name]
        version = rel.version(ref.version)
        assert version is not None  # guaranteed by semantic validation
        out[ref.name] = HostReleaseSpec(
            version,
            rel.config.merged(ref.config),
            rel.upgrade,
            rel.health,
            rel.stop_timeout,
            rel,
            ref.distribution_over(rel),
        )
    return out


def disturbing(state: DesiredState, group: str) -> dict[str, tuple[object, ...]]:
    """What of `group`'s desired releases, when it changes, disturbs its hosts (an upgrade or
    downgrade, a config or vm_args change, a delete, a new distribution): the rollout
    controller compares it between two snapshots. Other documents, other versions listed,
    health and upgrade policy are left out: changing them alone disturbs no host."""
    spec = state.groups.get(group)
    if spec is None:
        return {}
    return {
        name: (r.version.version, r.config, r.distribution)
        for name, r in host_releases(state, spec).items()
    }
