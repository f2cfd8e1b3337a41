"""What a newcomer runs, checked as written: `make setup` does not run pip again when nothing
changed (a set-up machine works offline), and the README's demo steps do what the README says
(the first commit is a valid downgrade, the "broken" one breaks exactly one thing)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from erel_sync.model.validate import SourceFile, validate_sources

REPO = Path(__file__).resolve().parents[2]


def make_dry_run(*args: str) -> str:
    done = subprocess.run(
        ["make", "-n", "-C", str(REPO), *args, f"PY={sys.executable}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


def test_setup_runs_pip_only_when_pyproject_changed() -> None:
    if not list((REPO / ".venv").glob(".installed-*")):
        pytest.skip("this .venv was not made by `make setup`")
    assert "pip install" not in make_dry_run("venv")
    assert "pip install" in make_dry_run("-W", "pyproject.toml", "venv")


def readme_demo_steps() -> list[str]:
    """The shell lines of the README block that starts with `cd .work/dev/config`."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```sh\ncd \.work/dev/config\n(.*?)```", text, re.S)
    assert block, "README lost its demo steps"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def validate_head(repo: Path) -> list[str]:
    files = [
        SourceFile(p.relative_to(repo).as_posix(), p.read_bytes())
        for p in repo.rglob("*.yaml")
        if ".git" not in p.parts
    ]
    return [str(p) for p in validate_sources(files).problems]


def test_readme_demo_steps_downgrade_then_break_exactly_one_thing(tmp_path: Path) -> None:
    repo = tmp_path / "config"
    shutil.copytree(REPO / "sample-repo", repo)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}  # fmt: skip
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "sample"], cwd=repo, check=True, env=env)
    downgrade, broken = readme_demo_steps()
    subprocess.run(["bash", "-ec", downgrade], cwd=repo, check=True, env=env)
    assert validate_head(repo) == []
    assert '"0.1.0"' in (repo / "groups/web.yaml").read_text()
    subprocess.run(["bash", "-ec", broken], cwd=repo, check=True, env=env)
    problems = validate_head(repo)
    assert len(problems) == 1, problems
    assert "hello" in problems[0] and "9.9" in problems[0]
