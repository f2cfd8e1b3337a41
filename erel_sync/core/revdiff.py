"""What a new revision changes against an old one, per group and per host (`erel-sync plan`).

Pure. Compares the per-host desired releases of each group (`core.desired.host_releases`:
version, artifact, merged config, upgrade and health policy) so a change to a Release shows up
in every group that uses it, and, given a host inventory, resolves each host's group before and
after to show hosts that move or become unassigned, and the waves each group's rollout takes
over those hosts (`core.rollout.waves`). Rendering lives in `core.plan_render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from erel_sync.core.desired import HostReleaseSpec, host_releases
from erel_sync.core.matching import GroupMatch, HostIdentity, match_group
from erel_sync.core.rollout import resolve_count, waves
from erel_sync.model.names import compare_versions, format_duration
from erel_sync.model.secrets import has_secrets
from erel_sync.model.specs import DesiredState, ReleaseConfig, RolloutSpec, thaw


class ChangeKind(StrEnum):
    GROUP_ADDED = "GroupAdded"
    GROUP_REMOVED = "GroupRemoved"
    MEMBERSHIP_CHANGED = "MembershipChanged"
    RELEASE_ADDED = "ReleaseAdded"
    RELEASE_REMOVED = "ReleaseRemoved"
    UPGRADE = "Upgrade"
    DOWNGRADE = "Downgrade"
    ARTIFACT_CHANGED = "ArtifactChanged"
    CONFIG_CHANGED = "ConfigChanged"
    POLICY_CHANGED = "PolicyChanged"
    ROLLOUT_CHANGED = "RolloutChanged"
    SUSPEND_CHANGED = "SuspendChanged"
    ALLOW_EMPTY_CHANGED = "AllowEmptyChanged"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    release: str | None = None
    before: str | None = None
    after: str | None = None
    detail: str = ""

    def describe(self) -> str:
        k = self.kind
        r = self.release or ""
        if k is ChangeKind.RELEASE_ADDED:
            return f"+ {r} {self.after}"
        if k is ChangeKind.RELEASE_REMOVED:
            return f"- {r} {self.before} (deleted)"
        if k in (ChangeKind.UPGRADE, ChangeKind.DOWNGRADE):
            return f"~ {r} {self.before} -> {self.after} ({k.value.lower()}{self.detail})"
        if k in (ChangeKind.GROUP_ADDED, ChangeKind.GROUP_REMOVED):
            return f"{'+' if k is ChangeKind.GROUP_ADDED else '-'} group {self.detail}".rstrip()
        if k is ChangeKind.ROLLOUT_CHANGED:
            return f"~ rollout {self.detail}: {self.before} -> {self.after}"
        subject = f"{r}: " if r else ""
        before_after = (
            f"{self.before} -> {self.after}" if self.before is not None or self.after else ""
        )
        return f"~ {subject}{k.value} {before_after} {self.detail}".rstrip().replace("  ", " ")


def diff_releases(
    before: Mapping[str, HostReleaseSpec], after: Mapping[str, HostReleaseSpec]
) -> list[Change]:
    changes: list[Change] = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        if b is None and a is not None:
            changes.append(Change(ChangeKind.RELEASE_ADDED, name, None, a.version.version))
        elif a is None and b is not None:
            changes.append(Change(ChangeKind.RELEASE_REMOVED, name, b.version.version, None))
        elif a is not None and b is not None:
            changes.extend(_diff_one(name, b, a))
    return changes


def _diff_one(name: str, b: HostReleaseSpec, a: HostReleaseSpec) -> list[Change]:
    out: list[Change] = []
    bv, av = b.version.version, a.version.version
    cmp = compare_versions(av, bv)
    if bv != av:
        kind = ChangeKind.UPGRADE if cmp >= 0 else ChangeKind.DOWNGRADE
        out.append(Change(kind, name, bv, av, f", {a.upgrade.value}"))
    elif b.version.artifact != a.version.artifact:
        out.append(Change(ChangeKind.ARTIFACT_CHANGED, name, bv, av, "(reinstall)"))
    if thaw(b.config.sys_config) != thaw(a.config.sys_config) or dict(b.config.vm_args) != dict(
        a.config.vm_args
    ):
        keys = _changed_config_keys(b.config, a.config)
        if dict(b.config.vm_args) != dict(a.config.vm_args) or has_secrets(a.config.sys_config):
            # Emulator flags are read at boot: the node runs the old ones until it restarts;
            # secrets are never applied live (they would ride on erl_call's command line).
            keys += ": needs a restart"
        out.append(Change(ChangeKind.CONFIG_CHANGED, name, None, None, keys))
    policy = []
    if b.upgrade != a.upgrade:
        policy.append(f"upgrade {b.upgrade.value} -> {a.upgrade.value}")
    if b.health != a.health:
        policy.append("health")
    if b.stop_timeout != a.stop_timeout:
        policy.append("stop_timeout")
    if policy:
        out.append(Change(ChangeKind.POLICY_CHANGED, name, None, None, ", ".join(policy)))
    return out


def _changed_config_keys(b: ReleaseConfig, a: ReleaseConfig) -> str:
    keys: list[str] = []
    bs, as_ = thaw(b.sys_config), thaw(a.sys_config)
    for app in sorted(set(bs) | set(as_)):
        be, ae = bs.get(app, {}), as_.get(app, {})
        for k in sorted(set(be) | set(ae)):
            if be.get(k) != ae.get(k):
                secret = has_secrets(be.get(k)) or has_secrets(ae.get(k))
                keys.append(f"{app}.{k} secret changed" if secret else f"{app}.{k}")
    bv, av = dict(b.vm_args), dict(a.vm_args)
    keys += [f"vm_args {k}" for k in sorted(set(bv) | set(av)) if bv.get(k) != av.get(k)]
    return "(" + ", ".join(keys) + ")"


def diff_group(base: DesiredState | None, head: DesiredState, name: str) -> list[Change]:
    bg = base.groups.get(name) if base else None
    hg = head.groups.get(name)
    if hg is None:
        assert bg is not None and base is not None
        return [Change(ChangeKind.GROUP_REMOVED, detail=name)]
    changes: list[Change] = []
    if bg is None or base is None:
        changes.append(Change(ChangeKind.GROUP_ADDED, detail=name))
        changes += diff_releases({}, host_releases(head, hg))
        return changes
    if bg.hosts != hg.hosts or bg.selector != hg.selector:
        changes.append(Change(ChangeKind.MEMBERSHIP_CHANGED, detail="(hosts or selector)"))
    changes += diff_releases(host_releases(base, bg), host_releases(head, hg))
    for field_name, before, after in _rollout_fields(bg.rollout, hg.rollout):
        if before != after:
            changes.append(Change(ChangeKind.ROLLOUT_CHANGED, None, before, after, field_name))
    if bg.suspend != hg.suspend:
        what = "suspended: hosts are left as they are" if hg.suspend else "resumed"
        changes.append(
            Change(ChangeKind.SUSPEND_CHANGED, None, str(bg.suspend), str(hg.suspend), what)
        )
    if bg.allow_empty != hg.allow_empty:
        changes.append(
            Change(ChangeKind.ALLOW_EMPTY_CHANGED, None, str(bg.allow_empty), str(hg.allow_empty))
        )
    return changes


def _rollout_fields(b: RolloutSpec, a: RolloutSpec) -> list[tuple[str, str, str]]:
    def text(v: object) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    return [
        ("max_unavailable", text(b.max_unavailable), text(a.max_unavailable)),
        ("canary", text(b.canary), text(a.canary)),
        ("pause_after_canary", text(b.pause_after_canary), text(a.pause_after_canary)),
        (
            "progress_deadline",
            format_duration(b.progress_deadline),
            format_duration(a.progress_deadline),
        ),
    ]


@dataclass(frozen=True)
class GroupWaves:
    """The order a group's rollout takes over the inventory's hosts (when all have work)."""

    canaries: tuple[str, ...]
    batches: tuple[tuple[str, ...], ...]  # after the canaries, max_unavailable at a time
    max_unavailable: int
    pause_after_canary: bool


def group_waves(hosts: Sequence[str], policy: RolloutSpec) -> GroupWaves:
    all_waves = waves(hosts, policy)
    has_canaries = resolve_count(policy.canary, len(set(hosts)), round_up=True) > 0
    canaries = all_waves[0] if has_canaries and all_waves else ()
    return GroupWaves(
        canaries,
        tuple(all_waves[1:] if has_canaries else all_waves),
        resolve_count(policy.max_unavailable, len(set(hosts)), round_up=False),
        policy.pause_after_canary and bool(canaries),
    )


@dataclass(frozen=True)
class HostPlan:
    host_id: str
    before: GroupMatch
    after: GroupMatch
    changes: tuple[Change, ...]
    suspended: bool = False  # the group after is suspended: nothing will actually change

    @property
    def moved(self) -> bool:
        return self.before.group != self.after.group


@dataclass(frozen=True)
class RevisionPlan:
    base_revision: str
    head_revision: str
    groups: Mapping[str, tuple[Change, ...]]
    hosts: tuple[HostPlan, ...] = field(default=())
    inventory_given: bool = False
    # Per group of head with members in the inventory (suspended groups roll nothing out).
    waves: Mapping[str, GroupWaves] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(self.groups.values()) or any(h.changes or h.moved for h in self.hosts)


def plan_revisions(
    base: DesiredState | None,
    head: DesiredState,
    hosts: Sequence[HostIdentity] | None = None,
    *,
    base_revision: str = "",
    head_revision: str = "",
) -> RevisionPlan:
    names = sorted(set(head.groups) | set(base.groups if base else ()))
    groups = {n: tuple(diff_group(base, head, n)) for n in names}
    host_plans: list[HostPlan] = []
    for host in sorted(hosts or (), key=lambda h: h.host_id):
        before = match_group(base, host) if base else GroupMatch(None, "Unassigned")
        after = match_group(head, host)
        b_rel = host_releases(base, base.groups[before.group]) if base and before.group else {}
        a_rel = host_releases(head, head.groups[after.group]) if after.group else {}
        # A host that loses its group keeps what runs: nothing is deleted while unassigned.
        changes = diff_releases(b_rel, a_rel) if after.group else []
        suspended = bool(after.group and head.groups[after.group].suspend)
        host_plans.append(HostPlan(host.host_id, before, after, tuple(changes), suspended))
    members: dict[str, list[str]] = {}
    for h in host_plans:
        if h.after.group is not None and not h.suspended:
            members.setdefault(h.after.group, []).append(h.host_id)
    return RevisionPlan(
        base_revision,
        head_revision,
        groups,
        tuple(host_plans),
        inventory_given=hosts is not None,
        waves={g: group_waves(m, head.groups[g].rollout) for g, m in sorted(members.items())},
    )
