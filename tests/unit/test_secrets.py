"""Secrets in config (`model.secrets`, `adapters.age`): their shape as `validate` checks it
(file:line), revealing them with a host's identity, what an agent does with a release whose
secret is not for it (`SecretUnavailable`: nothing), what `plan` says ("secret changed"),
and the `requires` that keeps older agents from misreading them. age is real (pyrage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from erel_sync.adapters import age
from erel_sync.agent.reconciler import Reconciler
from erel_sync.agent.secretcheck import SecretCheck
from erel_sync.core.desired import host_releases
from erel_sync.core.matching import HostIdentity
from erel_sync.core.reconcile import SkipReason, plan
from erel_sync.core.revdiff import diff_releases
from erel_sync.model import secrets
from erel_sync.model.canonical import canonical_body
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml
from tests.unit.reconcilerkit import FakeDriver, snapshot

KEYS = {name: age.x25519.Identity.generate() for name in ("web-1", "web-2", "ops")}
TO = {name: age.recipient_of(k) for name, k in KEYS.items()}
PLAIN = "correct horse battery staple"


def secret(value: Any = PLAIN, to: tuple[str, ...] = ("web-1", "ops")) -> dict[str, Any]:
    recipients = [TO[n] for n in to]
    return secrets.secret_node(age.encrypt(secrets.plain_json(value), recipients), recipients)


def release_with(value: Any) -> str:
    return release_yaml(
        extra=f"  config:\n    sys_config:\n      hello:\n        greeting: {json.dumps(value)}\n"
    )


def validated(value: Any):  # type: ignore[no-untyped-def]
    files = {"r.yaml": release_with(value), "g.yaml": group_yaml()}
    return validate_sources([SourceFile(p, c.encode()) for p, c in files.items()])


def test_a_secret_reveals_for_its_recipients_only_and_redacts_to_a_digest() -> None:
    tree = {"hello": {"greeting": secret(), "plain": [1, secret({"$binary": "b"}, ("web-1",))]}}
    assert [p for p, _ in secrets.find_secrets(tree)] == [
        ("hello", "greeting"),
        ("hello", "plain", 1),
    ]
    revealed = secrets.reveal(tree, age.Decrypt(KEYS["web-1"]))
    assert revealed == {"hello": {"greeting": PLAIN, "plain": [1, {"$binary": "b"}]}}
    with pytest.raises(secrets.SecretUnavailable) as e:
        secrets.reveal(tree, age.Decrypt(KEYS["web-2"]))
    assert e.value.where == "$.hello.greeting" and PLAIN not in str(e.value)
    redacted = json.dumps(secrets.redact(tree))
    assert "<secret " in redacted and PLAIN not in redacted and "age-encryption" not in redacted


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda s: {"$secret": "x"}, "{$secret: {age: <base64>, to: [recipients]}}"),
        (lambda s: {"$secret": {**s["$secret"], "to": []}}, "`to` must list"),
        (lambda s: {"$secret": {**s["$secret"], "to": ["bob"]}}, "not an age recipient"),
        (lambda s: {"$secret": {**s["$secret"], "age": "%%%"}}, "not base64"),
        (lambda s: {"$secret": {**s["$secret"], "age": "aGVsbG8="}}, "not an age file"),
        (lambda s: {"$secret": {**s["$secret"], "to": [TO["web-1"]]}}, "2 recipient stanza"),
    ],
)
def test_validate_refuses_a_malformed_secret_at_its_line(mangle: Any, message: str) -> None:
    assert validated(secret()).ok
    result = validated(mangle(secret()))
    assert not result.ok
    (problem,) = result.problems
    assert problem.file == "r.yaml" and problem.line == 14, problem  # the greeting
    assert problem.path == "$.spec.config.sys_config.hello.greeting"
    assert message in problem.message


def test_a_body_with_secrets_requires_an_agent_that_knows_them() -> None:
    state = validated(secret()).require()
    assert canonical_body(state).get("requires") == "0.3.0"
    assert "requires" not in canonical_body(validated("hi").require())


def test_an_unreadable_secret_leaves_its_release_alone_and_says_where() -> None:
    snap = snapshot(1, release_extra=release_with(secret(to=("web-2",))).split("\n", 10)[-1])
    group = snap.state.groups["web"]
    desired = host_releases(snap.state, group)
    locked = SecretCheck("web-1", age.Decrypt(KEYS["web-1"])).locked(desired)
    assert locked == {"hello": "$.hello.greeting: not encrypted to this host"}
    assert SecretCheck("web-2", age.Decrypt(KEYS["web-2"])).locked(desired) == {}
    assert "hello" in SecretCheck("web-1", None).locked(desired)  # no identity at all
    p = plan(desired, {}, {}, seq=1, now=0.0, locked=locked)
    assert p.actions == () and [(s.release, s.reason) for s in p.skipped] == [
        ("hello", SkipReason.SECRET)
    ]


async def test_the_agent_reports_secret_unavailable_and_installs_nothing() -> None:
    driver = FakeDriver(None)
    r = Reconciler(
        host=HostIdentity("web-1", {}), driver=driver, memory={}, holds={},  # type: ignore[arg-type]
        decrypt=age.Decrypt(KEYS["web-1"]),
    )  # fmt: skip
    r.snapshot = snapshot(1, release_extra=release_with(secret(to=("web-2",))).split("\n", 10)[-1])
    await r.tick()
    assert driver.calls == []
    assert r.status is not None and not r.status.converged
    (hello,) = [x for x in r.status.releases if x.name == "hello"]
    assert (hello.state, hello.reason) == ("Failed", "SecretUnavailable")
    assert hello.last_error == "$.hello.greeting: not encrypted to this host"


def test_plan_says_secret_changed_never_the_value() -> None:
    def desired(state: Any) -> Any:
        return host_releases(state, state.groups["web"])

    before = desired(validated(secret()).require())
    after = desired(validated(secret()).require())  # encrypted again: a new ciphertext
    (change,) = diff_releases(before, after)
    text = change.describe()
    assert "hello.greeting secret changed" in text and "needs a restart" in text
    assert PLAIN not in text and "age" not in text.replace("changed", "")


def test_a_host_identity_is_made_once_private_and_kept(tmp_path: Path) -> None:
    key = age.identity(tmp_path / "state")
    assert (tmp_path / "state" / age.IDENTITY_FILE).stat().st_mode & 0o777 == 0o600
    assert age.recipient_of(age.identity(tmp_path / "state")) == age.recipient_of(key)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / age.IDENTITY_FILE).write_text("not a key\n")
    with pytest.raises(age.AgeError, match="holds no age identity"):
        age.identity(tmp_path / "bad")


def test_validate_warns_about_a_group_recipient_a_secret_leaves_out() -> None:
    recipients = "".join(f"\n    {n}: {TO[n]}" for n in ("web-1", "web-2", "ops"))
    files = {
        "r.yaml": release_with(secret(to=("web-1", "ops"))),
        "g.yaml": group_yaml(extra=f"  recipients:{recipients}\n"),
    }
    result = validate_sources([SourceFile(p, c.encode()) for p, c in files.items()])
    assert result.ok and result.problems == ()
    (warning,) = result.warnings
    assert (warning.file, warning.line) == ("r.yaml", 14)
    assert "not encrypted to web-2 of group 'web'" in warning.message
    assert "SecretUnavailable" in warning.message
    state = result.require()
    assert dict(state.groups["web"].recipients) == {n: TO[n] for n in ("web-1", "web-2", "ops")}
    assert canonical_body(state).get("requires") == "0.3.0"
    files["r.yaml"] = release_with(secret(to=("web-1", "web-2", "ops")))
    result = validate_sources([SourceFile(p, c.encode()) for p, c in files.items()])
    assert result.ok and result.warnings == ()
