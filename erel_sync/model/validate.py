"""Validate a whole revision: files -> YAML -> schema -> specs -> semantics -> DesiredState.

Pure: takes file contents (bytes), never reads the disk or git itself (`adapters.configsource`
does that). Reports every problem at once. Also rebuilds a DesiredState from a snapshot body for
the agent, through the same schema and semantic checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from erel_sync.model.documents import group_from_document, release_from_document
from erel_sync.model.problems import ConfigError, Problem, json_path
from erel_sync.model.schema import check_document
from erel_sync.model.semantics import check_semantics
from erel_sync.model.specs import DesiredState, GroupSpec, ReleaseSpec
from erel_sync.model.yamldocs import ParsedDoc, parse_documents

CONFIG_SUFFIXES = (".yaml", ".yml")
REVISION_KINDS = ("Release", "Group")


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
    releases: dict[str, ReleaseSpec] = field(default_factory=dict)
    groups: dict[str, GroupSpec] = field(default_factory=dict)
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
        for path, message, at_key in issues:
            line, col = doc.where(path, key=at_key)
            self.problems.append(Problem(doc.file, line, col, json_path(path), message))
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
        if kind == "Release":
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
    if c.problems:
        return LoadResult(None, tuple(sorted(set(c.problems))), n_files, n_docs)
    state = DesiredState(MappingProxyType(c.releases), MappingProxyType(c.groups))
    return LoadResult(state, (), n_files, n_docs)


def state_from_body(
    body: Mapping[str, Any], *, origin: str = "<snapshot>", known: KnownDocs | None = None
) -> tuple[DesiredState, KnownDocs]:
    """Rebuild and re-check a DesiredState from a canonical snapshot body (raises ConfigError).

    `known`: what the previous call returned; documents equal to one in it are reused instead
    of checked and built again. Returns the state and the documents to pass next time."""
    c = _Collector(known=known or {})
    if not isinstance(body, Mapping) or set(body) != {"releases", "groups"}:
        raise ConfigError([Problem(origin, message="snapshot body must have releases and groups")])
    for section in ("releases", "groups"):
        items = body[section]
        if not isinstance(items, list):
            raise ConfigError([Problem(origin, path=f"$.{section}", message="must be a list")])
        for i, doc in enumerate(items):
            c.add(ParsedDoc(f"{origin}#{section}[{i}]", i, doc, 0, 0))
    c.problems.extend(check_semantics(c.releases, c.groups, c.locate))
    if c.problems:
        raise ConfigError(c.problems)
    return DesiredState(MappingProxyType(c.releases), MappingProxyType(c.groups)), c.built
