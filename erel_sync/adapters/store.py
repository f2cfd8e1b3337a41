"""Crash-safe files: every write is tmp + fsync + rename + fsync of the directory (or, for
files whose loss costs only freshness, tmp + rename).

Adapter (filesystem). Used by the agent for `snapshot.json` (the last applied signed envelope,
stored byte for byte) and `status.json` (inventory, holds, last results), and by the publisher
for its seq state. A crash at any instant leaves the old or the new file, never a torn one; a
failed write (disk full) raises before the rename, so the old file is intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
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


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file.

    `durable=False` skips the two fsyncs: still atomic against a crash of the process (rename),
    but the newest content may be lost on power loss. For files that are rewritten often and
    whose loss costs only freshness (the agent's status report), not for what must be on disk
    before a delivery is acked.

    The temp name is fixed per process and thread (no mkstemp: it costs a random name, an
    O_EXCL retry loop and a separate chmod), which is unique as long as one thread never writes
    the same path twice at once."""
    tmp = f"{path.parent}/.{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            if os.fstat(fd).st_mode & 0o7777 != mode:  # a leftover temp keeps its old mode
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e


def write_json(path: Path, value: Any, *, durable: bool = True) -> None:
    data = json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"
    write_atomic(path, data, durable=durable)


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
