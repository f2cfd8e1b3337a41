"""One agent per state directory: a second `erel-sync agent` on the same directory is refused
with one line naming the first one's pid, and the directory is free again once it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from erel_sync.adapters import store
from erel_sync.core.snapshot import generate_key
from erel_sync.dev.rabbitnode import free_port
from tests.waiting import wait_for


def test_lock_directory_refuses_a_second_holder(tmp_path: Path) -> None:
    fd = store.lock_directory(tmp_path / "state")
    try:
        with pytest.raises(
            store.StoreError, match=rf"in use by another agent \(pid {os.getpid()}\)"
        ):
            store.lock_directory(tmp_path / "state")
    finally:
        os.close(fd)
    os.close(store.lock_directory(tmp_path / "state"))  # free again


def test_second_agent_on_one_state_dir_is_refused(tmp_path: Path) -> None:
    _, pub = generate_key()
    # No broker listens there: the agent runs anyway (it retries), which is all this needs.
    args = [sys.executable, "-m", "erel_sync", "agent", "--host-id", "h1",
            "--trusted-key", f"k={pub}", "--state-dir", str(tmp_path / "state"),
            "--releases-dir", str(tmp_path / "rel"),
            "--amqp-url", f"amqp://guest:guest@127.0.0.1:{free_port()}/"]  # fmt: skip
    first = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "state" / "agent.lock"

        def locked_by_first() -> bool:
            assert first.poll() is None, "the first agent exited"
            return lock.exists() and lock.read_text().strip() == str(first.pid)

        wait_for("the first agent to take its state dir", locked_by_first, 30, not_yet=())
        second = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
        assert second.returncode == 4
        assert second.stderr.strip().splitlines() == [
            f"erel-sync: {tmp_path / 'state'} is in use by another agent (pid {first.pid})"
        ]
        assert first.poll() is None  # the first one is untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)
    assert first.returncode == 0
    os.close(store.lock_directory(tmp_path / "state"))  # released at exit
