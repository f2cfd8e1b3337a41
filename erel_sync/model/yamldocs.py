"""Parse YAML bytes into plain JSON-like documents that remember where every value came from.

Pure (ruamel.yaml parses text; nothing here touches a file). Called by `model.validate`. Refuses,
with a `Problem` at `file:line:col`: non-UTF-8 text, oversize input, syntax errors, duplicate keys,
custom tags, non-string keys, non-finite numbers and alias expansion beyond a small bound (an alias
bomb is stopped after a bounded number of nodes, long before it could use real memory).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from erel_sync.model.problems import Problem, json_path

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES_PER_FILE = 200_000
# Aliases are legitimate for sharing a block or two; thousands of re-visited nodes are an attack.
MAX_ALIAS_NODES = 10_000

Path = tuple[str | int, ...]


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


class _Converter:
    """Walks ruamel's round-trip tree once, counting nodes so aliases cannot explode."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.nodes = 0
        self.alias_nodes = 0
        self.value_pos: dict[Path, tuple[int, int]] = {}
        self.key_pos: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.visited: set[int] = set()

    def convert(self, node: Any, path: Path, pos: tuple[int, int], seen: frozenset[int]) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES_PER_FILE:
            raise _Budget(f"document too large: more than {MAX_NODES_PER_FILE} nodes", pos)
        self.value_pos[path] = pos
        if isinstance(node, CommentedMap):
            return self._mapping(node, path, pos, seen)
        if isinstance(node, CommentedSeq):
            return self._sequence(node, path, pos, seen)
        return self._scalar(node, path, pos)

    def _enter(self, node: Any, pos: tuple[int, int], seen: frozenset[int]) -> frozenset[int]:
        # A container met again on the same descent path is a cycle; one met again elsewhere is
        # an alias whose expansion we pay for node by node.
        key = id(node)
        if key in seen:
            raise _Budget("recursive alias", pos)
        return seen | {key}

    def _mapping(
        self, node: CommentedMap, path: Path, pos: tuple[int, int], seen: frozenset[int]
    ) -> dict[str, Any]:
        inner = self._enter(node, pos, seen)
        self._count_alias(node, pos)
        out: dict[str, Any] = {}
        for k in node:
            kpos = _pos(node, "key", k, pos)
            if not isinstance(k, str):
                self.problems.append(
                    Problem(self.file, *kpos, json_path(path), f"keys must be strings, got {k!r}")
                )
                continue
            vpos = _pos(node, "value", k, kpos)
            self.key_pos[(*path, k)] = kpos
            out[k] = self.convert(node[k], (*path, k), vpos, inner)
        return out

    def _sequence(
        self, node: CommentedSeq, path: Path, pos: tuple[int, int], seen: frozenset[int]
    ) -> list[Any]:
        inner = self._enter(node, pos, seen)
        self._count_alias(node, pos)
        return [
            self.convert(v, (*path, i), _pos(node, "item", i, pos), inner)
            for i, v in enumerate(node)
        ]

    def _count_alias(self, node: Any, pos: tuple[int, int]) -> None:
        if id(node) in self.visited:
            self.alias_nodes += len(node) + 1
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise _Budget(
                    f"alias expansion exceeds {MAX_ALIAS_NODES} nodes (anchors/aliases are "
                    "limited; write the values out)",
                    pos,
                )
        else:
            # The tree is alive while we walk it, so ids are stable: a second visit is an alias.
            self.visited.add(id(node))

    def _scalar(self, node: Any, path: Path, pos: tuple[int, int]) -> Any:
        if node is None or isinstance(node, bool):
            return node
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            if not math.isfinite(node):
                self.problems.append(
                    Problem(self.file, *pos, json_path(path), "numbers must be finite")
                )
            return float(node)
        if isinstance(node, str):
            return str(node)
        if isinstance(node, dt.date | dt.datetime):
            # Kept as a date so the schema reports "expected a string" at this spot.
            return node
        tag = getattr(getattr(node, "tag", None), "value", None) or type(node).__name__
        self.problems.append(
            Problem(self.file, *pos, json_path(path), f"unsupported YAML value or tag {tag!s}")
        )
        return None


def _pos(node: Any, kind: str, key: Any, default: tuple[int, int]) -> tuple[int, int]:
    try:
        line, col = getattr(node.lc, kind)(key)
    except (KeyError, IndexError, AttributeError, TypeError):
        return default
    return int(line) + 1, int(col) + 1


def decode_text(file: str, data: bytes) -> tuple[str | None, list[Problem]]:
    """UTF-8 (an optional BOM is dropped) or a problem at the first bad byte."""
    if len(data) > MAX_FILE_BYTES:
        return None, [
            Problem(file, message=f"file too large: {len(data)} bytes (limit {MAX_FILE_BYTES})")
        ]
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
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    docs: list[ParsedDoc] = []
    conv = _Converter(file)
    try:
        for index, raw in enumerate(yaml.load_all(text)):
            if raw is None:
                continue
            line, col = (raw.lc.line + 1, raw.lc.col + 1) if hasattr(raw, "lc") else (1, 1)
            conv.value_pos, conv.key_pos = {}, {}
            data_ = conv.convert(raw, (), (line, col), frozenset())
            docs.append(ParsedDoc(file, index, data_, line, col, conv.value_pos, conv.key_pos))
    except _Budget as e:
        return [], [Problem(file, *e.pos, "", str(e))]
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        # A duplicate key needs no "while constructing a mapping" preamble to be understood.
        parts = (e.problem,) if "duplicate key" in (e.problem or "") else (e.context, e.problem)
        what = " ".join(x for x in parts if x)
        return [], [Problem(file, line, col, "", f"YAML: {_tidy(what)}")]
    except YAMLError as e:
        return [], [Problem(file, message=f"YAML: {_tidy(str(e))}")]
    return docs, problems + conv.problems


def _tidy(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else "syntax error"
    return first[:300]
