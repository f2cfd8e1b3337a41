"""Builders for small config repositories used across unit, integration and e2e tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def release_yaml(
    name: str = "hello", versions: tuple[str, ...] = ("0.1.0",), extra: str = ""
) -> str:
    out = [
        "apiVersion: erel/v1",
        "kind: Release",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  versions:",
    ]
    for v in versions:
        out += [
            f'    - version: "{v}"',
            "      artifact:",
            f"        url: file:///srv/{name}-{v}.tar.gz",
            f"        sha256: {sha(name + v)}",
        ]
    return "\n".join(out) + "\n" + extra


def group_yaml(
    name: str = "web",
    hosts: str = "[web-1]",
    releases: tuple[tuple[str, str], ...] = (("hello", "0.1.0"),),
    extra: str = "",
) -> str:
    out = [
        "apiVersion: erel/v1",
        "kind: Group",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  hosts: {hosts}",
        "  releases:" if releases else "  releases: []",
    ]
    for r, v in releases:
        out += [f"    - name: {r}", f'      version: "{v}"']
    return "\n".join(out) + "\n" + extra


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


class GitRepo:
    """A real git repository in a temp dir, committed to with the git CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "test@example.com")
        self.git("config", "user.name", "test")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=self.root, check=True, capture_output=True, text=True
        ).stdout.strip()

    def commit(
        self, files: dict[str, str | bytes], message: str = "change", remove: tuple[str, ...] = ()
    ) -> str:
        write_tree(self.root, files)
        for rel in remove:
            self.git("rm", "-q", rel)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def readers(self) -> list[int]:
        """This test process's child processes working in the repository (GitPython's
        `cat-file` readers): none may outlive the publisher that started them."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, or not ours to read
            if ppid == os.getpid() and cwd == self.root.resolve():
                found.append(int(pid))
        return found
