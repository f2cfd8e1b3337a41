"""The rollout document and host reports: types, JSON, Ed25519 signing, and the agent's questions.

Pure (bytes in, bytes out). The publisher's rollout controller (`publisher.rollout`) signs a
`RolloutDoc` with its snapshot key and publishes it on the `erel.rollout` stream; agents verify
it (`verify_rollout`) and ask `may_disturb` before any action that makes a release unavailable,
and `install_version` before a first install. Agents report where they stand as `HostReport`s
(rollout events and the heartbeat's `rollout` key). The decisions themselves live in
`core.rollout` (`step`, `waves`), which re-exports every name here; this module holds the
wire format so that the decision rules stay short. docs/broker.md describes the streams.

Signed message: `b"erel-sync rollout v1\\0"` + the canonical JSON of the document without
`key_id` and `signature`. The prefix keeps a rollout signature from ever passing for a
snapshot signature made with the same key, and the reverse.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from erel_sync.core.reasons import MESSAGE_LIMIT
from erel_sync.core.signing import signature_problem
from erel_sync.model.specs import canonical_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FORMAT = 1
KIND_ROLLOUT = "rollout"
KIND_EVENT = "rollout-event"
SIGNING_PREFIX = b"erel-sync rollout v1\0"
MAX_DOC_BYTES = 4 * 1024 * 1024
ProgressDeadlineExceeded = "ProgressDeadlineExceeded"  # a granted host did not finish in time


class Phase(StrEnum):
    CANARY = "Canary"  # only canaries may change
    PAUSED = "Paused"  # canaries done; the rest waits for `rollout promote`
    PROGRESSING = "Progressing"
    HALTED = "Halted"  # a host failed: no new grants until a new seq or `rollout retry`
    COMPLETE = "Complete"  # every host of the group is converged at this seq


class HostState(StrEnum):
    WAITING = "waiting"  # gated actions planned, no grant for this seq
    CHANGING = "changing"  # executing gated actions under a grant
    CONVERGED = "converged"  # nothing left to do for this seq, every release Ready
    FAILED = "failed"  # a gated action failed for this seq


def _bound(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class HostReport:
    """One host's newest word on its rollout (a rollout event, or its heartbeat's key)."""

    host: str
    group: str | None
    seq: int
    state: HostState
    reason: str = ""
    at: float = 0.0  # the agent's clock, epoch seconds: for ordering by observers only
    grant: str | None = None  # the grant id it acts (or acted, or failed) under
    revision: str = ""

    def to_json(self, *, time: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": KIND_EVENT,
            "host_id": self.host,
            "group": self.group,
            "seq": self.seq,
            "revision": self.revision,
            "state": self.state.value,
            "reason": self.reason,
            "grant": self.grant,
            "time": time,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, doc: Any) -> HostReport | None:
        """None for anything that is not a well-formed report (it comes from any agent).
        `format` and `kind` may be absent (the heartbeat's `rollout` key leaves them out)."""
        if not isinstance(doc, Mapping):
            return None
        if doc.get("format", FORMAT) != FORMAT or doc.get("kind", KIND_EVENT) != KIND_EVENT:
            return None
        host, group, seq = doc.get("host_id"), doc.get("group"), doc.get("seq", -1)
        state, reason, at = doc.get("state"), doc.get("reason", ""), doc.get("at", 0.0)
        grant, revision = doc.get("grant"), doc.get("revision", "")
        if not (
            isinstance(host, str)
            and host
            and (group is None or isinstance(group, str))
            and _is_int(seq)
            and seq >= 0
            and isinstance(state, str)
            and state in HostState._value2member_map_
            and isinstance(reason, str)
            and _is_num(at)
            and (grant is None or isinstance(grant, str))
            and isinstance(revision, str)
        ):
            return None
        return cls(
            host, group, seq, HostState(state), _bound(reason), float(at), grant, revision[:64]
        )


@dataclass(frozen=True)
class Grant:
    """A place: `host` may disturb its releases for snapshot `seq`."""

    host: str
    seq: int
    id: str  # f"{seq}:{host}:{retry}": deterministic, names the retry it was given under
    since: float  # controller clock; progress_deadline counts from here

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "since": self.since}


def grant_id(seq: int, host: str, retry: int) -> str:
    return f"{seq}:{host}:{retry}"


