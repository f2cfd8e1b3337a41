"""SIGKILL a writer again and again: the state file is always the old or the new version."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from erel_sync.adapters import store

WRITER = """
import sys
from pathlib import Path

from erel_sync.adapters import store
from erel_sync.adapters.store import write_json
p = Path(sys.argv[1])
i = 0
while True:
    i += 1
    write_json(p, {"seq": i, "pad": "x" * 200_000})
    Path(sys.argv[2]).write_text(str(i))
"""


def test_kill_mid_write_never_tears(tmp_path: Path) -> None:
    target, progress = tmp_path / "snapshot.json", tmp_path / "progress"
    last_seen = 0
    for _round in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(progress)])
        deadline = time.monotonic() + 20
        # Wait for at least one more completed write than last round, then kill mid-stream.
        while time.monotonic() < deadline:
            try:
                if int(progress.read_text() or 0) > 0 and target.exists():
                    break
            except (ValueError, FileNotFoundError):
                pass
            time.sleep(0.005)  # poll
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        doc = json.loads(target.read_bytes())  # must parse: old or new, never torn
        assert doc["pad"] == "x" * 200_000
        assert doc["seq"] >= 1
        last_seen = doc["seq"]
        progress.unlink()
    assert last_seen >= 1


SLOT_WRITER = """
import json, sys
from pathlib import Path

from erel_sync.adapters import store
from erel_sync.adapters.store import SlotFile
s = SlotFile(Path(sys.argv[1]))
held = s.read()
i = json.loads(held)["seq"] if held else 0
while True:
    i += 1
    s.write(json.dumps({"seq": i, "pad": "x" * (200_000 + i % 7000)}).encode())
    Path(sys.argv[2]).write_text(str(i))
"""


def test_kill_mid_slot_write_keeps_every_completed_write(tmp_path: Path) -> None:
    base, progress = tmp_path / "snapshot", tmp_path / "progress"
    reader = store.SlotFile(base)
    done = 0
    for _round in range(15):
        proc = subprocess.Popen([sys.executable, "-c", SLOT_WRITER, str(base), str(progress)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # at least one more completed write, then kill
            with contextlib.suppress(ValueError, FileNotFoundError):
                if int(progress.read_text() or 0) > done:
                    break
            time.sleep(0.005)  # poll
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with contextlib.suppress(ValueError, FileNotFoundError):
            done = max(done, int(progress.read_text() or 0))
        raw = reader.read()
        assert raw is not None
        doc = json.loads(raw)  # the old or the new content, never torn
        # Every write that returned is there: the writer continues from it next round.
        assert doc["seq"] >= done
        assert doc["pad"] == "x" * (200_000 + doc["seq"] % 7000)
        done = doc["seq"]
    assert done >= 15
