"""`erel-sync release`: input errors exit 2 with one line, runtime errors exit 4 (no node needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from erel_sync.cli.main import app

RELEASE = """apiVersion: erel/v1
kind: Release
metadata: {name: hello}
spec:
  versions:
    - version: "0.1.0"
      artifact: {url: "file:///nonexistent/hello-0.1.0.tar.gz", sha256: "%s"}
""" % ("0" * 64)


@pytest.fixture
def dirs(tmp_path: Path) -> list[str]:
    return [
        "--releases-dir",
        str(tmp_path / "rel"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--host-id",
        "cli-test",
    ]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["release", *args])
    return result.exit_code, result.output


def test_invalid_document_exits_2_with_location(tmp_path: Path, dirs: list[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RELEASE + "  bogus: 1\n")
    code, out = run("install", "-f", str(bad), "--version", "0.1.0", *dirs)
    assert code == 2
    assert "bad.yaml:8:3" in out and "bogus" in out


def test_unknown_version_exits_2(tmp_path: Path, dirs: list[str]) -> None:
    good = tmp_path / "release.yaml"
    good.write_text(RELEASE)
    code, out = run("install", "-f", str(good), "--version", "9.9.9", *dirs)
    assert code == 2
    assert "VersionUnknown" in out


def test_unreachable_artifact_exits_4_and_writes_nothing(tmp_path: Path, dirs: list[str]) -> None:
    good = tmp_path / "release.yaml"
    good.write_text(RELEASE)
    code, out = run("install", "-f", str(good), "--version", "0.1.0", *dirs)
    assert code == 4
    assert "ArtifactUnavailable" in out
    assert not (tmp_path / "rel" / "hello").exists()


def test_status_of_nothing_and_unknown_release(dirs: list[str]) -> None:
    code, out = run("status", *dirs, "-o", "json")
    assert code == 0 and out.strip() == "[]"
    code, out = run("start", "nope", *dirs)
    assert code == 4 and "NotInstalled" in out
    code, out = run("stop", *dirs)
    assert code == 2


def test_bad_host_id_exits_2(dirs: list[str]) -> None:
    code, out = run("status", *dirs[:4], "--host-id", "bad host/../x")
    assert code == 2 and "host id" in out
