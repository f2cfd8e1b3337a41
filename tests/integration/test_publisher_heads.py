"""The publisher's decisions per branch head, on a real git repository (no broker needed):
valid -> seq + 1; invalid -> rejected, last good kept; rewind -> refused; rewritten history ->
a new seq; seq and revision survive a publisher restart."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from erel_sync.adapters import store
from erel_sync.core.snapshot import generate_key, verify_envelope
from erel_sync.publisher.daemon import Publisher, PublisherSettings
from tests.configrepo import GitRepo, group_yaml, release_yaml

FILES = {"r.yaml": release_yaml(versions=("0.1.0", "0.2.0")), "g.yaml": group_yaml()}


def make(tmp_path: Path) -> tuple[GitRepo, PublisherSettings, str]:
    repo = GitRepo(tmp_path / "config")
    pem, pub = generate_key()
    store.write_atomic(tmp_path / "k.pem", pem)
    settings = PublisherSettings(
        repo=repo.root,
        key_file=tmp_path / "k.pem",
        key_id="k1",
        state_dir=tmp_path / "state",
        amqp_urls=("amqp://unused",),
    )
    return repo, settings, pub


@pytest.fixture
def publisher() -> Iterator[Callable[[PublisherSettings], Publisher]]:
    """Publishers that are never run: closed here, as `run` would close them."""
    made: list[Publisher] = []

    def new(settings: PublisherSettings) -> Publisher:
        made.append(Publisher(settings))
        return made[-1]

    yield new
    for p in made:
        p.close()


def test_heads_valid_invalid_rewind_rewrite_and_restart(
    tmp_path: Path, publisher: Callable[[PublisherSettings], Publisher]
) -> None:
    repo, settings, pub = make(tmp_path)
    first = repo.commit(FILES, "first")
    p = publisher(settings)
    assert p.process_head() == "Published"
    assert (p.seq, p.revision) == (1, first)
    assert p.process_head() == "Unchanged"

    second = repo.commit({"g.yaml": group_yaml(releases=(("hello", "0.2.0"),))}, "upgrade")
    assert p.process_head() == "Published" and (p.seq, p.revision) == (2, second)
    assert p.envelope is not None
    snap = verify_envelope(p.envelope, {"k1": pub})
    assert (snap.seq, snap.revision) == (2, second)

    bad = repo.commit({"g.yaml": group_yaml(releases=(("hello", "9.9.9"),))}, "bad")
    assert p.process_head() == "Invalid"
    assert (p.seq, p.revision, p.rejected) == (2, second, bad)
    event = p._pending_events[-1]
    assert event["reason"] == "Invalid" and event["problems"][0]["file"] == "g.yaml"

    repo.git("reset", "-q", "--hard", first)  # force-push back to an ancestor
    assert p.process_head() == "Rewind"
    assert (p.seq, p.revision) == (2, second)

    rewritten = repo.commit({"g.yaml": group_yaml(hosts="[web-9]")}, "rewritten history")
    assert p.process_head() == "Published"
    assert (p.seq, p.revision) == (3, rewritten)

    again = publisher(settings)  # a restart keeps seq, revision and the signed envelope
    assert (again.seq, again.revision) == (3, rewritten)
    assert again.process_head() == "Unchanged"
    assert again.envelope == p.envelope
    assert json.loads((settings.state_dir / "publisher.json").read_text())["seq"] == 3


def test_a_rejection_is_announced_again_after_a_restart(
    tmp_path: Path, publisher: Callable[[PublisherSettings], Publisher]
) -> None:
    """The rejection event lives in memory until the broker takes it; a publisher restarted in
    between must announce it again, or `wait --revision BAD` would run to its timeout."""
    repo, settings, _ = make(tmp_path)
    repo.commit(FILES, "first")
    p = publisher(settings)
    assert p.process_head() == "Published"
    bad = repo.commit({"g.yaml": group_yaml(releases=(("hello", "9.9.9"),))}, "bad")
    assert p.process_head() == "Invalid"

    again = publisher(settings)  # restarted before its events reached the broker
    assert again.process_head() == "Invalid"
    events = [e for e in again._pending_events if e["kind"] == "rejected"]
    assert [e["revision"] for e in events] == [bad]
    assert (again.seq, again.rejected) == (1, bad)
    assert again.process_head() == "Unchanged"  # announced once per start, not in a loop
