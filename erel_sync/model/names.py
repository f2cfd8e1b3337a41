"""Value rules shared by the schemas' intent and the Python model: names, versions, durations,
sizes.

Pure. The JSON Schemas in `schemas/` enforce the same patterns so editors catch them early; the
model re-checks because snapshots reach agents without passing through an editor.
"""

from __future__ import annotations

import re
from functools import total_ordering

# Names end up in paths, Erlang node names and command lines: keep them to a shell- and
# path-safe alphabet, starting with a letter, bounded in length.
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
NAME_RE = re.compile(NAME_PATTERN)
# Host ids may carry dots (FQDNs) but still never a separator or metacharacter.
HOST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
HOST_ID_RE = re.compile(HOST_ID_PATTERN)
# Host globs: the host-id alphabet plus fnmatch's `*`, `?` and `[...]`.
HOST_GLOB_PATTERN = r"^[A-Za-z0-9*?\[\]!._-]{1,253}$"
HOST_GLOB_RE = re.compile(HOST_GLOB_PATTERN)
VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"
VERSION_RE = re.compile(VERSION_PATTERN)
LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9./_-]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$"
LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)
LABEL_VALUE_RE = re.compile(LABEL_VALUE_PATTERN)
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Sizes: bytes, or a whole number of binary units (`512MiB`, `8GiB`); never zero.
SIZE_PATTERN = r"^[1-9][0-9]{0,15}(B|KiB|MiB|GiB|TiB)?$"
_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def parse_duration(text: str) -> float:
    """`"1m30s"` -> 90.0 seconds. Raises ValueError on anything else."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 30s, 5m, 1h30m)")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """Canonical text of a duration, the inverse of `parse_duration` (to the millisecond)."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


def parse_size(value: str | int) -> int:
    """`"8GiB"` -> 8589934592 bytes; an integer is a number of bytes. Raises ValueError on
    anything else, zero and negative sizes included."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB, 8GiB, or bytes)")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"not a size: {value} (at least 1 byte)")
        return value
    m = re.fullmatch(SIZE_PATTERN, value)
    if not m:
        raise ValueError(f"not a size: {value[:40]!r} (use e.g. 512MiB, 8GiB, or bytes)")
    return int(value[: len(value) - len(m.group(1) or "")]) * _SIZE_UNITS[m.group(1) or ""]


def format_size(size: int) -> str:
    """Text of a size in the largest binary unit that divides it (`8GiB`), else bytes (`1000B`)."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


@total_ordering
class Version:
    """Orders release versions the way people expect: numeric parts numerically.

    `0.10.0 > 0.9.0`; a pre-release (`1.0.0-rc1`) sorts before its release.
    """

    __slots__ = ("key", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        core, _, pre = text.partition("-")
        core = core.split("+", 1)[0]
        parts: list[tuple[int, int | str]] = []
        for piece in re.split(r"[._]", core):
            parts.append((0, int(piece)) if piece.isdigit() else (1, piece))
        # A release (no pre-release part) sorts after any of its pre-releases.
        pre_key: tuple[int, str] = (1, "") if not pre else (0, pre)
        self.key = (tuple(parts), pre_key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key == other.key

    def __lt__(self, other: Version) -> bool:
        return self.key < other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older, the same or newer than `b`."""
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)


def listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (127.0.0.1) -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)
