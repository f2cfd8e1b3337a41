"""Facts about one release node: pure parsers over erel's answers, and the `ObservedRelease`
they add up to.

pyinfra's facts model: the command lives in the adapter (`adapters.releases.nodeops.NodeOps.probe`
asks, the driver adds what the disk and /proc say), the parsing lives here and is tested on
canned erl_call output (tests/unit/test_facts.py). Called by `adapters.releases.nodeops`,
`adapters.releases.driver` and `adapters.releases.upgrader`.

One question per release and tick: `erel_rpc:observe` answers status and health in one
envelope (docs/erel.md). A release built with an older erel has no such function and answers
`{badrpc, {'EXIT', {undef, [{erel_rpc, observe, ...}]}}}` (`lacks_observe`): the driver then
asks `status` and `health` separately, as it did before `observe` existed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from erel_sync.core import reasons
from erel_sync.core.erlterm import Atom
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.rpccodec import RpcOutcome, RpcStatus

# Health specs that mean "erel's own checks" (erel:health/0), asked without arguments.
DEFAULT_HEALTH_RPCS = frozenset({"erel:health/0", "erel_rpc:health/0"})
DETAIL_KEYS = ("uptime_ms", "memory_bytes", "processes")
_UNDEF_OBSERVE_RE = re.compile(r"\bundef\s*,\s*\[\s*\{\s*erel_rpc\s*,\s*observe\s*,")


@dataclass(frozen=True)
class HealthAnswer:
    healthy: bool
    reason: str = ""
    reachable: bool = True


@dataclass(frozen=True)
class NodeAnswer:
    """One probe of a node: erel's status value when it answered, the health verdict when it
    was asked (and the node answered), and the outcome that says why when it did not."""

    outcome: RpcOutcome
    status: Mapping[str, Any] | None = None
    health: HealthAnswer | None = None
    peers: Mapping[str, Any] | None = None  # erel's peers (an older erel: None)


def health_args(rpc: str) -> tuple[Atom, ...]:
    """Arguments selecting a release's health check: none for erel's own checks, else the
    `Mod, Fun` of `mod:fun/0` (`erel_rpc:check/2`, `erel_rpc:observe/2`)."""
    if rpc in DEFAULT_HEALTH_RPCS:
        return ()
    mod, _, rest = rpc.partition(":")
    return (Atom(mod), Atom(rest.split("/", 1)[0]))


def parse_status(outcome: RpcOutcome) -> Mapping[str, Any] | None:
    """`erel_rpc:status/0`'s value, or None when the node did not answer one."""
    if outcome.status is RpcStatus.OK and isinstance(outcome.value, dict):
        return outcome.value
    return None


def parse_health(outcome: RpcOutcome) -> HealthAnswer:
    """`erel_rpc:health/0` or `check/2`: an unanswered check counts as unhealthy."""
    if outcome.status is RpcStatus.UNREACHABLE:
        return HealthAnswer(False, f"node unreachable: {outcome.error}", reachable=False)
    if outcome.status is not RpcStatus.OK or not isinstance(outcome.value, dict):
        return HealthAnswer(False, outcome.error or "health check gave no answer")
    return _health_value(outcome.value)


def _health_value(value: Mapping[str, Any]) -> HealthAnswer:
    return HealthAnswer(bool(value.get("healthy")), str(value.get("reason") or ""))


def parse_observe(outcome: RpcOutcome) -> NodeAnswer:
    """`erel_rpc:observe/0,2`: `{"status": S, "health": H}` in one envelope."""
    if outcome.status is not RpcStatus.OK:
        return NodeAnswer(outcome)
    value = outcome.value
    status = value.get("status") if isinstance(value, dict) else None
    if not isinstance(status, dict):
        garbled = replace(outcome, status=RpcStatus.GARBAGE, error="observe answer without status")
        return NodeAnswer(garbled)
    health = value.get("health")
    peers = peers_of(value.get("peers"))
    if not isinstance(health, dict):
        unanswered = HealthAnswer(False, "health check gave no answer")
        return NodeAnswer(outcome, status, unanswered, peers)
    return NodeAnswer(outcome, status, _health_value(health), peers)


def peers_of(value: Any) -> dict[str, list[str]] | None:
    """erel's peers `{expected, connected, missing}` (node names); None when absent or not that
    shape (an older erel, garbage)."""
    if not isinstance(value, dict):
        return None
    out: dict[str, list[str]] = {}
    for key in ("expected", "connected", "missing"):
        names = value.get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        out[key] = [n[:255] for n in names[:1000]]
    return out


def lacks_observe(outcome: RpcOutcome) -> bool:
    """The node runs an erel older than `observe`: the call failed as an undefined function."""
    return outcome.status is RpcStatus.BADRPC and bool(_UNDEF_OBSERVE_RE.search(outcome.error))


def unmanaged(name: str, *, exists: bool) -> ObservedRelease:
    """No record of this host's driver in the root: absent, or someone else's."""
    return ObservedRelease(
        name, installed=exists, reason=reasons.NotManaged if exists else reasons.NotInstalled
    )


def stopped(
    name: str, *, node: str, pending: Mapping[str, Any] | None, permanent: str | None
) -> ObservedRelease:
    """Installed, and no process of it runs."""
    return ObservedRelease(
        name,
        installed=True,
        permanent=permanent,
        reason=reasons.Stopped,
        node=node,
        pending=pending,
    )


def observed_release(
    name: str,
    *,
    node: str,
    pending: Mapping[str, Any] | None,
    answer: NodeAnswer,
    health_asked: bool,
    alive: bool,
    permanent: str | None,
) -> ObservedRelease:
    """A managed release from one probe. `alive` (a process of the root runs) and `permanent`
    (the version a boot starts, from disk) matter only when the node did not answer."""
    status = answer.status
    if status is not None:
        healthy: bool | None = None
        reason, message = reasons.Running, ""
        if answer.health is not None:
            healthy = answer.health.healthy
            reason = reasons.Healthy if healthy else reasons.Unhealthy
            message = answer.health.reason
        if pending:
            reason = reasons.UpgradePending
        versions = tuple(
            (str(v.get("version")), str(v.get("status")))
            for v in status.get("versions") or []
            if isinstance(v, dict)
        )
        return ObservedRelease(
            name,
            installed=True,
            running=True,
            reachable=True,
            current=status.get("current"),
            permanent=status.get("permanent"),
            versions=versions,
            healthy=healthy,
            reason=reason,
            message=message,
            node=node,
            pending=pending,
            details={k: status.get(k) for k in DETAIL_KEYS}
            | ({"peers": answer.peers} if answer.peers is not None else {}),
        )
    if not alive:
        return stopped(name, node=node, pending=pending, permanent=permanent)
    outcome = answer.outcome
    return ObservedRelease(
        name,
        installed=True,
        running=True,
        permanent=permanent,
        healthy=False if health_asked else None,
        reason=reasons.NodeUnreachable
        if outcome.status is RpcStatus.UNREACHABLE
        else reasons.RpcFailed,
        message=outcome.error,
        node=node,
        pending=pending,
    )
