"""Watch a git repository for ref updates (watchdog) and read its branch head (git CLI).

Adapter. The publisher calls `RefWatcher.start(on_change)`: any file event under `refs/` or on
`packed-refs` schedules `on_change` on the event loop (a push shows up as a move of
`refs/heads/<b>.lock`, FACTS.md). Events only say "look again": the truth is always read back
from git with `head()`. A slow poll in the publisher covers missed events.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


def git_dir(repo: Path) -> Path:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--absolute-git-dir"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise FileNotFoundError(f"{repo}: not a git repository ({out.stderr.strip()})")
    return Path(out.stdout.strip())


def branch_head(repo: Path, branch: str) -> str | None:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or None if out.returncode == 0 else None


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    """True when `older` is reachable from `newer` (so moving to `older` is a rewind)."""
    out = subprocess.run(
        ["git", "-C", str(repo), "merge-base", "--is-ancestor", older, newer],
        capture_output=True,
        check=False,
    )
    return out.returncode == 0


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[], None]) -> None:
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = str(getattr(event, "dest_path", "") or event.src_path)
        if "/refs/" in path or path.endswith(("packed-refs", "HEAD")):
            self.notify()


class RefWatcher:
    def __init__(self, repo: Path) -> None:
        self.gitdir = git_dir(repo)
        self._observer: Any = None

    def start(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None]) -> None:
        def notify() -> None:
            loop.call_soon_threadsafe(on_change)

        handler = _Handler(notify)
        observer = Observer()
        observer.schedule(handler, str(self.gitdir / "refs"), recursive=True)
        observer.schedule(handler, str(self.gitdir), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
