"""Shared CLI pieces: exit codes (DESIGN.md §6), output formats, one-line errors."""

from __future__ import annotations

import sys
from enum import IntEnum, StrEnum
from typing import NoReturn

import typer


class Exit(IntEnum):
    OK = 0
    CHANGES = 1  # plan: changes; wait: failed
    INVALID = 2  # the user must fix the input
    PARTIAL = 3  # some hosts did not answer (listed) / timed out
    RUNTIME = 4  # could not do the job (broker, git, filesystem)


class TextJson(StrEnum):
    text = "text"
    json = "json"


class PlanFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


def fail(message: str, code: Exit = Exit.RUNTIME) -> NoReturn:
    """One clear line on stderr, then exit."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stderr.write(f"erel-sync: {first}\n")
    raise typer.Exit(int(code))