def grant_retry(gid: str) -> int | None:
    """The retry count a grant id was given under, None for an id not made by `grant_id`."""
    tail = gid.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class GroupRollout:
    """One group's rollout of one seq, as the controller decided it (the document's entry)."""

    group: str
    seq: int
    revision: str
    phase: Phase
    max_unavailable: int
    canaries: tuple[str, ...]
    order: tuple[str, ...]
    granted: Mapping[str, Grant]
    done: frozenset[str]
    failed: Mapping[str, str]  # host -> "Reason: message"
    waiting: tuple[str, ...]  # hosts in order neither done, failed nor in flight
    promoted: bool = False
    retry: int = 0
    stable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    started: float = 0.0
    finished: float | None = None
    progress_deadline: float = 600.0
    # The group's live hosts and the host part of their clustered nodes' names (heartbeats'
    # `cluster_host`): a clustered release's expected peers (docs/clustering.md).
    members: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def in_flight(self) -> frozenset[str]:
        """Hosts holding a place (of this seq or an older one) and not finished with it."""
        return frozenset(self.granted) - self.done - frozenset(self.failed)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "revision": self.revision,
            "phase": self.phase.value,
            "max_unavailable": self.max_unavailable,
            "canaries": list(self.canaries),
            "order": list(self.order),
            "granted": {h: g.to_json() for h, g in sorted(self.granted.items())},
            "done": sorted(self.done),
            "failed": dict(sorted(self.failed.items())),
            "waiting": list(self.waiting),
            "promoted": self.promoted,
            "retry": self.retry,
            "stable": dict(sorted(self.stable.items())),
            "started": self.started,
            "finished": self.finished,
            "progress_deadline": self.progress_deadline,
            "members": dict(sorted(self.members.items())),
        }

    @classmethod
    def from_json(cls, group: str, doc: Mapping[str, Any]) -> GroupRollout:
        """Raises ValueError for a malformed entry."""
        try:
            granted = {
                str(h): Grant(str(h), _int(g["seq"]), str(g["id"]), _num(g["since"]))
                for h, g in _map(doc.get("granted", {})).items()
            }
            finished = doc.get("finished")
            return cls(
                group=group,
                seq=_int(doc["seq"]),
                revision=_str(doc.get("revision", "")),
                phase=Phase(doc["phase"]),
                max_unavailable=_int(doc["max_unavailable"]),
                canaries=_strs(doc.get("canaries", [])),
                order=_strs(doc.get("order", [])),
                granted=MappingProxyType(granted),
                done=frozenset(_strs(doc.get("done", []))),
                failed=MappingProxyType(
                    {str(h): _str(r) for h, r in _map(doc.get("failed", {})).items()}
                ),
                waiting=_strs(doc.get("waiting", [])),
                promoted=bool(doc.get("promoted", False)),
                retry=_int(doc.get("retry", 0)),
                stable=MappingProxyType(
                    {str(r): _str(v) for r, v in _map(doc.get("stable", {})).items()}
                ),
                started=_num(doc.get("started", 0.0)),
                finished=None if finished is None else _num(finished),
                progress_deadline=_num(doc.get("progress_deadline", 600.0)),
                members=MappingProxyType(
                    {str(h): _str(c) for h, c in _map(doc.get("members", {})).items()}
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"group {group!r}: {e!r}") from None


def _int(v: Any) -> int:
    if not _is_int(v):
        raise ValueError(f"not an integer: {v!r}")
    return int(v)


def _num(v: Any) -> float:
    if not _is_num(v):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"not a string: {v!r}")
    return v


def _strs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple):
        raise ValueError(f"not a list: {v!r}")
    return tuple(_str(x) for x in v)


