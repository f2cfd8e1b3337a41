"""Signed snapshot envelopes: build, sign, parse and verify (DESIGN.md §3).

Pure (bytes in, bytes out; Ed25519 from `cryptography`). The publisher builds and signs; agents
verify before anything touches their disk, and peers answering a `state.request` forward the
envelope exactly as they stored it, so the publisher's signature travels with it.

Signed message: the canonical JSON of `{format, kind, seq, revision, digest}`; the digest is the
sha256 of the canonical body, so the signature covers the whole desired state.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from erel_sync.model.problems import ConfigError
from erel_sync.model.specs import DesiredState, canonical_json
from erel_sync.model.validate import KnownDocs, state_from_body

FORMAT = 1
KIND_SNAPSHOT = "snapshot"
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Agents only verify, with PyNaCl (libsodium, ~1 MiB resident); signing and key files use
# `cryptography` (its own OpenSSL, ~6 MiB), imported only by the publisher and `keygen`.
# Ed25519 signatures are deterministic and identical across the two.


class SnapshotRejected(Exception):
    """A snapshot that must not be applied; `reason` is a CamelCase constant for counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Snapshot:
    seq: int
    revision: str
    created: str
    digest: str
    key_id: str
    state: DesiredState
    raw: bytes  # the envelope exactly as received/stored; forwarded to peers unchanged
    # The body's documents as checked, for verifying the next snapshot faster.
    docs: KnownDocs = field(default_factory=dict, compare=False, repr=False)


def signed_message(seq: int, revision: str, digest: str) -> bytes:
    return canonical_json(
        {
            "format": FORMAT,
            "kind": KIND_SNAPSHOT,
            "seq": seq,
            "revision": revision,
            "digest": digest,
        }
    )


def generate_key() -> tuple[bytes, str]:
    """A new signing key: (PEM private key, base64 raw public key)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return pem, public_key_b64(key)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        Encoding,
        PublicFormat,
    )

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        load_pem_private_key,
    )

    key = load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the signing key must be an Ed25519 private key")
    return key


def build_envelope(
    state: DesiredState,
    *,
    seq: int,
    revision: str,
    created: str,
    key: Ed25519PrivateKey,
    key_id: str,
) -> bytes:
    body = state.canonical_body()
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    signature = key.sign(signed_message(seq, revision, digest))
    envelope = {
        "format": FORMAT,
        "kind": KIND_SNAPSHOT,
        "seq": seq,
        "revision": revision,
        "created": created,
        "digest": digest,
        "body": body,
        "signature": base64.b64encode(signature).decode(),
        "key_id": key_id,
    }
    return canonical_json(envelope)


def peek_seq(raw: bytes) -> int | None:
    """The seq of an envelope without verifying it (for ordering candidates only)."""
    try:
        seq = json.loads(raw).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def verify_envelope(
    raw: bytes, trusted: Mapping[str, str], *, previous: Snapshot | None = None
) -> Snapshot:
    """Parse and verify; raises SnapshotRejected with a reason. `trusted`: key id -> base64 key.

    `previous`: the snapshot held now; its documents that did not change are not re-checked."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise SnapshotRejected("Oversized", f"{len(raw)} bytes")
    try:
        env: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotRejected("Malformed", f"not JSON: {e}") from None
    if not isinstance(env, dict):
        raise SnapshotRejected("Malformed", "envelope is not an object")
    if env.get("format") != FORMAT or env.get("kind") != KIND_SNAPSHOT:
        raise SnapshotRejected(
            "UnsupportedFormat", f"format {env.get('format')!r} kind {env.get('kind')!r}"
        )
    seq, revision, digest = env.get("seq"), env.get("revision"), env.get("digest")
    key_id, signature, body = env.get("key_id"), env.get("signature"), env.get("body")
    if not (
        isinstance(seq, int)
        and not isinstance(seq, bool)
        and seq > 0
        and isinstance(revision, str)
        and isinstance(digest, str)
        and isinstance(key_id, str)
        and isinstance(signature, str)
        and isinstance(body, dict)
    ):
        raise SnapshotRejected("Malformed", "missing or mistyped envelope fields")
    public = trusted.get(key_id)
    if public is None:
        raise SnapshotRejected("UnknownKey", f"key id {key_id!r} is not trusted")
    if hashlib.sha256(canonical_json(body)).hexdigest() != digest:
        raise SnapshotRejected("DigestMismatch", "body does not match its digest")
    try:
        VerifyKey(base64.b64decode(public)).verify(
            signed_message(seq, revision, digest), base64.b64decode(signature, validate=True)
        )
    except (BadSignatureError, ValueError, TypeError) as e:
        raise SnapshotRejected(
            "BadSignature", f"signature does not verify ({e or 'invalid'})"
        ) from None
    try:
        state, docs = state_from_body(body, known=previous.docs if previous else None)
    except ConfigError as e:
        raise SnapshotRejected("InvalidState", str(e)) from None
    created = str(env.get("created", ""))
    return Snapshot(seq, revision, created, digest, key_id, state, raw, docs)
