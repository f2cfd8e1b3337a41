"""Validate a whole revision: files -> YAML -> schema -> specs -> semantics -> DesiredState.

Pure: takes file contents (bytes), never reads the disk or git itself (`adapters.git.configsource`
does that). Reports every problem at once. Also rebuilds a DesiredState from a snapshot body for
the agent, through the same schema and semantic checks, after checking that this code is new
enough for the body (`requires`); a refused body's problems read root cause first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from erel_sync import __version__
from erel_sync.model.documents import group_from_document, release_from_document
from erel_sync.model.names import VERSION_RE, Version
from erel_sync.model.notify import NotificationSpec, notification_from_document
from erel_sync.model.problems import ConfigError, Problem, json_path
from erel_sync.model.schema import UNKNOWN_FIELD, check_document, is_unknown_field
from erel_sync.model.semantics import check_semantics, secret_warnings
from erel_sync.model.specs import DesiredState, GroupSpec, ReleaseSpec
from erel_sync.model.yamldocs import ParsedDoc, parse_documents

CONFIG_SUFFIXES = (".yaml", ".yml")
REVISION_KINDS = ("Release", "Group", "Notification")


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the repository root, with `/` separators
    data: bytes


@dataclass(frozen=True)
class LoadResult:
    state: DesiredState | None
    problems: tuple[Problem, ...]
    files: int = 0
    documents: int = 0
    warnings: tuple[Problem, ...] = ()  # valid all the same (docs/secrets.md)
    # Not in the snapshot: only `erel-sync notify` reads them (model.notify).
    notifications: Mapping[str, NotificationSpec] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state is not None and not self.problems

    def require(self) -> DesiredState:
        if self.state is None or self.problems:
            raise ConfigError(list(self.problems))
        return self.state


def is_config_path(path: str) -> bool:
    """YAML files outside hidden folders (`.github/`, `.git/`) and not hidden themselves."""
    parts = path.split("/")
    return path.endswith(CONFIG_SUFFIXES) and not any(p.startswith(".") for p in parts)


DocKey = tuple[str, str]  # (kind, name)
# A document as last checked and what was built from it: the agent's cache between snapshots.
KnownDocs = Mapping[DocKey, tuple[Any, ReleaseSpec | GroupSpec]]


@dataclass
class _Collector:
    known: KnownDocs = field(default_factory=dict)
    built: dict[DocKey, tuple[Any, ReleaseSpec | GroupSpec]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unknown: list[Problem] = field(default_factory=list)  # the subset: fields the schema lacks
    releases: dict[str, ReleaseSpec] = field(default_factory=dict)
    groups: dict[str, GroupSpec] = field(default_factory=dict)
    notifications: dict[str, NotificationSpec] = field(default_factory=dict)
    origin: dict[tuple[str, str], ParsedDoc] = field(default_factory=dict)
    broken: set[tuple[str, str]] = field(default_factory=set)

    def add(self, doc: ParsedDoc) -> None:
        data = doc.data
        if not isinstance(data, dict):
            self._report(doc, (), "a document must be a mapping with apiVersion, kind, metadata")
            return
        kind = data.get("kind")
        if kind == "AgentSettings":
            self._report(doc, ("kind",), "AgentSettings belongs on a host, not in the config repo")
            return
        if kind not in REVISION_KINDS:
            self._report(
                doc,
                ("kind",) if "kind" in data else (),
                f"unknown kind {kind!r}: expected one of {', '.join(REVISION_KINDS)}"
                if "kind" in data
                else "missing required field 'kind'",
            )
            return
        name = (
            data.get("metadata", {}).get("name") if isinstance(data.get("metadata"), dict) else None
        )
        seen = self.known.get((kind, name)) if isinstance(name, str) else None
        # Checking and building are pure functions of the document: one equal to a document
        # that passed before passes again and builds the same spec. Most commits change one
        # or two documents, and this skips the schema check of all the others.
        reuse = seen[1] if seen is not None and seen[0] == data else None
        issues = [] if reuse is not None else check_document(kind, data)
        for issue in issues:
            path, message, at_key = issue
            line, col = doc.where(path, key=at_key)
            self.problems.append(Problem(doc.file, line, col, json_path(path), message))
            if is_unknown_field(issue):
                self.unknown.append(self.problems[-1])
        if not isinstance(name, str):
            return
        key = (kind, name)
        if key in self.origin:
            first = self.origin[key]
            self._report(
                doc,
                ("metadata", "name"),
                f"duplicate {kind} {name!r} (first defined at {first.file}:{first.line})",
            )
            return
        self.origin[key] = doc
        if issues:
            self.broken.add(key)
            return
        if kind == "Notification":
            self.notifications[name] = notification_from_document(data)
        elif kind == "Release":
            release = reuse if isinstance(reuse, ReleaseSpec) else release_from_document(data)
            self.releases[name] = release
            self.built[key] = (data, release)
        else:
            group = reuse if isinstance(reuse, GroupSpec) else group_from_document(data)
            self.groups[name] = group
            self.built[key] = (data, group)

    def _report(self, doc: ParsedDoc, path: tuple[str | int, ...], message: str) -> None:
        line, col = doc.where(path)
        self.problems.append(Problem(doc.file, line, col, json_path(path), message))

    def locate(self, kind: str, name: str, path: tuple[str | int, ...]) -> tuple[str, int, int]:
        doc = self.origin.get((kind, name))
        if doc is None:
            return "<unknown>", 0, 0
        return (doc.file, *doc.where(path))


def validate_sources(
    files: Iterable[SourceFile], pre_problems: Iterable[Problem] = ()
) -> LoadResult:
    """Validate one revision; `pre_problems` come from the source (symlinks, sizes)."""
    c = _Collector(problems=list(pre_problems))
    n_files = n_docs = 0
    for f in sorted(files, key=lambda f: f.path):
        if not is_config_path(f.path):
            continue
        n_files += 1
        docs, problems = parse_documents(f.path, f.data)
        c.problems.extend(problems)
        for d in docs:
            n_docs += 1
            c.add(d)
    broken_releases = frozenset(n for k, n in c.broken if k == "Release")
    c.problems.extend(
        check_semantics(c.releases, c.groups, c.locate, broken_releases=broken_releases)
    )
    for n in c.notifications.values():
        for i, g in enumerate(sorted(n.groups or ())):
            if g not in c.groups:
                file, line, col = c.locate("Notification", n.name, ("spec", "groups", i))
                c.problems.append(
                    Problem(file, line, col, f"$.spec.groups[{i}]", f"no Group {g!r}")
                )
    if c.problems:
        return LoadResult(None, tuple(sorted(set(c.problems))), n_files, n_docs)
    state = DesiredState(MappingProxyType(c.releases), MappingProxyType(c.groups))
    warnings = tuple(secret_warnings(c.releases, c.groups, c.locate))
    return LoadResult(state, (), n_files, n_docs, warnings, MappingProxyType(c.notifications))


class BodyRefused(ConfigError):
    """A snapshot body the re-check refused. `problems` stay sorted by place (ConfigError);
    `ordered` and the message put the root cause first: fields this code does not know, then
    what else the schema refused, then cross-document problems, which may follow from those.

    `needs`: the erel-sync version the body requires, when newer than this code (then nothing
    else was checked); `unknown`: fields this code's schemas do not list (a newer model that did
    not declare them in `requires`)."""

    def __init__(
        self,
        ordered: Sequence[Problem],
        *,
        needs: str | None = None,
        unknown: Sequence[Problem] = (),
    ) -> None:
        super().__init__(list(ordered))
        self.ordered = tuple(ordered)
        self.needs = needs
        self.unknown = tuple(unknown)
        shown = "; ".join(str(p) for p in self.ordered[:3])
        more = f" (and {len(self.ordered) - 3} more)" if len(self.ordered) > 3 else ""
        self.args = (shown + more,)


BODY_SECTIONS = ("releases", "groups")


def state_from_body(
    body: Mapping[str, Any],
    *,
    origin: str = "<snapshot>",
    known: KnownDocs | None = None,
    agent_version: str = __version__,
) -> tuple[DesiredState, KnownDocs]:
    """Rebuild and re-check a DesiredState from a canonical snapshot body (raises BodyRefused).

    `known`: what the previous call returned; documents equal to one in it are reused instead
    of checked and built again. Returns the state and the documents to pass next time.
    Problems name the place by a JSON path from the body's root (`$.releases[0].spec…`)."""
    if not isinstance(body, Mapping) or not all(k in body for k in BODY_SECTIONS):
        raise BodyRefused([Problem(origin, message="snapshot body must have releases and groups")])
    requires = body.get("requires")
    if requires is not None:
        if not isinstance(requires, str) or not VERSION_RE.fullmatch(requires):
            raise BodyRefused([Problem(origin, path="$.requires", message="not a version")])
        if Version(requires) > Version(agent_version):
            # Checked first: every other problem of such a body would follow from this one.
            message = f"needs erel-sync {requires} or newer; this agent runs {agent_version}"
            raise BodyRefused([Problem(origin, path="$.requires", message=message)], needs=requires)
    c = _Collector(known=known or {})
    for key in sorted(set(body) - {*BODY_SECTIONS, "requires"}):
        name = str(key)[:64]
        c.unknown.append(Problem(origin, path=f"$.{name}", message=f"{UNKNOWN_FIELD} {name!r}"))
    for section in BODY_SECTIONS:
        items = body[section]
        if not isinstance(items, list):
            raise BodyRefused([Problem(origin, path=f"$.{section}", message="must be a list")])
        for i, doc in enumerate(items):
            # The document's "file" is its place in the body; `_in_body` joins it to the path.
            c.add(ParsedDoc(f"$.{section}[{i}]", i, doc, 0, 0))
    broken = frozenset(n for k, n in c.broken if k == "Release")
    unknown_set = set(c.unknown)
    schema_problems = [p for p in c.problems if p not in unknown_set]
    semantic = check_semantics(c.releases, c.groups, c.locate, broken_releases=broken)
    if c.unknown or c.problems or semantic:
        unknown = [_in_body(p, origin) for p in c.unknown]
        rest = [_in_body(p, origin) for p in (*schema_problems, *semantic)]
        raise BodyRefused([*unknown, *rest], unknown=unknown)
    return DesiredState(MappingProxyType(c.releases), MappingProxyType(c.groups)), c.built


def _in_body(p: Problem, origin: str) -> Problem:
    """A problem placed by (document, path in it) as one path from the body's root."""
    if not p.file.startswith("$."):
        return p
    return Problem(origin, path=p.file + p.path.removeprefix("$"), message=p.message)
