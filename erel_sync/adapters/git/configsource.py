"""Read a config revision's files from a working directory or from a git revision.

Adapter (filesystem, GitPython). Used by `validate`, `plan` and the publisher. It hands
`model.validate` plain bytes and reports, as problems, what must never be read: files over the
size limit (checked before reading) and symlinks that lead outside the repository.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import git

from erel_sync.model.problems import Problem
from erel_sync.model.validate import LoadResult, SourceFile, is_config_path, validate_sources
from erel_sync.model.yamldocs import MAX_FILE_BYTES

SYMLINK_MODE = 0o120000
MAX_LINK_HOPS = 8


class SourceError(Exception):
    """The source itself cannot be read (no such directory, repository or revision)."""


@dataclass(frozen=True)
class Revision:
    sha: str
    files: list[SourceFile]
    problems: list[Problem]

    def validate(self) -> LoadResult:
        return validate_sources(self.files, self.problems)


def _too_large(path: str, size: int) -> Problem:
    return Problem(path, message=f"file too large: {size} bytes (limit {MAX_FILE_BYTES})")


def read_directory(root: Path) -> Revision:
    """Every config file under `root`, as the working tree has it."""
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    root_real = root.resolve()
    files: list[SourceFile] = []
    problems: list[Problem] = []
    for dirpath, dirnames, filenames in os.walk(root_real):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root_real).as_posix()
            if not is_config_path(rel):
                continue
            if full.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(root_real):
                    problems.append(Problem(rel, message="symlink leads outside the repository"))
                    continue
            try:
                size = full.stat().st_size
                if size > MAX_FILE_BYTES:
                    problems.append(_too_large(rel, size))
                    continue
                files.append(SourceFile(rel, full.read_bytes()))
            except OSError as e:
                problems.append(Problem(rel, message=f"cannot read: {e.strerror or e}"))
    return Revision("", files, problems)


def open_repo(path: Path) -> git.Repo:
    try:
        return git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
        raise SourceError(f"{path}: not a git repository") from e


def resolve_revision(repo: git.Repo, rev: str) -> str:
    try:
        return str(repo.commit(rev).hexsha)
    except (git.BadName, ValueError, git.GitCommandError) as e:
        raise SourceError(f"unknown revision {rev!r}") from e


def read_revision(repo: git.Repo, rev: str) -> Revision:
    """Every config file of commit `rev`, read from git objects (the working tree is ignored)."""
    sha = resolve_revision(repo, rev)
    tree = repo.commit(sha).tree
    blobs = {str(b.path): b for b in tree.traverse() if isinstance(b, git.Blob)}
    files: list[SourceFile] = []
    problems: list[Problem] = []
    for path in sorted(blobs):
        if not is_config_path(path):
            continue
        blob = blobs[path]
        hops = 0
        while blob.mode == SYMLINK_MODE and hops < MAX_LINK_HOPS:
            target = blob.data_stream.read().decode("utf-8", "replace")
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(str(blob.path)), target))
            if target.startswith("/") or joined.startswith("../") or joined == "..":
                problems.append(Problem(path, message="symlink leads outside the repository"))
                break
            nxt = blobs.get(joined)
            if nxt is None:
                problems.append(Problem(path, message=f"symlink target {target!r} does not exist"))
                break
            blob, hops = nxt, hops + 1
        else:
            if blob.mode == SYMLINK_MODE:
                problems.append(Problem(path, message="too many levels of symlinks"))
            elif blob.size > MAX_FILE_BYTES:
                problems.append(_too_large(path, blob.size))
            else:
                files.append(SourceFile(path, blob.data_stream.read()))
    return Revision(sha, files, problems)
