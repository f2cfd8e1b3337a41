"""One-shot runs (`--once`), as an operator or a test runs them: `erel-sync publisher --once`
takes the head and publishes it; `erel-sync agent --once` joins once, reconciles once and exits
with its host's state (docs/operating.md, "One-shot runs"). Real subprocesses, a real broker
vhost; the runs without a broker point at a port where nothing listens."""

from __future__ import annotations

import json
import time
from pathlib import Path

from erel_sync.adapters import store
from erel_sync.core.snapshot import generate_key, peek_seq
from erel_sync.dev.rabbitnode import free_port
from tests.cli import erel_sync
from tests.configrepo import GitRepo, group_yaml, release_yaml

# The host matches no group: nothing to install, so its state is known at once (unassigned: Ok).
FILES = {"r.yaml": release_yaml(), "g.yaml": group_yaml(hosts="['nobody-*']")}
QUICK = 30.0  # seconds a run without a broker may take at most (its join gives up after 5)


def nowhere() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/"


class Setup:
    """A config repository with one commit, a publisher key, and directories for one run."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.repo = GitRepo(tmp_path / "config")
        self.repo.commit(FILES)
        pem, self.public_key = generate_key()
        self.key = tmp_path / "k1.pem"
        store.write_atomic(self.key, pem)

    def publisher(self, url: str) -> list[str]:
        return [
            *("publisher", "--once", "--repo", str(self.repo.root), "--key", str(self.key)),
            *("--key-id", "k1", "--state-dir", str(self.tmp / "pub"), "--amqp-url", url),
        ]

    def agent(self, url: str, host: str = "h-1") -> list[str]:
        d = self.tmp / host
        return [
            *("agent", "--once", "--host-id", host, "--trusted-key", f"k1={self.public_key}"),
            *("--state-dir", str(d / "state"), "--releases-dir", str(d / "releases")),
            *("--amqp-url", url),
        ]

    def published_seq(self) -> int:
        return int(json.loads((self.tmp / "pub" / "publisher.json").read_text())["seq"])

    def stored_seq(self, host: str = "h-1") -> int | None:
        raw = store.SlotFile(self.tmp / host / "state" / "snapshot").read()
        return None if raw is None else peek_seq(raw)

    def status(self, host: str = "h-1") -> dict[str, object]:
        doc = json.loads((self.tmp / host / "state" / "status.json").read_text())
        assert isinstance(doc, dict)
        return doc


def test_publisher_once_publishes_and_agent_once_joins_and_exits_with_its_state(
    vhost: str, tmp_path: Path
) -> None:
    s = Setup(tmp_path)
    out = erel_sync(*s.publisher(vhost), clean=True)
    assert out.returncode == 0, out.stderr
    assert s.published_seq() == 1
    again = erel_sync(*s.publisher(vhost), clean=True)  # unchanged head: published again, 0
    assert again.returncode == 0, again.stderr
    assert s.published_seq() == 1

    # No publisher runs now: the agent finds seq 1 at the stream's tail during its join.
    out = erel_sync(*s.agent(vhost), clean=True)
    assert out.returncode == 0, out.stderr
    assert s.stored_seq() == 1
    report = s.status()["report"]
    assert isinstance(report, dict) and report["snapshot"]["seq"] == 1


def test_agent_once_without_a_broker_uses_its_stored_snapshot_quickly(
    vhost: str, tmp_path: Path
) -> None:
    s = Setup(tmp_path)
    assert erel_sync(*s.publisher(vhost), clean=True).returncode == 0
    assert erel_sync(*s.agent(vhost), clean=True).returncode == 0
    (s.tmp / "h-1" / "state" / "status.json").unlink()

    started = time.monotonic()
    out = erel_sync(*s.agent(nowhere()), clean=True)
    assert time.monotonic() - started < QUICK
    assert out.returncode == 0, out.stderr
    assert s.stored_seq() == 1
    assert s.status()["report"]["snapshot"]["seq"] == 1  # type: ignore[index]


def test_once_without_a_broker_and_nothing_stored(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    started = time.monotonic()
    agent = erel_sync(*s.agent(nowhere()), clean=True)
    assert time.monotonic() - started < QUICK
    assert agent.returncode == 1, agent.stderr  # no snapshot yet: not converged
    assert "no snapshot" in agent.stderr

    publisher = erel_sync(*s.publisher(nowhere()), clean=True)
    assert publisher.returncode == 4, publisher.stderr
    assert s.published_seq() == 1  # taken (validated, signed, stored), only not published


def test_publisher_once_exits_1_on_a_rejected_head(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.repo.commit({"g.yaml": group_yaml(releases=(("hello", "9.9.9"),))}, "bad")
    out = erel_sync(*s.publisher(nowhere()), clean=True)
    assert out.returncode == 1, out.stderr
    assert "Invalid" in out.stderr
