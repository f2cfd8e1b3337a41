"""Signed snapshot envelopes: build, sign, parse and verify (docs/broker.md).

Pure (bytes in, bytes out; Ed25519 from `cryptography`). The publisher builds and signs; agents
verify before anything touches their disk, and peers answering a `state.request` forward the
envelope exactly as they stored it, so the publisher's signature travels with it.

Signed message: the canonical JSON of `{format, kind, seq, revision, digest}`; the digest is the
sha256 of the canonical body, so the signature covers the whole desired state (and the body's
`requires`, the erel-sync version it needs).

Agents of mixed versions (docs/architecture.md, "Compatibility between versions"): a verified
snapshot that needs a newer agent is refused as `AgentTooOld` (with the version needed when the
body says it), never as `InvalidState` or a bad signature. `Refusal` is what the agent reports
of the newest refusal in its heartbeats (`snapshot_refused`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from erel_sync import __version__
from erel_sync.core.reasons import MESSAGE_LIMIT, AgentTooOld, InvalidState
from erel_sync.core.signing import signature_problem
from erel_sync.model.canonical import canonical_body
from erel_sync.model.problems import ConfigError
from erel_sync.model.specs import DesiredState, canonical_json
from erel_sync.model.validate import BodyRefused, KnownDocs, state_from_body

FORMAT = 1
KIND_SNAPSHOT = "snapshot"
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Agents only verify, with PyNaCl (libsodium, ~1 MiB resident); signing and key files use
# `cryptography` (its own OpenSSL, ~6 MiB), imported only by the publisher and `keygen`.
# Ed25519 signatures are deterministic and identical across the two.


class SnapshotRejected(Exception):
    """A snapshot that must not be applied; `reason` is a CamelCase constant for counters.

    `seq`, `revision`: as the envelope gives them (authentic only for `SIGNED_REFUSALS`);
    `needs`: for AgentTooOld, the erel-sync version the snapshot requires, when it says."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        seq: int | None = None,
        revision: str | None = None,
        needs: str | None = None,
    ) -> None:
        if len(message) > MESSAGE_LIMIT:
            message = message[: MESSAGE_LIMIT - 1] + "…"
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.seq = seq
        self.revision = revision[:64] if revision is not None else None  # may be anyone's text
        self.needs = needs


# Refused after the signature verified: seq and revision are the publisher's own.
SIGNED_REFUSALS = frozenset({AgentTooOld, InvalidState})


@dataclass(frozen=True)
class Refusal:
    """The snapshot refusal an agent reports (heartbeat `snapshot_refused`) while in force.

    `verified`: how many snapshots the agent had verified before it (see `in_force`)."""

    reason: str
    message: str
    seq: int | None
    revision: str | None
    needs: str | None
    verified: int

    @classmethod
    def of(cls, e: SnapshotRejected, verified: int) -> Refusal:
        return cls(e.reason, e.message, e.seq, e.revision, e.needs, verified)

    @property
    def signed(self) -> bool:
        return self.reason in SIGNED_REFUSALS

    def in_force(self, held_seq: int, verified: int) -> bool:
        """A signed refusal holds until the agent holds that seq or a newer one. Any other (its
        seq is only claimed: junk or a forgery could claim any) holds until a snapshot verifies
        again, be it a duplicate (the publisher republishes every minute)."""
        if self.signed:
            return self.seq is not None and self.seq > held_seq
        return verified == self.verified

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "message": self.message,
            "seq": self.seq,
            "revision": self.revision,
            "needs": self.needs,
        }


def report_refusal(
    current: Refusal | None, new: Refusal, *, held_seq: int, verified: int
) -> Refusal | None:
    """The refusal to report after `new`. A signed refusal older than what is held changes
    nothing; junk does not hide that the newest signed snapshot was refused."""
    if not new.in_force(held_seq, verified):
        return current
    keep = (
        current is not None
        and current.signed
        and current.in_force(held_seq, verified)
        and (not new.signed or (new.seq or 0) < (current.seq or 0))
    )
    return current if keep else new


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
    body = canonical_body(state)
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
        raise SnapshotRejected(
            "UnknownKey", f"key id {key_id[:64]!r} is not trusted", seq=seq, revision=revision
        )
    if hashlib.sha256(canonical_json(body)).hexdigest() != digest:
        raise SnapshotRejected(
            "DigestMismatch", "body does not match its digest", seq=seq, revision=revision
        )
    problem = signature_problem(public, signed_message(seq, revision, digest), signature)
    if problem is not None:
        raise SnapshotRejected(
            "BadSignature", f"signature does not verify ({problem})", seq=seq, revision=revision
        )
    try:
        state, docs = state_from_body(body, known=previous.docs if previous else None)
    except BodyRefused as e:
        # A body from a newer model: it says so (`needs`), or it carries fields this code does
        # not know. Either explains whatever else the re-check found, so it is the reason.
        if e.needs is not None:
            raise SnapshotRejected(
                AgentTooOld, str(e), needs=e.needs, seq=seq, revision=revision
            ) from None
        if e.unknown:
            message = f"made by a newer erel-sync than {__version__}: {e}"
            raise SnapshotRejected(AgentTooOld, message, seq=seq, revision=revision) from None
        raise SnapshotRejected(InvalidState, str(e), seq=seq, revision=revision) from None
    except ConfigError as e:
        raise SnapshotRejected(InvalidState, str(e), seq=seq, revision=revision) from None
    created = str(env.get("created", ""))
    return Snapshot(seq, revision, created, digest, key_id, state, raw, docs)
