"""Benchmark: load and validate a generated config repo of 1,000 releases and 100 groups.

Prints the time to read + validate from a directory and from a git revision (target <= 1 s),
and the time to compute the canonical digest. Run: `make bench` or
`.venv/bin/python bench/load_validate.py`.
"""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from erel_sync.adapters.git.configsource import open_repo, read_directory, read_revision

RELEASES, GROUPS, VERSIONS = 1000, 100, 3


def generate(root: Path) -> None:
    for i in range(RELEASES):
        lines = [
            "apiVersion: erel/v1",
            "kind: Release",
            f"metadata: {{name: rel-{i:04d}}}",
            "spec:",
            "  upgrade: auto",
            "  health: {timeout: 5s, probation: 2s}",
            "  config: {sys_config: {app: {port: 8080, name: 'svc'}}, vm_args: {'+K': 'true'}}",
            "  versions:",
        ]
        for v in range(VERSIONS):
            digest = hashlib.sha256(f"{i}-{v}".encode()).hexdigest()
            lines += [
                f'    - version: "1.{v}.0"',
                f"      artifact: {{url: 'https://artifacts.example.com/rel-{i}/1.{v}.0.tar.gz',"
                f" sha256: {digest}}}",
            ]
        d = root / "releases" / f"team-{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"rel-{i:04d}.yaml").write_text("\n".join(lines) + "\n")
    per_group = RELEASES // GROUPS
    for g in range(GROUPS):
        lines = [
            "apiVersion: erel/v1",
            "kind: Group",
            f"metadata: {{name: group-{g:03d}}}",
            "spec:",
            f"  hosts: ['g{g:03d}-*', 'host-{g:03d}']",
            "  releases:",
        ]
        for r in range(g * per_group, (g + 1) * per_group):
            lines.append(f"    - {{name: rel-{r:04d}, version: '1.{r % VERSIONS}.0'}}")
        (root / "groups").mkdir(exist_ok=True)
        (root / "groups" / f"group-{g:03d}.yaml").write_text("\n".join(lines) + "\n")


def timed(fn, runs: int = 5) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    samples, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        generate(root)
        git = ["git", "-C", str(root)]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run(
            [*git, "-c", "user.email=b@x", "-c", "user.name=b", "commit", "-qm", "bench"],
            check=True,
        )
        t_dir, result = timed(lambda: read_directory(root).validate())
        assert result.ok, result.problems[:3]  # type: ignore[attr-defined]
        with open_repo(root) as repo:
            t_git, result = timed(lambda: read_revision(repo, "HEAD").validate())
        assert result.ok  # type: ignore[attr-defined]
        state = result.state  # type: ignore[attr-defined]
        t_digest, _ = timed(state.digest)
        print(
            f"config: {RELEASES} releases x {VERSIONS} versions, {GROUPS} groups, "
            f"{RELEASES + GROUPS} files"
        )
        print(
            f"load+validate from directory : {t_dir * 1000:8.1f} ms (median of 5; target <= 1000)"
        )
        print(
            f"load+validate from git HEAD  : {t_git * 1000:8.1f} ms (median of 5; target <= 1000)"
        )
        print(f"canonical digest             : {t_digest * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
