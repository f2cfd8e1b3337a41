"""Watch a git repository for ref updates (watchdog) and read its branch head (git CLI).

Adapter. The publisher calls `RefWatcher.start(on_change)`: any file event under `refs/` or on
`packed-refs` schedules `on_change` on the event loop (a push shows up as a move of
`refs/heads/<b>.lock`, which git renames into place). Events only say "look again": the truth
is always read back from git with `head()`. A slow poll in the publisher covers missed events.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
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


def branch_head(repo: git.Repo, branch: str) -> str | None:
    """The commit the branch points at, read from the ref files (no process spawn)."""
    try:
        return str(repo.commit(f"refs/heads/{branch}").hexsha)
    except (git.BadName, ValueError, git.GitCommandError):
        return None


def is_ancestor(repo: git.Repo, older: str, newer: str) -> bool:
    """True when `older` is reachable from `newer`, i.e. moving the branch to `older` would be a
    rewind. The common case, a new commit on top of `newer`, is answered from the commit's own
    parents (no `git merge-base` spawn): a child of `newer` cannot be its ancestor."""
    try:
        if any(str(p.hexsha) == newer for p in repo.commit(older).parents):
            return False
        return bool(repo.is_ancestor(repo.commit(older), repo.commit(newer)))
    except (git.BadName, ValueError, git.GitCommandError):
        return False


def new_commits(
    repo: git.Repo, head: str, previous: str | None, limit: int
) -> tuple[list[str], bool]:
    """The commits `head` brings over `previous` (reachable from head, not from previous),
    newest first, at most `limit`; and whether the list was cut short (or could not be
    computed exactly: then it holds `head` alone). The usual case, one commit on top of the
    previous one, is answered from the commit's parents without spawning git."""
    try:
        commit = repo.commit(head)
        if previous is not None and [str(p.hexsha) for p in commit.parents] == [previous]:
            return [head], False
        if head == previous:
            return [], False
        args = [head] if previous is None else [head, f"^{previous}"]
        shas = str(repo.git.rev_list(*args, max_count=limit + 1)).split()
    except (git.BadName, ValueError, git.GitCommandError):
        return [head], True
    return shas[:limit], len(shas) > limit


def commit_summary(repo: git.Repo, sha: str) -> tuple[str, str]:
    """(author name, subject line) of a commit; empty strings when it cannot be read."""
    try:
        commit = repo.commit(sha)
        return str(commit.author.name or ""), str(commit.summary or "")[:200]
    except (git.BadName, ValueError, git.GitCommandError):
        return "", ""


# Only changes count. watchdog also reports opens and closes-without-write, and reading a ref
# (our own `git rev-parse`) would then wake us again: a busy loop.
_CHANGES = frozenset({"created", "modified", "moved", "deleted", "closed"})


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[], None]) -> None:
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
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
