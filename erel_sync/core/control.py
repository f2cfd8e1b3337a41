"""Operator commands (`erel.control` and the agent's local socket): envelope, signature, checks.

Pure (bytes in, bytes out). The CLI builds and signs a command; an agent parses it and checks,
before anything runs, that it is for this host, not expired, not replayed and, when it changes
something, signed by one of the operator keys in its settings (docs/operating.md).

Envelope (JSON): `{format: 1, kind: "command", id, command, release, target, issued, expires,
key_id, signature}`. `target` is `host.<id>`, `group.<name>` or `all`; it is inside the signed
bytes, so a command captured for one host cannot be replayed to another. `issued`/`expires` are
unix seconds; an agent refuses a command after `expires` (a TTL, so a command queued through a
broker outage never runs late) and one issued further in the future than the allowed clock skew.
The signature is Ed25519 over `SIGNING_DOMAIN` + the canonical JSON of every other field.

Reply (JSON): `{format: 1, kind: "reply", id, host_id, instance, ok, reason, message, result}`.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from erel_sync.core.signing import signature_problem
from erel_sync.model.names import NAME_RE
from erel_sync.model.specs import canonical_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FORMAT = 1
KIND_COMMAND = "command"
KIND_REPLY = "reply"
SIGNING_DOMAIN = b"erel-sync command v1\n"
COMMANDS = ("status", "start", "stop", "restart", "delete", "promote", "retry")
MUTATING = frozenset({"start", "stop", "restart", "delete"})
ROLLOUT_COMMANDS = frozenset({"promote", "retry"})  # to the publisher: `rollout.<group>`
DEFAULT_TTL = 60.0
MAX_TTL = 3600.0
CLOCK_SKEW = 30.0  # how far in the future `issued` may be before the command is refused
MAX_COMMAND_BYTES = 64 * 1024
ALL_TARGET = "all"
LOCAL_TARGET = "local"  # commands from the agent's own Unix socket


class CommandRejected(Exception):
    """A command that must not run; `reason` is a CamelCase constant (replies, counters)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Command:
    id: str
    command: str
    release: str | None
    target: str
    issued: float
    expires: float
    key_id: str | None = None
    signature: str | None = None

    def fields(self) -> dict[str, Any]:
        """Everything the signature covers."""
        return {
            "format": FORMAT,
            "kind": KIND_COMMAND,
            "id": self.id,
            "command": self.command,
            "release": self.release,
            "target": self.target,
            "issued": self.issued,
            "expires": self.expires,
            "key_id": self.key_id,
        }

    def encode(self) -> bytes:
        return canonical_json({**self.fields(), "signature": self.signature})

    def describe(self) -> str:
        what = f"{self.command} {self.release}" if self.release else self.command
        return f"{what} ({self.target}, id {self.id[:8]})"


def signed_bytes(cmd: Command) -> bytes:
    return SIGNING_DOMAIN + canonical_json(cmd.fields())


def host_target(host: str) -> str:
    return f"host.{host}"


def group_target(group: str) -> str:
    return f"group.{group}"


def target_for(host: str | None, group: str | None) -> str:
    """The narrowest target named: a host, else a group, else every agent."""
    if host:
        return host_target(host)
    return group_target(group) if group else ALL_TARGET


