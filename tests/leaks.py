"""Where a secret's plain text shows up: files under a tree and processes' /proc entries.
Used by the secrets tests (tests/integration/test_secrets.py, tests/e2e/test_cluster_netns.py),
which allow it only in the files a node reads."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def plain_text_leaks(
    root: Path,
    plain: str,
    *,
    allowed: Callable[[Path], bool],
    proc_parts: tuple[str, ...] = ("cmdline", "environ"),
) -> list[str]:
    """Every file under `root` (not a link, not `allowed`) and every process's `proc_parts`
    that hold `plain`."""
    needle = plain.encode()
    found = [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not allowed(p) and needle in p.read_bytes()
    ]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in proc_parts:
            try:
                if needle in Path(f"/proc/{pid}/{part}").read_bytes():
                    found.append(f"/proc/{pid}/{part}")
            except OSError:
                continue
    return found
