"""Agents of mixed versions: a body made by a newer model, fed to this agent's code.

The newer model is simulated as this model plus one optional field, `spec.health.grace` of a
Release (default `0s`), that this code's schemas do not know, written by this code's own
canonical rules (sparse or not) and declared in `requires` when it is used. Expected
(docs/architecture.md, "Compatibility between versions"): at its default the snapshot is
applied; used, it is refused as AgentTooOld with the version needed, the held snapshot stays,
and the refusal shows in the heartbeat; the publisher still refuses the field in a repo.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from erel_sync import __version__
from erel_sync.agent.daemon import Agent
from erel_sync.core.snapshot import SnapshotRejected, signed_message, verify_envelope
from erel_sync.model.canonical import canonical_body
from erel_sync.model.names import Version
from erel_sync.model.settings import AgentSettings, TrustedKey
from erel_sync.model.specs import canonical_json
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml
from tests.unit.test_snapshot import KEY, PUB, STATE, TRUSTED

_major, _minor = (int(p) for p in __version__.split(".")[:2])
NEWER = f"{_major}.{_minor + 1}.0"  # the erel-sync that brings `grace`


def newer_body(grace: str | None) -> dict[str, Any]:
    """The body a newer publisher sends for STATE with `grace` set on every Release (None: left
    at its default). It writes `grace` by the rules this code writes `stop_timeout` by (STATE
    leaves that at its default too), and declares `requires` when `grace` is used."""
    body: dict[str, Any] = json.loads(canonical_json(canonical_body(STATE)))
    writes_defaults = "stop_timeout" in body["releases"][0]["spec"]
    if grace is not None or writes_defaults:
        for doc in body["releases"]:
            doc["spec"].setdefault("health", {})["grace"] = grace or "0s"
    if grace is not None:
        body["requires"] = NEWER
    return body


def envelope(body: dict[str, Any], seq: int) -> bytes:
    """Signed with the trusted test key, exactly as `core.snapshot.build_envelope` does."""
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    revision = f"{seq:040x}"
    return canonical_json(
        {
            "format": 1,
            "kind": "snapshot",
            "seq": seq,
            "revision": revision,
            "created": "2026-11-27T00:00:00Z",
            "digest": digest,
            "body": body,
            "signature": base64.b64encode(KEY.sign(signed_message(seq, revision, digest))).decode(),
            "key_id": "pub-1",
        }
    )


def test_the_new_field_at_its_default_is_applied() -> None:
    snap = verify_envelope(envelope(newer_body(None), 3), TRUSTED)
    assert snap.seq == 3 and snap.state == STATE


def test_the_new_field_used_is_refused_as_agent_too_old_with_the_version_needed() -> None:
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(envelope(newer_body("5s"), 4), TRUSTED)
    e = err.value
    assert (e.reason, e.needs, e.seq, e.revision) == ("AgentTooOld", NEWER, 4, f"{4:040x}")
    assert f"needs erel-sync {NEWER} or newer; this agent runs {__version__}" in str(e)


def test_an_undeclared_unknown_field_is_agent_too_old_naming_it_not_invalid() -> None:
    """Second line of defence: the newer publisher did not declare `grace` in `requires`."""
    body = newer_body("5s")
    del body["requires"]
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(envelope(body, 5), TRUSTED)
    e = err.value
    assert e.reason == "AgentTooOld" and e.needs is None and e.seq == 5
    assert "$.releases[0].spec.health.grace: unknown field 'grace'" in str(e)
    assert f"newer erel-sync than {__version__}" in str(e)


def test_an_unknown_top_level_section_is_agent_too_old() -> None:
    body = newer_body(None)
    body["secrets"] = []
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(envelope(body, 6), TRUSTED)
    assert err.value.reason == "AgentTooOld"
    assert "$.secrets: unknown field 'secrets'" in str(err.value)


def test_the_root_cause_comes_first_and_its_consequences_are_not_reported() -> None:
    """The Release carrying the unknown field is not built; the Group that uses it must not be
    reported as naming a missing Release (it sorts first by place), and the cause leads."""
    body = newer_body("5s")
    del body["requires"]
    body["groups"][0]["spec"]["hosts"] = ["web-1", "web-1"]  # a real problem of its own
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(envelope(body, 7), TRUSTED)
    text = str(err.value)
    assert err.value.reason == "AgentTooOld"
    assert "no Release named" not in text
    assert text.index("unknown field 'grace'") < text.index("listed twice")


def test_a_requirement_this_agent_meets_is_applied() -> None:
    body = newer_body(None)
    body["requires"] = __version__
    assert verify_envelope(envelope(body, 8), TRUSTED).state == STATE


@pytest.mark.parametrize("requires", [7, "", "not a version!"])
def test_a_malformed_requirement_is_invalid(requires: object) -> None:
    body = newer_body(None)
    body["requires"] = requires
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(envelope(body, 9), TRUSTED)
    assert err.value.reason == "InvalidState" and "$.requires" in str(err.value)


def test_the_publisher_still_refuses_the_unknown_field_at_its_line() -> None:
    """Strict where a person can fix it: the same field in the config repo is a `file:line`
    error, while in a signed body it marks a newer publisher."""
    result = validate_sources(
        [
            SourceFile("r.yaml", release_yaml(extra="  health:\n    grace: 5s\n").encode()),
            SourceFile("g.yaml", group_yaml().encode()),
        ]
    )
    assert not result.ok
    (problem,) = result.problems
    assert (problem.file, problem.line, problem.path) == ("r.yaml", 12, "$.spec.health.grace")
    assert problem.message.startswith("unknown field 'grace'")
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(envelope(newer_body("5s"), 10), TRUSTED)
    assert err.value.reason == "AgentTooOld"


class NoDriver:
    """Intake never reaches the driver: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"driver.{name} used during intake")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    settings = AgentSettings(
        host_id="web-1",
        trusted_keys=(TrustedKey("pub-1", PUB),),
        state_dir=str(tmp_path / "state"),
        releases_dir=str(tmp_path / "releases"),
        cache_dir=str(tmp_path / "cache"),
    )
    (tmp_path / "state").mkdir()
    a = Agent(settings, driver=NoDriver())  # type: ignore[arg-type]
    yield a
    a.snapshot_store.close()


