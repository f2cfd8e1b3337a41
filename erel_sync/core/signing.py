"""Ed25519 signature checks, one way for the three signed things: snapshots
(`core.snapshot`), operator commands (`core.control`) and rollout documents
(`core.rolloutdoc`). Pure; each caller raises its own refusal with its own reason.
"""

from __future__ import annotations

import base64

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey


def signature_problem(public_b64: str, message: bytes, signature_b64: str) -> str | None:
    """None when `signature_b64` is `message` signed by the key `public_b64`; else why not,
    in a few words (a bad signature, or a key or signature that is not valid base64)."""
    try:
        VerifyKey(base64.b64decode(public_b64)).verify(
            message, base64.b64decode(signature_b64, validate=True)
        )
    except (BadSignatureError, ValueError, TypeError) as e:
        return str(e) or "invalid"
    return None
