"""Snapshot envelopes: what verifies, and every way one is refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from erel_sync.core.snapshot import (
    Refusal,
    SnapshotRejected,
    build_envelope,
    generate_key,
    load_private_key,
    peek_seq,
    report_refusal,
    verify_envelope,
)
from erel_sync.model.canonical import state_digest
from erel_sync.model.specs import canonical_json
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml

STATE = validate_sources(
    [SourceFile("r.yaml", release_yaml().encode()), SourceFile("g.yaml", group_yaml().encode())]
).require()
PEM, PUB = generate_key()
KEY = load_private_key(PEM)
TRUSTED = {"pub-1": PUB}


def envelope(seq: int = 7, key_id: str = "pub-1") -> bytes:
    return build_envelope(
        STATE, seq=seq, revision="a" * 40, created="2026-11-24T00:00:00Z", key=KEY, key_id=key_id
    )


def mutate(raw: bytes, change: Any) -> bytes:
    env = json.loads(raw)
    change(env)
    return canonical_json(env)


def test_round_trip() -> None:
    snap = verify_envelope(envelope(), TRUSTED)
    assert (snap.seq, snap.revision, snap.key_id) == (7, "a" * 40, "pub-1")
    assert snap.state == STATE and snap.digest == state_digest(STATE)
    assert peek_seq(snap.raw) == 7


def _set_version(env: dict[str, Any]) -> None:
    env["body"]["groups"][0]["spec"]["releases"][0]["version"] = "0.0.9"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "Malformed"),
        (b"[1, 2]", "Malformed"),
        (b"x" * (16 * 1024 * 1024 + 1), "Oversized"),
        (mutate(envelope(), lambda e: e.update(format=2)), "UnsupportedFormat"),
        (mutate(envelope(), lambda e: e.pop("signature")), "Malformed"),
        (mutate(envelope(), lambda e: e.update(seq="7")), "Malformed"),
        (envelope(key_id="stranger"), "UnknownKey"),
        (mutate(envelope(), _set_version), "DigestMismatch"),
        (mutate(envelope(), lambda e: e.update(seq=8)), "BadSignature"),
        (mutate(envelope(), lambda e: e.update(revision="b" * 40)), "BadSignature"),
        (
            mutate(envelope(), lambda e: e.update(signature=base64.b64encode(b"0" * 64).decode())),
            "BadSignature",
        ),
    ],
)
def test_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(raw, TRUSTED)
    assert err.value.reason == reason


def test_signed_but_invalid_state_is_refused() -> None:
    """A publisher bug or a stolen key must still not deliver an invalid state."""
    env = json.loads(envelope())
    _set_version(env)
    import hashlib

    from erel_sync.core.snapshot import signed_message

    env["digest"] = hashlib.sha256(canonical_json(env["body"])).hexdigest()
    env["signature"] = base64.b64encode(
        KEY.sign(signed_message(env["seq"], env["revision"], env["digest"]))
    ).decode()
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(canonical_json(env), TRUSTED)
    assert err.value.reason == "InvalidState"
    assert "has no version '0.0.9'" in str(err.value)


def test_refusals_after_the_signature_carry_seq_and_revision() -> None:
    env = json.loads(envelope(seq=9))
    _set_version(env)
    import hashlib

    from erel_sync.core.snapshot import signed_message

    env["digest"] = hashlib.sha256(canonical_json(env["body"])).hexdigest()
    env["signature"] = base64.b64encode(
        KEY.sign(signed_message(9, env["revision"], env["digest"]))
    ).decode()
    with pytest.raises(SnapshotRejected) as err:
        verify_envelope(canonical_json(env), TRUSTED)
    assert (err.value.reason, err.value.seq, err.value.revision) == ("InvalidState", 9, "a" * 40)
    assert err.value.needs is None
    long = SnapshotRejected("Malformed", "x" * 5000)
    assert len(long.message) <= 512 and len(str(long)) < 600


def _refusal(reason: str, seq: int | None, verified: int = 0) -> Refusal:
    return Refusal(reason, "why", seq, None, None, verified)


@pytest.mark.parametrize(
    ("current", "new", "held", "verified", "reported"),
    [
        # A signed refusal of a snapshot older than the one held is history, not news.
        (None, _refusal("AgentTooOld", 5), 5, 0, None),
        (None, _refusal("AgentTooOld", 6), 5, 0, "AgentTooOld:6"),
        # Junk (its seq only claimed) does not hide that the newest snapshot was refused...
        (_refusal("AgentTooOld", 7), _refusal("BadSignature", 99), 5, 0, "AgentTooOld:7"),
        # ...a newer signed refusal does, an older one does not.
        (_refusal("AgentTooOld", 7), _refusal("InvalidState", 8), 5, 0, "InvalidState:8"),
        (_refusal("AgentTooOld", 8), _refusal("InvalidState", 7), 5, 0, "AgentTooOld:8"),
        # Once the held snapshot caught up, the old refusal is gone and junk is news.
        (_refusal("AgentTooOld", 7), _refusal("Malformed", None, 3), 7, 3, "Malformed:None"),
        (_refusal("Malformed", None, 1), _refusal("UnknownKey", 4, 2), 5, 2, "UnknownKey:4"),
    ],
)
def test_which_refusal_is_reported(
    current: Refusal | None, new: Refusal, held: int, verified: int, reported: str | None
) -> None:
    r = report_refusal(current, new, held_seq=held, verified=verified)
    assert (f"{r.reason}:{r.seq}" if r else None) == reported


def test_a_refusal_stays_in_force_until_superseded() -> None:
    signed, junk = _refusal("AgentTooOld", 7), _refusal("Malformed", None, verified=3)
    assert signed.in_force(held_seq=6, verified=9) and not signed.in_force(held_seq=7, verified=0)
    assert junk.in_force(held_seq=99, verified=3) and not junk.in_force(held_seq=0, verified=4)
    assert signed.to_json() == {
        "reason": "AgentTooOld",
        "message": "why",
        "seq": 7,
        "revision": None,
        "needs": None,
    }
