"""Which group a host belongs to: literal host id, then glob, then label selector.

Pure. Used by the agent on every snapshot and by `plan --hosts`. The publisher already refuses a
host id listed literally in two groups; globs and selectors can still overlap at run time, so the
most specific kind of match wins and a tie at that level leaves the host `Ambiguous` (treated like
unassigned: nothing is stopped) rather than picking one by accident.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from erel_sync.model.semantics import is_glob
from erel_sync.model.specs import DesiredState, GroupSpec, LabelOperator, Selector

UNASSIGNED = "Unassigned"
AMBIGUOUS = "Ambiguous"


@dataclass(frozen=True)
class HostIdentity:
    host_id: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class GroupMatch:
    group: str | None
    how: str  # "host", "glob", "selector", UNASSIGNED or AMBIGUOUS
    candidates: tuple[str, ...] = ()

    @property
    def assigned(self) -> bool:
        return self.group is not None


def selector_matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.labels.items()):
        return False
    for req in selector.expressions:
        present = req.key in labels
        value = labels.get(req.key)
        ok = {
            LabelOperator.IN: present and value in req.values,
            LabelOperator.NOT_IN: not present or value not in req.values,
            LabelOperator.EXISTS: present,
            LabelOperator.DOES_NOT_EXIST: not present,
        }[req.operator]
        if not ok:
            return False
    return True


def _how(group: GroupSpec, host: HostIdentity) -> str | None:
    if host.host_id in group.hosts:
        return "host"
    if any(is_glob(p) and fnmatch.fnmatchcase(host.host_id, p) for p in group.hosts):
        return "glob"
    if group.selector is not None and selector_matches(group.selector, host.labels):
        return "selector"
    return None


def match_group(state: DesiredState, host: HostIdentity) -> GroupMatch:
    by_level: dict[str, list[str]] = {"host": [], "glob": [], "selector": []}
    for name in sorted(state.groups):
        how = _how(state.groups[name], host)
        if how is not None:
            by_level[how].append(name)
    for level in ("host", "glob", "selector"):
        names = by_level[level]
        if len(names) == 1:
            return GroupMatch(names[0], level)
        if names:
            return GroupMatch(None, AMBIGUOUS, tuple(names))
    return GroupMatch(None, UNASSIGNED)
