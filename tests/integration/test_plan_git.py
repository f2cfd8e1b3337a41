"""`erel-sync plan` and `validate --rev` against real git repositories made in a temp dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from erel_sync.cli.main import app
from tests.configrepo import GitRepo, group_yaml, release_yaml

runner = CliRunner()

BASE_FILES = {
    "releases/hello.yaml": release_yaml(versions=("0.1.0", "0.2.0", "0.3.0")),
    "releases/ticker.yaml": release_yaml(name="ticker"),
    "groups/web.yaml": group_yaml(hosts="['web-*']", releases=(("hello", "0.2.0"),)),
    "groups/db.yaml": group_yaml(name="db", hosts="[db-1]", releases=(("ticker", "0.1.0"),)),
}
INVENTORY = "hosts:\n  - {id: web-1}\n  - {id: web-2}\n  - {id: db-1}\n  - {id: db-2}\n"


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "config")
    r.commit(BASE_FILES, "base")
    return r


def plan(repo: GitRepo, *extra: str, base: str = "HEAD~1") -> tuple[int, str]:
    result = runner.invoke(
        app, ["plan", "--repo", str(repo.root), "--base", base, "--head", "HEAD", *extra]
    )
    return result.exit_code, result.stdout


def plan_json(repo: GitRepo, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out = plan(repo, "-o", "json", *extra)
    return code, json.loads(out)


def kinds(doc: dict[str, Any], group: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return [(c["kind"], c["release"], c["before"], c["after"]) for c in doc["groups"][group]]


def test_no_change_exits_0(repo: GitRepo) -> None:
    repo.commit({"README.md": "docs only\n"}, "docs")
    code, out = plan(repo)
    assert code == 0
    assert "no changes" in out


def test_release_added_to_group(repo: GitRepo) -> None:
    repo.commit(
        {
            "groups/web.yaml": group_yaml(
                hosts="['web-*']", releases=(("hello", "0.2.0"), ("ticker", "0.1.0"))
            )
        }
    )
    code, doc = plan_json(repo)
    assert code == 1
    assert kinds(doc, "web") == [("ReleaseAdded", "ticker", None, "0.1.0")]
    assert doc["groups"]["db"] == []


def test_release_removed_from_group(repo: GitRepo) -> None:
    repo.commit(
        {
            "groups/db.yaml": group_yaml(name="db", hosts="[db-1]", releases=())
            + "  allow_empty: true\n"
        }
    )
    code, doc = plan_json(repo)
    assert code == 1
    assert ("ReleaseRemoved", "ticker", "0.1.0", None) in kinds(doc, "db")


def test_upgrade_and_downgrade(repo: GitRepo) -> None:
    repo.commit({"groups/web.yaml": group_yaml(hosts="['web-*']", releases=(("hello", "0.3.0"),))})
    code, doc = plan_json(repo)
    assert code == 1
    assert kinds(doc, "web") == [("Upgrade", "hello", "0.2.0", "0.3.0")]
    repo.commit({"groups/web.yaml": group_yaml(hosts="['web-*']", releases=(("hello", "0.1.0"),))})
    code, doc = plan_json(repo)
    assert kinds(doc, "web") == [("Downgrade", "hello", "0.3.0", "0.1.0")]


def test_release_config_change_shows_in_every_group_using_it(repo: GitRepo) -> None:
    repo.commit(
        {
            "releases/ticker.yaml": release_yaml(
                name="ticker", extra="  config: {sys_config: {ticker: {interval_ms: 5}}}\n"
            )
        }
    )
    code, doc = plan_json(repo)
    assert code == 1
    assert doc["groups"]["db"][0]["kind"] == "ConfigChanged"
    assert "ticker.interval_ms" in doc["groups"]["db"][0]["detail"]
    assert doc["groups"]["web"] == []


def test_suspend_and_rollout_changes(repo: GitRepo) -> None:
    repo.commit(
        {
            "groups/web.yaml": group_yaml(
                hosts="['web-*']",
                releases=(("hello", "0.2.0"),),
                extra="  suspend: true\n  rollout: {max_unavailable: '50%'}\n",
            )
        }
    )
    code, doc = plan_json(repo)
    assert code == 1
    assert {k for k, *_ in kinds(doc, "web")} == {"SuspendChanged", "RolloutChanged"}


def test_per_host_plan_moves_and_unassigned(repo: GitRepo, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(INVENTORY)
    # db-2 joins group db; web-2 moves to db; db-1 loses its group.
    repo.commit(
        {
            "groups/db.yaml": group_yaml(
                name="db", hosts="[db-2, web-2]", releases=(("ticker", "0.1.0"),)
            ),
        }
    )
    code, doc = plan_json(repo, "--hosts", str(inventory))
    assert code == 1
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts["web-1"]["moved"] is False and hosts["web-1"]["changes"] == []
    assert (hosts["web-2"]["before"]["group"], hosts["web-2"]["after"]["group"]) == ("web", "db")
    assert {(c["kind"], c["release"]) for c in hosts["web-2"]["changes"]} == {
        ("ReleaseRemoved", "hello"),
        ("ReleaseAdded", "ticker"),
    }
    assert hosts["db-1"]["after"]["group"] is None and hosts["db-1"]["changes"] == []
    assert hosts["db-2"]["before"]["group"] is None
    assert hosts["db-2"]["changes"][0]["kind"] == "ReleaseAdded"
    code, text = plan(repo, "--hosts", str(inventory))
    assert "db-1: db -> unassigned (keeps what runs; nothing is stopped)" in text


def test_markdown_is_a_pr_comment(repo: GitRepo) -> None:
    repo.commit({"groups/web.yaml": group_yaml(hosts="['web-*']", releases=(("hello", "0.3.0"),))})
    code, md = plan(repo, "-o", "markdown")
    assert code == 1
    assert md.startswith("### erel-sync plan")
    assert "| `web` | ~ hello 0.2.0 -> 0.3.0 (upgrade, auto) |" in md


def test_invalid_head_exits_2_with_errors(repo: GitRepo) -> None:
    repo.commit({"groups/web.yaml": group_yaml(hosts="['web-*']", releases=(("hello", "9.9.9"),))})
    code, out = plan(repo)
    assert code == 2
    assert "groups/web.yaml:9:" in out and "has no version '9.9.9'" in out
    code, doc = plan_json(repo)
    assert code == 2 and doc["valid"] is False
    assert doc["problems"][0]["file"] == "groups/web.yaml"


def test_unknown_revision_is_one_clear_line(repo: GitRepo) -> None:
    result = runner.invoke(
        app, ["plan", "--repo", str(repo.root), "--base", "nope", "--head", "HEAD"]
    )
    assert result.exit_code == 2
    assert "unknown revision 'nope'" in result.stderr


def test_validate_rev_reads_git_not_the_worktree(repo: GitRepo) -> None:
    good = repo.git("rev-parse", "HEAD")
    (repo.root / "groups" / "web.yaml").write_text("broken: [\n")
    assert runner.invoke(app, ["validate", str(repo.root)]).exit_code == 2
    result = runner.invoke(app, ["validate", str(repo.root), "--rev", good, "-o", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["revision"] == good


def test_symlink_out_of_repo_is_refused(repo: GitRepo, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(release_yaml(name="evil"))
    (repo.root / "releases" / "evil.yaml").symlink_to(outside)
    result = runner.invoke(app, ["validate", str(repo.root)])
    assert result.exit_code == 2
    assert "releases/evil.yaml: symlink leads outside the repository" in result.stdout
    repo.commit({}, "add symlink")
    result = runner.invoke(app, ["validate", str(repo.root), "--rev", "HEAD"])
    assert result.exit_code == 2
    assert "releases/evil.yaml: symlink leads outside the repository" in result.stdout
