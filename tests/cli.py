"""Running the `erel-sync` CLI as a user would, from tests: a subprocess of this interpreter,
its output captured as text, its exit code left to the test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def erel_sync(
    *args: str, env: Mapping[str, str] | None = None, clean: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`erel-sync ARGS`. `env` is added to the environment; with `clean`, every `EREL_*`
    variable of the test process is dropped first (so only the flags given count)."""
    base = {k: v for k, v in os.environ.items() if not (clean and k.startswith("EREL_"))}
    return subprocess.run(
        [sys.executable, "-m", "erel_sync", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
    )
