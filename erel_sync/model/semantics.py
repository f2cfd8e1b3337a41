"""Cross-document checks of a revision: references, uniqueness, selectors, empty groups, the
shape of secrets.

Pure. Runs after every document passed its schema, at the publisher (rejecting the revision) and
again at the agent on the snapshot body (the agent does not trust the wire). `locate` turns a
(kind, name, path) into a file position so problems point at the line to fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from erel_sync.model.problems import Problem, json_path
from erel_sync.model.secrets import find_secrets, is_secret, recipients, secret_problem
from erel_sync.model.specs import DistributionSpec, GroupSpec, LabelOperator, ReleaseSpec

Locate = Callable[[str, str, tuple[str | int, ...]], tuple[str, int, int]]
GLOB_CHARS = re.compile(r"[*?\[]")


def is_glob(pattern: str) -> bool:
    return bool(GLOB_CHARS.search(pattern))


def check_semantics(
    releases: Mapping[str, ReleaseSpec],
    groups: Mapping[str, GroupSpec],
    locate: Locate,
    *,
    broken_releases: frozenset[str] = frozenset(),
) -> list[Problem]:
    """Every semantic problem; `broken_releases` failed their schema and are not re-reported."""
    problems: list[Problem] = []

    def report(kind: str, name: str, path: tuple[str | int, ...], message: str) -> None:
        file, line, col = locate(kind, name, path)
        problems.append(Problem(file, line, col, json_path(path), message))

    for rel in releases.values():
        for at, node in find_secrets(rel.config.sys_config):
            if (problem := secret_problem(node)) is not None:
                report("Release", rel.name, ("spec", "config", "sys_config", *at), problem)
        for path, message in distribution_problems(rel.distribution):
            report("Release", rel.name, ("spec", "distribution", *path), message)
        seen: dict[str, int] = {}
        for i, v in enumerate(rel.versions):
            if v.version in seen:
                report(
                    "Release",
                    rel.name,
                    ("spec", "versions", i, "version"),
                    f"version {v.version!r} is listed twice (also versions[{seen[v.version]}])",
                )
            seen.setdefault(v.version, i)

    literal_owner: dict[str, str] = {}
    for group in groups.values():
        _check_group(group, releases, broken_releases, report)
        for i, host in enumerate(group.hosts):
            if is_glob(host):
                continue
            owner = literal_owner.setdefault(host, group.name)
            if owner != group.name:
                report(
                    "Group",
                    group.name,
                    ("spec", "hosts", i),
                    f"host {host!r} is listed in groups {owner!r} and {group.name!r}; "
                    "a host belongs to one group",
                )
    return problems


def distribution_problems(d: DistributionSpec) -> list[tuple[tuple[str | int, ...], str]]:
    """A clustered release needs its cookie as a well-formed secret; a private one takes
    neither cookie nor ports (its node is reachable by the agent alone)."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    if d.clustered and d.cookie is None:
        out.append(((), "a clustered release needs `cookie`, a secret shared by its nodes"))
    if d.cookie is not None:
        if not d.clustered:
            out.append((("cookie",), "only a clustered release takes a cookie"))
        elif not is_secret(d.cookie):
            out.append(
                (("cookie",), "the cookie must be a secret ({$secret: ...}, docs/secrets.md)")
            )
        elif (problem := secret_problem(d.cookie)) is not None:
            out.append((("cookie",), problem))
    if d.ports is not None:
        if not d.clustered:
            out.append((("ports",), "only a clustered release takes a port range"))
        elif d.ports[0] > d.ports[1]:
            out.append((("ports", "min"), f"min {d.ports[0]} is above max {d.ports[1]}"))
    return out


