"""Parse YAML bytes into plain JSON-like documents that remember where every value came from.

Pure (parses text; touches no file). Called by `model.validate`, `model.settings` and
`core.inventory`. libyaml (through PyYAML's C parser) composes the node graph; this module walks
it once, resolving plain scalars by the YAML 1.2 core schema (so `on`/`no` stay strings and
`1.10` is the number 1.1, which the schema then refuses for a version), and refuses with a
`Problem` at `file:line:col`: non-UTF-8 text, oversize input, syntax errors, duplicate keys,
custom tags, non-string keys, non-finite numbers and alias expansion beyond a small bound (an
alias bomb is stopped after a bounded number of nodes, long before it could use real memory).

Why not ruamel.yaml: its pure-Python scanner took ~4 ms per small file here (4.4 s for the
1,100-file benchmark); libyaml composes the same files in ~0.1 ms each.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from erel_sync.model.problems import Problem, json_path

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES_PER_FILE = 200_000
# Aliases are legitimate for sharing a block or two; thousands of re-visited nodes are an attack.
MAX_ALIAS_NODES = 10_000

Path = tuple[str | int, ...]

_T = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_T + t for t in ("str", "int", "float", "bool", "null"))
MAP, SEQ, MERGE = _T + "map", _T + "seq", _T + "merge"


class _Core12Resolver(yaml.resolver.BaseResolver):
    """Implicit tags of the YAML 1.2 core schema (no yes/no/on/off booleans, no sexagesimal)."""


for _tag, _regexp, _first in (
    (BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        FLOAT,
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    (MERGE, r"^<<$", "<"),
):
    _Core12Resolver.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


def _c_parser() -> Any:
    try:
        return importlib.import_module("yaml._yaml").CParser
    except (ImportError, AttributeError):  # pragma: no cover - PyYAML built without libyaml
        return None


_CParser: Any = _c_parser()
_ParserBase: Any = _CParser if _CParser is not None else yaml.parser.Parser


class _Loader(_ParserBase, yaml.constructor.BaseConstructor, _Core12Resolver):  # type: ignore[misc]
    def __init__(self, stream: str) -> None:
        if _CParser is not None:
            _CParser.__init__(self, stream)
        else:  # pragma: no cover - only without libyaml
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
        yaml.constructor.BaseConstructor.__init__(self)
        _Core12Resolver.__init__(self)


if _CParser is None:  # pragma: no cover - only without libyaml

    class _PureLoader(
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        yaml.composer.Composer,
        yaml.constructor.BaseConstructor,
        _Core12Resolver,
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.BaseConstructor.__init__(self)
            _Core12Resolver.__init__(self)

    _Loader = _PureLoader  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class ParsedDoc:
    """One YAML document as plain data plus the 1-based (line, col) of each value and key."""

    file: str
    index: int  # position of the document in its file, from 0
    data: Any
    line: int
    col: int
    value_pos: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_pos: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Best position for `path`: its key (when asked) or value, else the nearest parent."""
        if key and path in self.key_pos:
            return self.key_pos[path]
        p = path
        while p:
            if p in self.value_pos:
                return self.value_pos[p]
            p = p[:-1]
        return self.value_pos.get((), (self.line, self.col))


class _Budget(Exception):
    def __init__(self, message: str, pos: tuple[int, int]) -> None:
        super().__init__(message)
        self.pos = pos


