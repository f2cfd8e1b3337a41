"""The canonical form of a desired state: the snapshot body and its content digest.

Pure. The publisher signs this body (`core.snapshot.build_envelope`), agents check the digest
against it, and `erel-sync validate` prints the digest. Lives apart from `model.specs` because
the body is made of normalised documents (`model.documents`), which are built from specs.
The body is sparse: `{releases, groups}`, plus `requires` (the oldest erel-sync that
understands them) only when that is newer than the baseline, so a body that needs nothing new
stays readable by every agent since the baseline.
"""

from __future__ import annotations

import hashlib
from typing import Any

from erel_sync.model.documents import group_to_document, release_to_document, required_version
from erel_sync.model.specs import DesiredState, canonical_json


def canonical_body(state: DesiredState) -> dict[str, Any]:
    body: dict[str, Any] = {
        "releases": [release_to_document(state.releases[n]) for n in sorted(state.releases)],
        "groups": [group_to_document(state.groups[n]) for n in sorted(state.groups)],
    }
    needs = required_version([*body["releases"], *body["groups"]])
    if needs is not None:
        body["requires"] = needs
    return body


def canonical_bytes(state: DesiredState) -> bytes:
    return canonical_json(canonical_body(state))


def state_digest(state: DesiredState) -> str:
    """Equal content gives an equal digest, whatever the files and their order in git."""
    return hashlib.sha256(canonical_bytes(state)).hexdigest()