def _check_group(
    group: GroupSpec,
    releases: Mapping[str, ReleaseSpec],
    broken: frozenset[str],
    report: Callable[[str, str, tuple[str | int, ...], str], None],
) -> None:
    g = group.name
    if not group.releases and not group.allow_empty:
        report(
            "Group",
            g,
            ("spec", "releases"),
            "an empty release list would delete every release on these hosts; "
            "set `allow_empty: true` if that is intended",
        )
    names: dict[str, int] = {}
    for i, ref in enumerate(group.releases):
        if ref.name in names:
            report(
                "Group",
                g,
                ("spec", "releases", i, "name"),
                f"release {ref.name!r} is listed twice (also releases[{names[ref.name]}])",
            )
        names.setdefault(ref.name, i)
        if ref.distribution is not None:
            for path, message in distribution_problems(ref.distribution):
                report("Group", g, ("spec", "releases", i, "distribution", *path), message)
        if ref.config is not None:
            for at, node in find_secrets(ref.config.sys_config):
                if (problem := secret_problem(node)) is not None:
                    path = ("spec", "releases", i, "config", "sys_config", *at)
                    report("Group", g, path, problem)
        if ref.name in broken:
            continue
        rel = releases.get(ref.name)
        if rel is None:
            known = ", ".join(sorted({*releases, *broken})) or "none"
            report(
                "Group",
                g,
                ("spec", "releases", i, "name"),
                f"no Release named {ref.name!r} in this revision (known: {known})",
            )
        elif rel.version(ref.version) is None:
            have = ", ".join(v.version for v in rel.versions)
            report(
                "Group",
                g,
                ("spec", "releases", i, "version"),
                f"Release {ref.name!r} has no version {ref.version!r} (it lists: {have})",
            )
    for i, host in enumerate(group.hosts):
        if host.count("[") != host.count("]") or "[]" in host:
            report("Group", g, ("spec", "hosts", i), f"malformed glob {host!r}: unbalanced [ ]")
    seen_hosts: set[str] = set()
    for i, host in enumerate(group.hosts):
        if host in seen_hosts:
            report("Group", g, ("spec", "hosts", i), f"host {host!r} is listed twice")
        seen_hosts.add(host)
    if group.selector is not None:
        for i, req in enumerate(group.selector.expressions):
            path = ("spec", "selector", "expressions", i)
            needs_values = req.operator in (LabelOperator.IN, LabelOperator.NOT_IN)
            if needs_values and not req.values:
                report("Group", g, (*path, "operator"), f"{req.operator.value} needs `values`")
            if not needs_values and req.values:
                report("Group", g, (*path, "values"), f"{req.operator.value} takes no `values`")
    mu = group.rollout.max_unavailable
    if isinstance(mu, str) and mu.rstrip("%") == "0":
        report("Group", g, ("spec", "rollout", "max_unavailable"), "0% would never roll out")
    if group.rollout.progress_deadline <= 0:
        report("Group", g, ("spec", "rollout", "progress_deadline"), "0s fails every host at once")


def secret_warnings(
    releases: Mapping[str, ReleaseSpec], groups: Mapping[str, GroupSpec], locate: Locate
) -> list[Problem]:
    """A secret a group uses (in its Release's config or its own override) that is not
    encrypted to every one of the group's `recipients`: those hosts would report
    `SecretUnavailable`. Warnings, not problems: the revision is still valid."""
    out: list[Problem] = []

    def warn(kind: str, name: str, path: tuple[str | int, ...], message: str) -> None:
        file, line, col = locate(kind, name, path)
        out.append(Problem(file, line, col, json_path(path), message))

    for group in sorted(groups.values(), key=lambda g: g.name):
        if not group.recipients:
            continue
        for i, ref in enumerate(group.releases):
            rel = releases.get(ref.name)
            found: list[tuple[str, str, tuple[str | int, ...], Mapping[str, object]]] = []
            if rel is not None:
                found += [
                    ("Release", rel.name, ("spec", "config", "sys_config", *at), node)
                    for at, node in find_secrets(rel.config.sys_config)
                ]
            if ref.config is not None:
                found += [
                    ("Group", group.name, ("spec", "releases", i, "config", "sys_config", *at), n)
                    for at, n in find_secrets(ref.config.sys_config)
                ]
            # The cookie where it is written: the group's own distribution, else the Release's.
            dist = ref.distribution_over(rel) if rel is not None else ref.distribution
            if dist is not None and dist.cookie is not None and is_secret(dist.cookie):
                at: tuple[str | int, ...] = ("distribution", "cookie")
                if ref.distribution is not None:
                    found.append(("Group", group.name, ("spec", "releases", i, *at), dist.cookie))
                else:
                    found.append(("Release", ref.name, ("spec", *at), dist.cookie))
            for kind, name, path, node in found:
                have = set(recipients(node))
                missing = sorted(n for n, r in group.recipients.items() if r not in have)
                if missing:
                    who = f"{', '.join(missing)} of group {group.name!r}"
                    why = "they would report SecretUnavailable (erel-sync secret rekey)"
                    warn(kind, name, path, f"not encrypted to {who}: {why}")
    return out
