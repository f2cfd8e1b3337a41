"""Problems found in a config revision, and the error that carries them.

Pure. Every stage of loading (source, YAML, schema, semantics) reports `Problem`s in this one
shape so the CLI, the publisher's rejection event and the agent's re-check all print alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a revision, located as precisely as the stage allows."""

    file: str
    line: int = 0  # 1-based; 0 when the problem concerns the file as a whole
    col: int = 0  # 1-based; 0 when unknown
    path: str = ""  # JSON path inside the document, e.g. `$.spec.versions[1].version`
    message: str = field(default="", compare=True)

    def location(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col or 1}"
        return self.file

    def __str__(self) -> str:
        where = f" {self.path}:" if self.path else ""
        return f"{self.location()}:{where} {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
        }


class ConfigError(Exception):
    """The user must fix the configuration; carries every problem found (CLI exit code 2)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        first = str(self.problems[0]) if self.problems else "invalid configuration"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


def json_path(parts: tuple[str | int, ...]) -> str:
    """`("spec", "versions", 1)` -> `$.spec.versions[1]`."""
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out
