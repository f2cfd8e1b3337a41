"""Crash-safe files: every write is tmp + fsync + rename + fsync of the directory.

Adapter (filesystem). Used by the agent for `snapshot.json` (the last applied signed envelope,
stored byte for byte) and `status.json` (inventory, holds, last results), and by the publisher
for its seq state. A crash at any instant leaves the old or the new file, never a torn one; a
failed write (disk full) raises before the rename, so the old file is intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """A state file could not be written or read; the old content is intact."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode() + b"\n")


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from e


def read_json(path: Path) -> Any:
    data = read_bytes(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        raise StoreError(f"{path} is not valid JSON: {e}") from e


def remove_stale_temps(directory: Path) -> None:
    """Temp files of writes cut short by a crash; never the real files."""
    if directory.is_dir():
        for p in directory.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