async def test_agent_keeps_its_snapshot_and_reports_agent_too_old(agent: Agent) -> None:
    await agent.on_snapshot(envelope(newer_body(None), 1))
    assert agent.snapshot is not None and agent.snapshot.seq == 1
    assert agent.heartbeat()["snapshot_refused"] is None

    await agent.on_snapshot(envelope(newer_body("5s"), 2))
    assert agent.snapshot.seq == 1  # still in force, and still what is on disk
    stored = agent.snapshot_store.read()
    assert stored is not None and json.loads(stored)["seq"] == 1
    assert agent.counters["rejected.AgentTooOld"] == 1
    assert "rejected.InvalidState" not in agent.counters
    refused = agent.heartbeat()["snapshot_refused"]
    assert refused is not None
    assert {k: refused[k] for k in ("reason", "seq", "revision", "needs")} == {
        "reason": "AgentTooOld",
        "seq": 2,
        "revision": f"{2:040x}",
        "needs": NEWER,
    }
    assert NEWER in refused["message"]

    # The publisher's republish of the same snapshot keeps it reported.
    await agent.on_snapshot(envelope(newer_body("5s"), 2))
    assert agent.heartbeat()["snapshot_refused"]["seq"] == 2

    # A newer snapshot without the field is applied and clears it.
    await agent.on_snapshot(envelope(newer_body(None), 3))
    assert agent.snapshot.seq == 3
    assert agent.heartbeat()["snapshot_refused"] is None


async def test_junk_is_reported_until_a_snapshot_verifies_again(agent: Agent) -> None:
    """A refusal whose seq is only claimed (a forgery could claim any) must not stick for
    good, nor hide that the newest signed snapshot was refused."""
    await agent.on_snapshot(envelope(newer_body(None), 1))
    await agent.on_snapshot(b"not json")
    assert agent.heartbeat()["snapshot_refused"]["reason"] == "Malformed"
    await agent.on_snapshot(envelope(newer_body(None), 1))  # republished: verifies, duplicate
    assert agent.heartbeat()["snapshot_refused"] is None

    await agent.on_snapshot(envelope(newer_body("5s"), 2))
    forged = json.loads(envelope(newer_body(None), 99))
    forged["signature"] = base64.b64encode(b"0" * 64).decode()
    await agent.on_snapshot(canonical_json(forged))
    assert agent.counters["rejected.BadSignature"] == 1
    assert agent.heartbeat()["snapshot_refused"]["reason"] == "AgentTooOld"


def test_every_feature_is_known_to_this_code() -> None:
    """A Feature newer than this code's own version would make its agents refuse what its own
    publisher sends."""
    from erel_sync.model.documents import FEATURES

    assert all(Version(f.since) <= Version(__version__) for f in FEATURES)
