"""Atomic state files: a failed write leaves the old content and no temp file behind."""

from __future__ import annotations

import errno
import os
import threading
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


def test_leftover_temp_does_not_leak_its_mode_or_content(tmp_path: Path) -> None:
    p = tmp_path / "cookie"
    store.write_atomic(p, b"first")
    # A crashed earlier write of this very process and thread left its temp behind, world-
    # readable and longer than the next content.
    tmp = tmp_path / f".cookie.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_bytes(b"x" * 100)
    tmp.chmod(0o644)
    store.write_atomic(p, b"secret", mode=0o400)
    assert p.read_bytes() == b"secret"
    assert (p.stat().st_mode & 0o777) == 0o400
    assert not tmp.exists()


def test_not_durable_write_is_still_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "status.json"
    calls: list[int] = []
    monkeypatch.setattr(store.os, "fsync", calls.append)
    store.write_json(p, {"a": 1}, durable=False)
    assert calls == []
    assert store.read_json(p) == {"a": 1}
    store.write_json(p, {"a": 2})
    assert len(calls) == 2  # the file and its directory
    assert [x.name for x in tmp_path.iterdir()] == ["status.json"]