def new_command(
    command: str,
    release: str | None,
    target: str,
    *,
    now: float,
    ttl: float = DEFAULT_TTL,
    key: Ed25519PrivateKey | None = None,
    key_id: str | None = None,
    command_id: str | None = None,
) -> Command:
    """Build (and, given a key, sign) a command. Raises ValueError on a malformed request."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r} (one of {', '.join(COMMANDS)})")
    if command in MUTATING and not release:
        raise ValueError(f"{command} needs a release name")
    if release is not None and not (isinstance(release, str) and NAME_RE.fullmatch(release)):
        raise ValueError(f"bad release name {release!r}")
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be within (0, {MAX_TTL:.0f}] seconds")
    cmd = Command(
        id=command_id or uuid.uuid4().hex,
        command=command,
        release=release,
        target=target,
        issued=round(now, 3),
        expires=round(now + ttl, 3),
        key_id=key_id if key is not None else None,
    )
    if key is None:
        return cmd
    signature = base64.b64encode(key.sign(signed_bytes(cmd))).decode()
    return Command(**{**cmd.__dict__, "signature": signature})


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_command(raw: bytes) -> Command:
    """Parse a command envelope; raises CommandRejected("Malformed", …)."""
    if len(raw) > MAX_COMMAND_BYTES:
        raise CommandRejected("Malformed", f"command of {len(raw)} bytes")
    try:
        env: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CommandRejected("Malformed", f"not JSON: {e}") from None
    if not isinstance(env, dict) or env.get("kind") != KIND_COMMAND:
        raise CommandRejected("Malformed", "not a command envelope")
    if env.get("format") != FORMAT:
        raise CommandRejected("UnsupportedFormat", f"format {env.get('format')!r}")
    cmd_id, command, release = env.get("id"), env.get("command"), env.get("release")
    target, issued, expires = env.get("target"), env.get("issued"), env.get("expires")
    key_id, signature = env.get("key_id"), env.get("signature")
    if not (isinstance(cmd_id, str) and 0 < len(cmd_id) <= 64 and isinstance(target, str)):
        raise CommandRejected("Malformed", "missing or mistyped id or target")
    if command not in COMMANDS:
        raise CommandRejected("UnknownCommand", f"{command!r} is not one of {', '.join(COMMANDS)}")
    if release is not None and not (isinstance(release, str) and NAME_RE.fullmatch(release)):
        raise CommandRejected("Malformed", f"bad release name {release!r}")
    if command in MUTATING and release is None:
        raise CommandRejected("Malformed", f"{command} needs a release")
    if not (_number(issued) and _number(expires)):
        raise CommandRejected("Malformed", "issued and expires must be unix seconds")
    assert issued is not None and expires is not None
    if not (key_id is None or isinstance(key_id, str)) or not (
        signature is None or isinstance(signature, str)
    ):
        raise CommandRejected("Malformed", "mistyped key_id or signature")
    return Command(
        cmd_id, command, release, target, float(issued), float(expires), key_id, signature
    )


def check_command(
    cmd: Command,
    *,
    targets: frozenset[str],
    operator_keys: Mapping[str, str],
    now: float,
    require_signature: bool,
) -> None:
    """Refuse a command not for us, out of its time window, or (when it must be) not signed by
    a trusted operator key. `targets`: the routing targets this host answers to right now."""
    if cmd.target not in targets:
        raise CommandRejected("NotForThisHost", f"target {cmd.target}")
    if cmd.expires - cmd.issued > MAX_TTL + 1:
        raise CommandRejected("Malformed", f"ttl above {MAX_TTL:.0f}s")
    if now > cmd.expires:
        raise CommandRejected("Expired", f"expired {now - cmd.expires:.0f}s ago")
    if cmd.issued > now + CLOCK_SKEW:
        raise CommandRejected("ClockSkew", f"issued {cmd.issued - now:.0f}s in the future")
    if cmd.signature is None:
        if require_signature:
            raise CommandRejected("Unsigned", f"{cmd.command} must be signed by an operator key")
        return
    public = operator_keys.get(cmd.key_id or "")
    if public is None:
        raise CommandRejected("UnknownKey", f"operator key {cmd.key_id!r} is not trusted here")
    if signature_problem(public, signed_bytes(cmd), cmd.signature) is not None:
        raise CommandRejected("BadSignature", "signature does not verify")


def reply(
    cmd_id: str,
    *,
    host_id: str,
    instance: str,
    ok: bool,
    reason: str = "",
    message: str = "",
    result: Mapping[str, Any] | None = None,
) -> bytes:
    return json.dumps(
        {
            "format": FORMAT,
            "kind": KIND_REPLY,
            "id": cmd_id,
            "host_id": host_id,
            "instance": instance,
            "ok": ok,
            "reason": reason,
            "message": message,
            "result": dict(result) if result is not None else None,
        }
    ).encode()


def parse_reply(raw: bytes) -> dict[str, Any] | None:
    """A reply document, or None for anything else (replies are only read, never trusted)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != KIND_REPLY:
        return None
    if not (isinstance(doc.get("id"), str) and isinstance(doc.get("host_id"), str)):
        return None
    return doc
