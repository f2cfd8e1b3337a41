"""Atomic state files: a failed write leaves the old content and no temp file behind."""

from __future__ import annotations

import errno
import json
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


# --- SlotFile: the agent's snapshot, two slots written alternately


def test_slot_file_round_trip_alternates_and_survives_reopen(tmp_path: Path) -> None:
    s = store.SlotFile(tmp_path / "state" / "snapshot")
    assert s.read() is None
    for i in range(1, 6):
        s.write(b'{"seq": %d}' % i)
    s.close()
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert names == ["snapshot.slot-a", "snapshot.slot-b"]
    assert all((tmp_path / "state" / n).stat().st_mode & 0o777 == 0o600 for n in names)
    again = store.SlotFile(tmp_path / "state" / "snapshot")
    assert again.read() == b'{"seq": 5}'
    again.write(b'{"seq": 6}')  # into the slot that held 4, never over 5
    assert store.SlotFile(tmp_path / "state" / "snapshot").read() == b'{"seq": 6}'
    assert store.SlotFile.parse((tmp_path / "state" / "snapshot.slot-a").read_bytes()) is not None


def test_slot_file_torn_newest_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    s = store.SlotFile(tmp_path / "snapshot")
    s.write(b"old content")
    s.write(b"new content")
    s.close()
    newest = tmp_path / "snapshot.slot-b"
    blob = newest.read_bytes()
    # A power loss in the middle of the write: half of it reached the disk.
    newest.write_bytes(blob[: len(blob) // 2])
    assert store.SlotFile(tmp_path / "snapshot").read() == b"old content"
    # One byte flipped in the content: the checksum refuses it.
    newest.write_bytes(blob[:-3] + b"X" + blob[-2:])
    assert store.SlotFile(tmp_path / "snapshot").read() == b"old content"
    newest.write_bytes(b"")
    assert store.SlotFile(tmp_path / "snapshot").read() == b"old content"


def test_slot_file_failed_write_keeps_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = store.SlotFile(tmp_path / "snapshot")
    s.write(b"A" * 5000)
    s.write(b"B" * 5000)
    real_pwrite = os.pwrite

    def disk_full(fd: int, data: bytes, offset: int) -> int:
        real_pwrite(fd, bytes(data[:100]), offset)  # part of it lands, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "pwrite", disk_full)
    with pytest.raises(store.StoreError, match=r"snapshot\.slot-a: No space left"):
        s.write(b"C" * 5000)
    monkeypatch.undo()
    assert store.SlotFile(tmp_path / "snapshot").read() == b"B" * 5000
    s.write(b"D" * 10)  # the next write goes to the damaged slot again, never over B
    assert store.SlotFile(tmp_path / "snapshot").read() == b"D" * 10
    s.write(b"E")
    assert store.SlotFile(tmp_path / "snapshot").read() == b"E"


def test_slot_file_content_stays_readable_json_after_its_header(tmp_path: Path) -> None:
    s = store.SlotFile(tmp_path / "snapshot")
    big = json.dumps({"pad": "x" * 3000}).encode()
    s.write(big)
    s.write(big)
    s.write(b'{"small": 1}')  # shorter than the slot: padded with newlines, not truncated
    slot = tmp_path / "snapshot.slot-a"
    assert slot.stat().st_size > len(big)
    assert json.loads(slot.read_bytes().split(b"\n", 1)[1]) == {"small": 1}
    huge = json.dumps({"pad": "y" * 100_000}).encode()
    s.write(huge)
    s.write(huge)
    s.write(b"[]")  # far shorter: truncated, so a shrunk snapshot does not keep 100 kB of padding
    assert (tmp_path / "snapshot.slot-b").stat().st_size < 200
    assert store.SlotFile(tmp_path / "snapshot").read() == b"[]"


def test_slot_file_descriptors_are_not_inherited(tmp_path: Path) -> None:
    # The agent starts release nodes; they must not hold the agent's state files open.
    s = store.SlotFile(tmp_path / "snapshot")
    s.write(b"x")
    assert s._fds and all(not os.get_inheritable(fd) for fd in s._fds)
    s.close()
    assert not s._fds
