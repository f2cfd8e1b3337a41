"""What is wrong with a host or a release, in words and as a verdict: for `status` (its ERROR
column and exit code), `wait` and the live table of `erel-sync dev`.

Pure: heartbeat-shaped documents in (a host report, docs/status.md, or a `status` entry,
schemas/cli/status.schema.json), text and verdicts out. It lives apart from `clusterview`
(which joins presence and answers into entries) so that the dev table, which reads raw
heartbeats, renders a failure exactly as `status` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Release states that mean "this did not work": a failed change (not retried until a newer
# snapshot), a failing health check, a transient failure waiting for its retry.
PROBLEM_STATES = frozenset({"Failed", "Degraded", "Backoff"})
# Release states an operator or the config asked for: not converged, not a problem either.
INTENDED_STATES = frozenset({"Held", "Suspended", "Unmanaged"})
ERROR_WIDTH = 60  # the ERROR column of the table; `-o wide` and JSON carry the whole message


def clip(text: str, width: int) -> str:
    """One line of at most `width` characters (an ellipsis marks a cut)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def release_error(r: Mapping[str, Any]) -> str:
    """A release's last error as `Reason: message`; '' when it has none. The agent's message
    already names the reason after the action (`install hello 0.2.0: ArtifactUnavailable:
    …`); the reason is put first so that a cut message still says what went wrong."""
    reason = str(r.get("reason") or "")
    message = " ".join(str(r.get("last_error") or "").split())
    state = r.get("state")
    partitioned = _partitioned(r.get("peers"))
    if partitioned and not message and state not in PROBLEM_STATES:
        return partitioned
    if not message:
        if state == "Degraded" or (r.get("healthy") is False and state not in INTENDED_STATES):
            return f"{reason or 'Unhealthy'}: health check failing"
        return reason if state in PROBLEM_STATES else ""
    if not reason:
        return message
    return f"{reason}: {message.replace(f'{reason}: ', '', 1)}"


def _partitioned(peers: Any) -> str:
    """A clustered node not connected to peers that are up (docs/clustering.md): the
    `Partitioned` condition, naming them; '' otherwise."""
    if not isinstance(peers, Mapping):
        return ""
    missing = [str(n) for n in peers.get("missing") or []]
    if not missing:
        return ""
    expected = peers.get("expected") or []
    return (
        f"Partitioned: connected to {len(expected) - len(missing)} of {len(expected)} peers; "
        f"not to {', '.join(missing)}"
    )


def shout(reason: str) -> str:
    """`AgentTooOld` -> `AGENT-TOO-OLD`: how a host-level problem is flagged in a table."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", reason).upper() or "REFUSED"


def refusal(refused: Mapping[str, Any]) -> tuple[str, str]:
    """A snapshot the agent refused (heartbeat `snapshot_refused`) as (flag, message):
    `AGENT-TOO-OLD needs >= 0.2.0` for an agent too old for it, else the reason shouted."""
    reason = str(refused.get("reason") or "Refused")
    needs = refused.get("needs")
    flag = shout(reason) + (f" needs >= {needs}" if needs else "")
    seq = refused.get("seq")
    message = f"{reason}: {refused.get('message') or 'snapshot refused'}"
    if needs:
        message += f" (needs erel-sync >= {needs})"
    if seq is not None:
        message += f" (snapshot seq {seq})"
    return flag, message


def host_problems(doc: Mapping[str, Any], *, store_error: Any) -> list[tuple[str, str]]:
    """Host-level problems of a reachable host as (flag, message): two agents on one id, a
    snapshot it cannot store (disk full) or refused (`snapshot_refused`: an agent too old for
    it, a bad signature …), a host two groups claim."""
    out: list[tuple[str, str]] = []
    if doc.get("duplicate"):
        out.append(("DUPLICATE-ID", "more than one agent answers for this host id"))
    if store_error:
        out.append(("STORE-FAILED", str(store_error)))  # the flag says what it is
    refused = doc.get("snapshot_refused")
    if isinstance(refused, Mapping):
        out.append(refusal(refused))
    if doc.get("match") == "Ambiguous":
        groups = ", ".join(str(g) for g in doc.get("candidates") or []) or "several groups"
        out.append(("AMBIGUOUS", f"Ambiguous: matched by {groups}"))
    return out


def trying(applied: Mapping[str, Any] | None, attempted: Mapping[str, Any] | None) -> bool:
    """Is the host working on a newer snapshot than the one it applied? A host that applied
    a later snapshot without acting (nothing to change) keeps an older `attempted`: that is
    history, not work in progress."""
    if not attempted:
        return False
    if not applied:
        return True
    a_seq, t_seq = applied.get("seq"), attempted.get("seq")
    if isinstance(a_seq, int) and isinstance(t_seq, int):
        return t_seq > a_seq
    return False


@dataclass(frozen=True)
class HostCondition:
    state: str  # Ok | Failed | Progressing | Unreachable
    why: str = ""


def host_condition(doc: Mapping[str, Any], *, store_error: Any = None) -> HostCondition:
    """One host's verdict for `status`'s exit code. Failed: a host-level problem or a release
    Failed, Degraded, in Backoff or unhealthy. Progressing: not converged yet (no snapshot,
    releases on their way). Held and suspended releases are what someone asked for: Ok."""
    if not doc.get("reachable", True):
        return HostCondition("Unreachable", str(doc.get("error") or "no answer"))
    problems = [msg for _, msg in host_problems(doc, store_error=store_error)]
    rels = [r for r in doc.get("releases") or [] if isinstance(r, Mapping)]
    for r in rels:
        if r.get("state") in PROBLEM_STATES or (
            r.get("healthy") is False and r.get("state") not in INTENDED_STATES
        ):
            err = release_error(r)
            problems.append(f"{r.get('name')} {r.get('state')}" + (f": {err}" if err else ""))
    if problems:
        return HostCondition("Failed", "; ".join(problems))
    if doc.get("converged"):
        return HostCondition("Ok")
    if doc.get("match") == "NoSnapshot":
        return HostCondition("Progressing", "no snapshot yet")
    if doc.get("group") is None:
        return HostCondition("Ok")  # unassigned: nothing desired, it keeps what it runs
    moving = [
        f"{r.get('name')} {r.get('state')}"
        for r in rels
        if r.get("state") not in ("Ready", *INTENDED_STATES)
    ]
    if moving:
        return HostCondition("Progressing", ", ".join(moving))
    if any(r.get("state") in INTENDED_STATES for r in rels):
        return HostCondition("Ok")
    return HostCondition("Progressing", "reconciling")


@dataclass(frozen=True)
class StatusVerdict:
    state: str  # Ok | Failed | Partial | Progressing: the exit code, in that order of precedence
    failed: dict[str, str]
    progressing: dict[str, str]
    unreachable: tuple[str, ...]


def status_verdict(conditions: Iterable[tuple[str, HostCondition]]) -> StatusVerdict:
    """The cluster's verdict: Failed (exit 1) over Partial (some hosts did not answer, exit 3)
    over Progressing (exit 1: not converged yet) over Ok (exit 0)."""
    failed: dict[str, str] = {}
    progressing: dict[str, str] = {}
    unreachable: list[str] = []
    for host, c in conditions:
        if c.state == "Failed":
            failed[host] = c.why
        elif c.state == "Progressing":
            progressing[host] = c.why
        elif c.state == "Unreachable":
            unreachable.append(host)
    state = (
        "Failed" if failed else "Partial" if unreachable else "Progressing" if progressing else "Ok"
    )
    return StatusVerdict(state, failed, progressing, tuple(unreachable))
