"""Canonical form and digest, documents round trip, names, durations, versions, schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from erel_sync.model.canonical import canonical_body, canonical_bytes, state_digest
from erel_sync.model.documents import (
    Feature,
    group_from_document,
    group_to_document,
    release_from_document,
    release_to_document,
    required_version,
)
from erel_sync.model.names import compare_versions, format_duration, parse_duration
from erel_sync.model.problems import ConfigError
from erel_sync.model.validate import SourceFile, state_from_body, validate_sources
from tests.configrepo import group_yaml, release_yaml

ROOT = Path(__file__).resolve().parents[2]


def state_of(files: dict[str, str]):  # type: ignore[no-untyped-def]
    result = validate_sources([SourceFile(p, c.encode()) for p, c in files.items()])
    assert result.ok, result.problems
    return result.state


def test_digest_ignores_file_order_layout_formatting_and_comments() -> None:
    a = state_of({"r/hello.yaml": release_yaml(), "g/web.yaml": group_yaml()})
    flow = (
        "# a comment\n"
        "{kind: Group, apiVersion: erel/v1, metadata: {name: web},"
        " spec: {releases: [{version: '0.1.0', name: hello}], hosts: [web-1], suspend: false}}\n"
    )
    b = state_of({"all.yaml": flow + "---\n" + release_yaml() + "# trailing\n"})
    assert state_digest(a) == state_digest(b)
    assert canonical_bytes(a) == canonical_bytes(b)


def test_digest_changes_with_content() -> None:
    a = state_of({"r.yaml": release_yaml(), "g.yaml": group_yaml()})
    b = state_of({"r.yaml": release_yaml(), "g.yaml": group_yaml(hosts="[web-2]")})
    assert state_digest(a) != state_digest(b)


def test_body_round_trip_and_recheck() -> None:
    sample = validate_sources(
        [
            SourceFile(p.relative_to(ROOT / "sample-repo").as_posix(), p.read_bytes())
            for p in (ROOT / "sample-repo").rglob("*.yaml")
        ]
    ).require()
    body = json.loads(canonical_bytes(sample))
    again, _ = state_from_body(body)
    assert again == sample
    assert state_digest(again) == state_digest(sample)


def test_body_recheck_reuses_unchanged_documents_only() -> None:
    body: dict[str, Any] = json.loads(
        canonical_bytes(state_of({"r.yaml": release_yaml(), "g.yaml": group_yaml()}))
    )
    first, known = state_from_body(body)
    changed = json.loads(json.dumps(body))
    changed["groups"][0]["spec"]["releases"][0]["version"] = "9.9.9"
    # The changed group is checked again (and refused); the unchanged release is not rebuilt.
    with pytest.raises(ConfigError, match=re.escape("has no version '9.9.9'")):
        state_from_body(changed, known=known)
    same, again = state_from_body(json.loads(json.dumps(body)), known=known)
    assert same == first
    (name,) = first.releases
    assert same.releases[name] is first.releases[name]
    # A document that was once refused is never in `known`, so it is always checked.
    broken = json.loads(json.dumps(body))
    broken["releases"][0]["spec"]["bogus"] = 1
    with pytest.raises(ConfigError) as refused:
        state_from_body(broken, known=again)
    assert any("bogus" in str(p) for p in refused.value.problems)


def test_agent_recheck_refuses_a_tampered_body() -> None:
    body: dict[str, Any] = json.loads(
        canonical_bytes(state_of({"r.yaml": release_yaml(), "g.yaml": group_yaml()}))
    )
    body["groups"][0]["spec"]["releases"][0]["version"] = "9.9.9"
    with pytest.raises(ConfigError, match=re.escape("has no version '9.9.9'")):
        state_from_body(body)
    with pytest.raises(ConfigError):
        state_from_body({"releases": "nope", "groups": []})


def test_documents_round_trip() -> None:
    s = state_of(
        {
            "r.yaml": release_yaml(
                extra="  upgrade: hot\n  health: {probation: 1m30s}\n"
                "  config: {sys_config: {hello: {k: [1, {$atom: x}]}}, vm_args: {'+K': 'true'}}\n"
            ),
            "g.yaml": group_yaml(
                extra="  selector:\n    labels: {role: web}\n"
                "    expressions: [{key: zone, operator: In, values: [a, b]}]\n"
                "  rollout: {max_unavailable: '25%'}\n"
            ),
        }
    )
    rel, grp = s.releases["hello"], s.groups["web"]
    assert rel.health.probation == 90.0
    assert release_from_document(release_to_document(rel)) == rel
    assert group_from_document(group_to_document(grp)) == grp


def test_canonical_body_is_sparse() -> None:
    """Optional fields at their default are left out, so an optional field added by a later
    erel-sync changes nothing for older agents while it stays at its default. Kept where the
    schema needs them: `hosts` (no selector), a selector's `labels`, a group's `config: {}`."""
    plain = state_of({"r.yaml": release_yaml(), "g.yaml": group_yaml()})
    body = canonical_body(plain)
    assert set(body) == {"releases", "groups"}  # no `requires`: nothing newer than the baseline
    assert set(body["releases"][0]["spec"]) == {"versions"}
    assert set(body["groups"][0]["spec"]) == {"hosts", "releases"}
    edge = state_of(
        {
            "r.yaml": release_yaml(extra="  stop_timeout: 30s\n  health: {rpc: 'm:ok/0'}\n"),
            "g.yaml": group_yaml(
                hosts="[]",
                releases=(),
                extra="  selector: {labels: {}}\n  allow_empty: true\n  suspend: false\n"
                "  rollout: {max_unavailable: 1}\n",
            ),
            "h.yaml": group_yaml(
                name="db", hosts="[db-1]", extra="      config: {}\n  suspend: true\n"
            ),
        }
    )
    body = canonical_body(edge)
    assert body["releases"][0]["spec"]["health"] == {"rpc": "m:ok/0"}
    assert "stop_timeout" not in body["releases"][0]["spec"]
    db, web = body["groups"]
    assert web["spec"] == {
        "hosts": [],
        "releases": [],
        "selector": {"labels": {}},
        "allow_empty": True,
    }
    assert db["spec"]["releases"][0]["config"] == {} and db["spec"]["suspend"] is True
    again, _ = state_from_body(json.loads(canonical_bytes(edge)))
    assert again == edge


def test_required_version_names_the_newest_feature_used() -> None:
    """The publisher side of `requires`: a field, or only some values of one, newer than the
    baseline, found through lists (`*`)."""
    body = canonical_body(
        state_of({"r.yaml": release_yaml(extra="  upgrade: hot\n"), "g.yaml": group_yaml()})
    )
    docs = [*body["releases"], *body["groups"]]
    size = Feature("Release", ("spec", "versions", "*", "artifact", "size"), "0.4.0")
    hot = Feature("Release", ("spec", "upgrade"), "0.3.0", values=("hot",))
    restart = Feature("Release", ("spec", "upgrade"), "0.5.0", values=("restart",))
    grace = Feature("Group", ("spec", "grace"), "0.6.0")
    assert required_version(docs) is None
    assert required_version(docs, [size, restart, grace]) is None
    assert required_version(docs, [hot, size]) == "0.3.0"
    docs[0]["spec"]["versions"][0]["artifact"]["size"] = 10
    assert required_version(docs, [hot, size, restart]) == "0.4.0"
    assert required_version(docs, [Feature("Release", ("spec",), "0.1.0")]) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1m30s", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", "30", "1.5s", "30 seconds", "-1s", "1d"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("a", "b", "cmp"),
    [
        ("0.10.0", "0.9.0", 1),
        ("1.0.0", "1.0.0-rc1", 1),
        ("1.0.0-rc1", "1.0.0-rc2", -1),
        ("2.0", "2.0", 0),
        ("1.2.3", "1.10.0", -1),
    ],
)
def test_version_order(a: str, b: str, cmp: int) -> None:
    assert compare_versions(a, b) == cmp


def _walk_properties(schema: Any, where: str) -> list[str]:
    missing: list[str] = []
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            if not (isinstance(sub, dict) and sub.get("description")):
                missing.append(f"{where}.{name}")
        for key, sub in schema.items():
            missing += _walk_properties(sub, f"{where}.{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            missing += _walk_properties(sub, f"{where}[{i}]")
    return missing


@pytest.mark.parametrize("name", ["release", "group", "agent-settings"])
def test_schemas_describe_every_field(name: str) -> None:
    schema = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["$id"].endswith(f"{name}.schema.json")
    assert _walk_properties(schema, name) == []
    assert schema["additionalProperties"] is False
