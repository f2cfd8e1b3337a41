"""Snapshot envelopes: what verifies, and every way one is refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from erel_sync.core.snapshot import (
    SnapshotRejected,
    build_envelope,
    generate_key,
    load_private_key,
    peek_seq,
    verify_envelope,
)
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
    assert snap.state == STATE and snap.digest == STATE.digest()
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