def _pos(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Walker:
    """Turns one composed document into plain data, charging every node against a budget."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.nodes = 0
        self.alias_nodes = 0
        self.visited: set[int] = set()
        self.value_pos: dict[Path, tuple[int, int]] = {}
        self.key_pos: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []

    def problem(self, pos: tuple[int, int], path: Path, message: str) -> None:
        self.problems.append(Problem(self.file, *pos, json_path(path), message))

    def walk(self, node: Node, path: Path, stack: frozenset[int]) -> Any:
        self.nodes += 1
        pos = _pos(node)
        if self.nodes > MAX_NODES_PER_FILE:
            raise _Budget(f"document too large: more than {MAX_NODES_PER_FILE} nodes", pos)
        self.value_pos.setdefault(path, pos)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in stack:
            raise _Budget("recursive alias", pos)
        if id(node) in self.visited:
            # The same node object met again is an alias: its expansion is paid for.
            self.alias_nodes += len(node.value) + 1
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise _Budget(
                    f"alias expansion exceeds {MAX_ALIAS_NODES} nodes "
                    "(anchors/aliases are limited; write the values out)",
                    pos,
                )
        self.visited.add(id(node))
        inner = stack | {id(node)}
        if isinstance(node, SequenceNode):
            self.check_tag(node, SEQ, path)
            return [self.walk(v, (*path, i), inner) for i, v in enumerate(node.value)]
        assert isinstance(node, MappingNode)
        self.check_tag(node, MAP, path)
        return self.mapping(node, path, inner)

    def mapping(self, node: MappingNode, path: Path, inner: frozenset[int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merges: list[tuple[Node, tuple[int, int]]] = []
        for knode, vnode in node.value:
            kpos = _pos(knode)
            if isinstance(knode, ScalarNode) and knode.tag == MERGE:
                merges.append((vnode, kpos))
                continue
            key = self.walk(knode, (*path, "<key>"), inner)
            self.value_pos.pop((*path, "<key>"), None)
            if not isinstance(key, str):
                self.problem(kpos, path, f"keys must be strings, got {key!r}")
                continue
            if key in first_line:
                self.problem(kpos, path, f'duplicate key "{key}" (first at line {first_line[key]})')
                continue
            first_line[key] = kpos[0]
            self.key_pos[(*path, key)] = kpos
            self.value_pos[(*path, key)] = _pos(vnode)
            out[key] = self.walk(vnode, (*path, key), inner)
        for vnode, kpos in merges:
            sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
            for src in sources:
                merged = self.walk(src, path, inner)
                if not isinstance(merged, dict):
                    self.problem(kpos, path, "a merge key (<<) needs a mapping")
                    continue
                for k, v in merged.items():
                    out.setdefault(k, v)
        return out

    def check_tag(self, node: Node, expected: str, path: Path) -> None:
        if node.tag != expected:
            self.problem(_pos(node), path, f"unsupported YAML tag {node.tag}")

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        tag, text = node.tag, node.value
        if tag == STR:
            return text
        if tag == NULL:
            return None
        if tag == BOOL:
            return text.lower() == "true"
        if tag == INT:
            return int(text, 0) if text[:2] in ("0o", "0x") else int(text)
        if tag == FLOAT:
            value = float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf"))
            if text.lstrip("+-").lower() in (".inf", ".nan") or not math.isfinite(value):
                self.problem(_pos(node), path, "numbers must be finite")
                return None
            return value
        self.problem(_pos(node), path, f"unsupported YAML tag {tag}")
        return None


def decode_text(file: str, data: bytes) -> tuple[str | None, list[Problem]]:
    """UTF-8 (an optional BOM is dropped) or a problem at the first bad byte."""
    if len(data) > MAX_FILE_BYTES:
        limit = f"file too large: {len(data)} bytes (limit {MAX_FILE_BYTES})"
        return None, [Problem(file, message=limit)]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return None, [Problem(file, line, col, "", "not valid UTF-8 text")]
    return text.removeprefix("\ufeff"), []


def parse_documents(file: str, data: bytes) -> tuple[list[ParsedDoc], list[Problem]]:
    """All documents of one YAML file; empty documents are skipped."""
    text, problems = decode_text(file, data)
    if text is None:
        return [], problems
    docs: list[ParsedDoc] = []
    walker = _Walker(file)
    loader = _Loader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if isinstance(node, ScalarNode) and node.tag == NULL:
                index += 1
                continue
            walker.value_pos, walker.key_pos = {}, {}
            data_ = walker.walk(node, (), frozenset())
            line, col = _pos(node)
            docs.append(ParsedDoc(file, index, data_, line, col, walker.value_pos, walker.key_pos))
            index += 1
    except _Budget as e:
        return [], [Problem(file, *e.pos, "", str(e))]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        what = " ".join(x for x in (e.context, e.problem) if x)
        return [], [Problem(file, line, col, "", f"YAML: {_tidy(what)}")]
    except yaml.YAMLError as e:
        return [], [Problem(file, message=f"YAML: {_tidy(str(e))}")]
    finally:
        loader.dispose()
    return docs, problems + walker.problems


def _tidy(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else "syntax error"
    return first[:300]
