"""age encryption (pyrage) for secrets: host identities, encrypting to recipients, decrypting.

Used by the agent (its identity in its state directory, created at first start; decrypting the
secrets of the releases it runs, right before they are rendered) and by the CLI (`keygen
--host`, `secret encrypt`, `secret rekey`). No cryptography of our own: age's X25519
recipients, through pyrage. The identity file holds one `AGE-SECRET-KEY-1…` line, mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyrage
from pyrage import x25519

from erel_sync.adapters import store

IDENTITY_FILE = "host.age"


class AgeError(Exception):
    """A key or recipient that age refuses (the message names the file or the value)."""


def load_identity(path: Path) -> x25519.Identity:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise AgeError(f"cannot read identity {path}: {e}") from None
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    try:
        return x25519.Identity.from_str(lines[-1] if lines else "")
    except (pyrage.IdentityError, ValueError):
        raise AgeError(f"{path} holds no age identity (AGE-SECRET-KEY-1...)") from None


def identity(state_dir: Path, *, create: bool = True) -> x25519.Identity:
    """This host's identity (`state_dir/host.age`), created (0600, fsynced) when absent."""
    path = state_dir / IDENTITY_FILE
    if path.exists() or not create:
        return load_identity(path)
    key = x25519.Identity.generate()
    recipient = key.to_public()
    text = f"# erel-sync host identity\n# public key: {recipient}\n{key}\n"
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    store.write_atomic(path, text.encode("ascii"), mode=0o600)
    return key


def recipient_of(key: x25519.Identity) -> str:
    return str(key.to_public())


def parse_recipient(text: str) -> x25519.Recipient:
    try:
        return x25519.Recipient.from_str(text.strip())
    except (pyrage.RecipientError, ValueError):
        raise AgeError(f"{text[:70]!r} is not an age recipient (age1...)") from None


def encrypt(plain: bytes, to: list[str]) -> bytes:
    return bytes(pyrage.encrypt(plain, [parse_recipient(r) for r in to]))


class Decrypt:
    """`model.secrets.reveal`'s decrypt function for one identity."""

    def __init__(self, key: x25519.Identity) -> None:
        self._key = key

    def __call__(self, data: bytes) -> bytes:
        return bytes(pyrage.decrypt(data, [self._key]))


class HostKey:
    """The agent's identity, read (or created) on first use: the agent holds its state
    directory's lock by then. Decrypts like `Decrypt`; raises AgeError when the file is bad."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._key: x25519.Identity | None = None

    def load(self) -> x25519.Identity:
        if self._key is None:
            self._key = identity(self.state_dir)
        return self._key

    def recipient(self) -> str:
        return recipient_of(self.load())

    def __call__(self, data: bytes) -> bytes:
        return bytes(pyrage.decrypt(data, [self.load()]))
