"""`erel-sync dev` (what `make demo` runs) reaches a converged 3-host cluster and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from erel_sync.adapters.releases import nodeproc

pytestmark = pytest.mark.e2e


def test_dev_converges_three_hosts_and_leaves_nothing_running(
    vhost: str, tmp_path: Path, rabbit: Any
) -> None:
    work = tmp_path / "dev"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "erel_sync", "dev", "--work-dir", str(work),
         "--exit-when-converged", "--timeout", "110", "--amqp-url", vhost],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < 120
    assert "converged in" in done.stderr
    for host in ("web-1", "edge-1", "batch-1"):
        assert host in done.stderr
    assert "stopped: broker, publisher, agents and their releases." in done.stderr
    # Nothing of the cluster is left: no agent, no publisher, no release VM.
    for root in (work / "hosts").glob("*/releases/*"):
        assert nodeproc.node_pids(root) == [], root
    leftovers = subprocess.run(
        ["ps", "-eo", "args"], check=True, capture_output=True, text=True
    ).stdout
    assert str(work) not in leftovers
