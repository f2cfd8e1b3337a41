"""Atomic state files: a failed write leaves the old content and no temp file behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from erel_sync.adapters import store


def test_write_and_read(tmp_path: Path) -> None:
    p = tmp_path / "state" / "status.json"
    store.write_json(p, {"a": 1})
    assert store.read_json(p) == {"a": 1}
    assert (p.stat().st_mode & 0o777) == 0o600
    assert store.read_json(tmp_path / "missing.json") is None


def test_disk_full_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "snapshot.json"
    store.write_atomic(p, b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(store.StoreError, match="No space left"):
        store.write_atomic(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["snapshot.json"]
