"""Secrets in a Release's or Group's `config`: values encrypted with age to the hosts that may
read them, kept as ciphertext in git, the stream and every snapshot on disk.

Pure: finding, checking and replacing secret values in a config tree (the publisher's and the
agent's validation check their shape; the agent reveals them right before rendering). The
cryptography is age (`adapters.age`, through pyrage); this module never sees a key. A secret
is a one-key mapping in place of any config value:

    api_key: {$secret: {age: <base64 of the age file>, to: [age1..., age1...]}}

`age` is the binary age file (header `age-encryption.org/v1`) in base64; the plain text is the
JSON of the value it stands for (a string, a number, `{$binary: ...}`, a whole proplist), so a
decrypted secret renders like any other value (`core.nodeconfig`). `to` lists the recipients
it was encrypted to: age's X25519 stanzas do not name their recipient, so `validate` reads this
list (like SOPS's metadata) to warn about a host of the group left out. docs/secrets.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

SECRET_KEY = "$secret"
AGE_HEADER = b"age-encryption.org/v1\n"
RECIPIENT_RE = re.compile(r"age1[02-9ac-hj-np-z]{58}\Z")
MAX_SECRET_BYTES = 64 * 1024


class SecretUnavailable(Exception):
    """A secret this host cannot decrypt (not a recipient, or damaged); names the path only."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where


def is_secret(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and SECRET_KEY in value


Path = tuple[str | int, ...]


def find_secrets(tree: Any, at: Path = ()) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """Every secret in a config tree, with its path inside it."""
    if is_secret(tree):
        yield at, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from find_secrets(value, (*at, key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from find_secrets(value, (*at, i))


def secret_problem(node: Mapping[str, Any]) -> str | None:
    """What is wrong with a secret's shape (None: well formed). Never decrypts."""
    inner = node.get(SECRET_KEY)
    if not isinstance(inner, Mapping) or set(inner) != {"age", "to"}:
        return "a secret is {$secret: {age: <base64>, to: [recipients]}}"
    to = inner["to"]
    if not isinstance(to, list | tuple) or not to or not all(isinstance(r, str) for r in to):
        return "`to` must list the age recipients it is encrypted to"
    bad = [r for r in to if not RECIPIENT_RE.match(r)]
    if bad:
        return f"`to` holds {bad[0][:70]!r}, not an age recipient (age1...)"
    data = ciphertext(node)
    if data is None:
        return "`age` is not base64"
    if len(data) > MAX_SECRET_BYTES:
        return f"`age` holds {len(data)} bytes (at most {MAX_SECRET_BYTES})"
    if not data.startswith(AGE_HEADER):
        return "`age` is not an age file (age-encryption.org/v1)"
    stanzas = data.split(b"\n---", 1)[0].count(b"\n-> X25519 ")
    if stanzas != len(to):
        return f"`age` has {stanzas} recipient stanza(s), `to` lists {len(to)}"
    return None


def ciphertext(node: Mapping[str, Any]) -> bytes | None:
    inner = node.get(SECRET_KEY)
    text = inner.get("age") if isinstance(inner, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def recipients(node: Mapping[str, Any]) -> tuple[str, ...]:
    inner = node.get(SECRET_KEY)
    to = inner.get("to") if isinstance(inner, Mapping) else None
    return tuple(r for r in to if isinstance(r, str)) if isinstance(to, list | tuple) else ()


def secret_node(data: bytes, to: list[str]) -> dict[str, Any]:
    """The config value for an age file `data` encrypted to `to`."""
    return {SECRET_KEY: {"age": base64.b64encode(data).decode(), "to": list(to)}}


def reveal(tree: Any, decrypt: Callable[[bytes], bytes] | None, where: str = "$") -> Any:
    """`tree` with every secret replaced by the value it stands for; raises SecretUnavailable
    (naming the path, never the content) when one cannot be decrypted or is not JSON.
    `decrypt` None: this host has no identity, so no secret is readable here."""
    if is_secret(tree):
        data = ciphertext(tree)
        if data is None or secret_problem(tree) is not None:
            raise SecretUnavailable(where, "malformed secret")
        if decrypt is None:
            raise SecretUnavailable(where, "this host has no age identity")
        try:
            plain = decrypt(data)
        except Exception:  # age says only that no identity matched: the path says enough
            raise SecretUnavailable(where, "not encrypted to this host") from None
        try:
            return json.loads(plain)
        except (ValueError, UnicodeDecodeError):
            raise SecretUnavailable(where, "decrypts to something that is not JSON") from None
    if isinstance(tree, Mapping):
        return {k: reveal(v, decrypt, f"{where}.{k}") for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [reveal(v, decrypt, f"{where}[{i}]") for i, v in enumerate(tree)]
    return tree


def redact(tree: Any) -> Any:
    """`tree` with each secret as `<secret …>` and a short digest of its ciphertext, for `plan`
    and messages: a changed secret shows as changed, its content never."""
    if is_secret(tree):
        data = ciphertext(tree) or b""
        return f"<secret {hashlib.sha256(data).hexdigest()[:12]}>"
    if isinstance(tree, Mapping):
        return {k: redact(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [redact(v) for v in tree]
    return tree


def has_secrets(tree: Any) -> bool:
    return next(find_secrets(tree), None) is not None


def plain_json(value: Any) -> bytes:
    """What `secret encrypt` encrypts: the value's JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
