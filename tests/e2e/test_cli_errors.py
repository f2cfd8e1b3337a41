"""Every CLI error is one line (issue 10): the operator commands on a vhost where erel-sync was
never set up (no exchanges, no streams) end with exit 4 and one line naming the fix, never a
traceback; and `erel-sync dev`'s work repository takes the README's `git commit` steps on a
machine without a git identity, with hints that run as printed.

Real parts: the test broker's fresh `vhost` (empty), the CLI as a subprocess, git."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from erel_sync.adapters import store
from erel_sync.core.snapshot import generate_key
from erel_sync.dev.cluster import DevCluster
from tests.cli import erel_sync

pytestmark = pytest.mark.e2e


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return erel_sync(*args, env=env)


def test_commands_on_a_vhost_without_topology_fail_in_one_line(vhost: str, tmp_path: Path) -> None:
    pem, _ = generate_key()
    key = tmp_path / "ops.key"
    store.write_atomic(key, pem, mode=0o600)
    env = {**os.environ, "EREL_AMQP_URL": vhost, "EREL_OPERATOR_KEY": str(key)}
    env.pop("EREL_DEBUG", None)
    for args in (
        ["status"],
        ["status", "-o", "json"],
        ["members"],
        ["wait", "--revision", "abcdef1", "--timeout", "5s"],
        ["delete", "hello", "--host", "web-1"],
        ["start", "hello", "--all"],
        ["stop", "hello", "--group", "web"],
    ):
        out = run(*args, env=env)
        assert out.returncode == 4, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, (args, out.stderr)
        assert out.stderr.startswith("erel-sync: broker "), (args, out.stderr)
        assert "erel-sync broker setup" in out.stderr, (args, out.stderr)
        assert "guest:guest@" not in out.stderr  # the password is masked
        assert out.stdout == ""


def test_dev_work_repo_commits_without_a_global_git_identity(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path / "dev", amqp_url="amqp://guest:guest@127.0.0.1:1/")
    cluster.prepare()
    home = tmp_path / "home"
    home.mkdir()
    bare = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GIT_", "EMAIL", "EREL_")) and k not in ("HOME", "PATH")
    }
    # No identity anywhere but the repository itself; a PATH without the virtualenv.
    bare |= {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}

    def shell(command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=bare, capture_output=True, text=True, check=False
        )

    # The README's steps, in the work repository.
    original = (cluster.repo / "groups" / "web.yaml").read_text()
    for step, subject in (
        (
            "sed -i 's/\"0.2.0\"/\"0.1.0\"/' groups/web.yaml && git commit -qam 'web: hello 0.1.0'",
            "web: hello 0.1.0",
        ),
        ('sed -i \'s/"0.1.0"/"9.9"/\' groups/web.yaml && git commit -qam broken', "broken"),
    ):
        done = shell(step, cwd=cluster.repo)
        assert done.returncode == 0, done.stderr
        assert shell("git log -1 --format=%s", cwd=cluster.repo).stdout.strip() == subject

    # The hints as `erel-sync dev` prints them from a shell whose PATH lacks the virtualenv.
    hints = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from erel_sync.dev.cluster import DevCluster; "
            "print(DevCluster(pathlib.Path(sys.argv[1]), amqp_url=sys.argv[2]).hints())",
            str(cluster.work),
            str(cluster.amqp_url),
        ],
        env=bare,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    (cluster.repo / "groups" / "web.yaml").write_text(original)
    try_line = next(line for line in hints if line.startswith("try:"))
    done = shell(try_line.removeprefix("try:").strip())
    assert done.returncode == 0, done.stderr
    assert "0.1.0" in (cluster.repo / "groups" / "web.yaml").read_text()
    # The printed `status` hint runs as printed: the command is found (exit 4: no broker
    # there), not `command not found` (127).
    status_line = next(line for line in hints if re.search(r"\bstatus\b", line))
    done = shell(status_line.removeprefix("then:").strip())
    assert done.returncode == 4, (status_line, done.stderr)
    assert "no broker reachable" in done.stderr


def test_dev_prints_its_hints_unbroken(vhost: str, tmp_path: Path) -> None:
    """`erel-sync dev` prints the hints whole, one command a line, whatever the terminal width
    (rich wraps long lines at 80 columns by default, which breaks a pasted command)."""
    work = tmp_path / "dev"
    done = subprocess.run(
        [sys.executable, "-m", "erel_sync", "dev", "--work-dir", str(work),
         "--exit-when-converged", "--timeout", "110", "--amqp-url", vhost],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stderr.splitlines()
    for line in DevCluster(work, amqp_url=vhost).hints().splitlines():
        assert line in printed, (line, done.stderr[:3000])
    assert "converged in" in done.stderr