def _map(v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ValueError(f"not an object: {v!r}")
    return v


@dataclass(frozen=True)
class RolloutDoc:
    """Every group's rollout; agents keep the one with the highest `version`. `direct`: the
    publisher sends each host the documents that change what it may do (`host_view`), so an
    agent need not follow the stream past its tail."""

    version: int
    time: str
    groups: Mapping[str, GroupRollout]
    direct: bool = False

    def to_json(self) -> dict[str, Any]:
        doc = {
            "format": FORMAT,
            "kind": KIND_ROLLOUT,
            "version": self.version,
            "time": self.time,
            "groups": {n: g.to_json() for n, g in sorted(self.groups.items())},
        }
        return {**doc, "direct": True} if self.direct else doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RolloutDoc:
        """Unsigned parse (the publisher's own state file); raises ValueError when malformed."""
        if not isinstance(doc, Mapping):
            raise ValueError("a rollout document is a JSON object")
        if doc.get("format") != FORMAT or doc.get("kind") != KIND_ROLLOUT:
            raise ValueError(f"format {doc.get('format')!r} kind {doc.get('kind')!r}")
        groups = {str(n): GroupRollout.from_json(str(n), g) for n, g in _map(doc["groups"]).items()}
        return cls(
            _int(doc["version"]),
            _str(doc.get("time", "")),
            MappingProxyType(groups),
            direct=doc.get("direct") is True,
        )


def host_view(rollout: Mapping[str, Any] | None, host: str) -> list[Any] | None:
    """What of a group's rollout (its JSON entry) changes what `host` may do: exactly what the
    agent's gate reads (its grant; whether the group halted, and then the versions a first
    install takes; a retry count, tied to its seq; the group's members, a clustered release's
    peers). Not the phase otherwise, nor the seq alone. JSON-shaped, so that an agent can
    report the view it holds and the publisher compare it with the current one. None: the
    group has no rollout."""
    if rollout is None:
        return None
    grant = rollout["granted"].get(host)
    halted = rollout["phase"] == Phase.HALTED.value
    return [
        [grant["id"], grant["seq"]] if grant is not None else None,
        sorted([k, v] for k, v in rollout["stable"].items()) if halted else None,
        [rollout["retry"], rollout["seq"]] if rollout["retry"] else None,
        sorted([h, c] for h, c in rollout.get("members", {}).items()),  # clustered peers
    ]


class RolloutRejected(Exception):
    """A rollout document that must not be used; `reason` is a CamelCase constant."""

    def __init__(self, reason: str, message: str) -> None:
        message = _bound(message)
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _signed_message(unsigned: Mapping[str, Any]) -> bytes:
    return SIGNING_PREFIX + canonical_json(dict(unsigned))


def sign_rollout(doc: RolloutDoc, key: Ed25519PrivateKey, key_id: str) -> bytes:
    body = doc.to_json()
    signature = key.sign(_signed_message(body))
    return canonical_json(
        {**body, "key_id": key_id, "signature": base64.b64encode(signature).decode()}
    )


def verify_rollout(raw: bytes, trusted: Mapping[str, str]) -> RolloutDoc:
    """Parse and verify against `trusted` (key id -> base64 public key); raises RolloutRejected."""
    if len(raw) > MAX_DOC_BYTES:
        raise RolloutRejected("Oversized", f"{len(raw)} bytes")
    try:
        doc: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RolloutRejected("Malformed", f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RolloutRejected("Malformed", "not a JSON object")
    if doc.get("format") != FORMAT or doc.get("kind") != KIND_ROLLOUT:
        raise RolloutRejected(
            "UnsupportedFormat", f"format {doc.get('format')!r} kind {doc.get('kind')!r}"
        )
    key_id, signature = doc.pop("key_id", None), doc.pop("signature", None)
    if not isinstance(key_id, str) or not isinstance(signature, str):
        raise RolloutRejected("Malformed", "missing key_id or signature")
    public = trusted.get(key_id)
    if public is None:
        raise RolloutRejected("UnknownKey", f"key id {key_id[:64]!r} is not trusted")
    problem = signature_problem(public, _signed_message(doc), signature)
    if problem is not None:
        raise RolloutRejected("BadSignature", f"signature does not verify ({problem})")
    try:
        return RolloutDoc.from_json(doc)
    except (KeyError, ValueError) as e:
        raise RolloutRejected("Malformed", str(e)) from None


def may_disturb(doc: RolloutDoc | None, group: str, host: str, seq: int) -> bool:
    """May `host` now take actions that make a release unavailable, for snapshot `seq`? Only
    with a grant for that seq, and not once the group's rollout halted (a granted host that has
    not begun keeps what it runs; one already changing finishes its current action)."""
    if doc is None:
        return False
    rollout = doc.groups.get(group)
    if rollout is None or rollout.phase is Phase.HALTED:
        return False
    grant = rollout.granted.get(host)
    return grant is not None and grant.seq == seq


def install_version(doc: RolloutDoc | None, group: str, release: str) -> str | None:
    """The version a host's first install of `release` uses while its group's rollout is Halted:
    the one the group's unchanged hosts run (`stable`, set when a rollout completes). None
    otherwise (install the desired version)."""
    if doc is None:
        return None
    rollout = doc.groups.get(group)
    if rollout is None or rollout.phase is not Phase.HALTED:
        return None
    return rollout.stable.get(release)
