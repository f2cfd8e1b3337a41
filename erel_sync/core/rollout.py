"""Rollout decisions: which hosts of a group may disturb their releases now (docs/architecture.md).

Pure and deterministic: `step` reads no clock (`now` is passed), draws no random number, and
stepping again with its result as `previous` and the same reports grants nothing new. The
publisher's rollout controller (`publisher.rollout`) calls `step` per group whenever a report or
a snapshot arrives, signs the result (`sign_rollout`) and publishes it; `erel-sync plan --hosts`
prints `waves`. The wire format and the agent's questions (`may_disturb`, `install_version`)
live in `core.rolloutdoc` and are re-exported here, so callers import one module.

Order: a group's hosts sorted by host id (plain string order); canaries are the first N of it,
fixed when the rollout of a seq starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from erel_sync.core.rolloutdoc import (
    FORMAT,
    KIND_EVENT,
    KIND_ROLLOUT,
    Grant,
    GroupRollout,
    HostReport,
    HostState,
    Phase,
    ProgressDeadlineExceeded,
    RolloutDoc,
    RolloutRejected,
    grant_id,
    grant_retry,
    host_view,
    install_version,
    may_disturb,
    sign_rollout,
    verify_rollout,
)
from erel_sync.model.specs import RolloutSpec

__all__ = [
    "FORMAT",
    "KIND_EVENT",
    "KIND_ROLLOUT",
    "Grant",
    "GroupRollout",
    "HostReport",
    "HostState",
    "Phase",
    "ProgressDeadlineExceeded",
    "RolloutDoc",
    "RolloutRejected",
    "grant_id",
    "grant_retry",
    "host_view",
    "install_version",
    "may_disturb",
    "resolve_count",
    "sign_rollout",
    "step",
    "verify_rollout",
    "waves",
]


def resolve_count(value: int | str, hosts: int, *, round_up: bool) -> int:
    """A count, or a percentage ("25%") of `hosts`. Ceil (`round_up`, canaries) may give 0;
    floor (max_unavailable) gives at least 1, since a limit of 0 would never let anyone go."""
    if isinstance(value, str):
        pct = int(value.strip().removesuffix("%"))
        count = -(-hosts * pct // 100) if round_up else hosts * pct // 100
    else:
        count = value
    return count if round_up else max(1, count)


def _canaries(order: tuple[str, ...], policy: RolloutSpec) -> tuple[str, ...]:
    return order[: resolve_count(policy.canary, len(order), round_up=True)]


def waves(hosts: Iterable[str], policy: RolloutSpec) -> list[tuple[str, ...]]:
    """The order a rollout takes when every host has work: the canaries (when any), then the
    rest in batches of max_unavailable. For `plan --hosts`; `step` decides live."""
    order = tuple(sorted(set(hosts)))
    limit = resolve_count(policy.max_unavailable, len(order), round_up=False)
    canaries = _canaries(order, policy)
    rest = order[len(canaries) :]
    batches = [rest[i : i + limit] for i in range(0, len(rest), limit)]
    return ([canaries] if canaries else []) + batches


def _old_grant_over(
    grant: Grant, report: HostReport | None, seq: int, now: float, deadline: float
) -> bool:
    """A grant of an older seq stops counting once its host has moved on or gone quiet too long."""
    if now >= grant.since + deadline:
        return True
    if report is None or report.seq < grant.seq:
        return False
    if report.state in (HostState.CONVERGED, HostState.FAILED):
        return True
    return report.seq >= seq and report.state is not HostState.CHANGING


def _failure_counts(report: HostReport, retry: int) -> bool:
    """A failure reported under a grant of an earlier retry was cleared by `rollout retry`."""
    if report.grant is None:
        return retry == 0
    given = grant_retry(report.grant)
    return given is None or given >= retry


# How long a host that has not reported on a new seq keeps its turn in the order before the
# hosts after it may go first (a live host reports within a second of its snapshot).
TURN_GRACE = 10.0


def _ahead(report: HostReport | None, group: str, seq: int) -> bool:
    """May a host not heard on `seq` yet be granted its turn ahead of its report? Only one
    whose newest report is a settled one (converged, or waiting for a grant) of an older seq
    in this group: it follows the rollout protocol and will get the snapshot."""
    return (
        report is not None
        and report.group == group
        and report.seq < seq
        and report.state in (HostState.CONVERGED, HostState.WAITING)
    )


def step(
    previous: GroupRollout | None,
    *,
    group: str,
    seq: int,
    revision: str,
    policy: RolloutSpec,
    versions: Mapping[str, str],
    hosts: Mapping[str, HostReport],
    now: float,
    promote: bool = False,
    retry: bool = False,
    disturbs: bool = False,
) -> GroupRollout:
    """The group's rollout after the reports in `hosts` (the group's live hosts, newest report
    each). `versions`: the group's desired version per release at `seq` (`stable` once done).
    `disturbs`: the seq changes what the group's hosts run (`core.desired.disturbing`), so a
    settled host is granted in its turn without waiting for its report on the seq: the
    snapshot and its grant then reach it together (docs/architecture.md, "Order")."""
    same = previous is not None and previous.seq == seq
    deadline = policy.progress_deadline
    order = tuple(sorted(hosts))
    limit = resolve_count(policy.max_unavailable, len(order), round_up=False)
    canaries = previous.canaries if previous is not None and same else _canaries(order, policy)
    retries = previous.retry if previous is not None and same else 0
    failed: dict[str, str] = dict(previous.failed) if previous is not None and same else {}
    if retry and failed:
        failed, retries = {}, retries + 1
    mine = {h: r for h, r in hosts.items() if r.seq == seq}

    # Places: keep each grant until its host is done with it; an expired one of this seq fails.
    granted: dict[str, Grant] = {}
    for host, grant in (previous.granted if previous is not None else {}).items():
        report = hosts.get(host)
        if grant.seq != seq:
            if not _old_grant_over(grant, report, seq, now, deadline):
                granted[host] = grant
            continue
        if host in failed or (
            report is not None and report.seq == seq and report.state is HostState.CONVERGED
        ):
            continue
        if (
            report is not None
            and report.seq == seq
            and report.state is HostState.FAILED
            and _failure_counts(report, retries)
        ):
            continue
        if now >= grant.since + deadline:
            failed[host] = f"{ProgressDeadlineExceeded}: no healthy answer within {deadline:g}s"
            continue
        granted[host] = grant
    for host, report in mine.items():
        if report.state is HostState.FAILED and _failure_counts(report, retries):
            failed.setdefault(host, report.reason or "Failed")
            granted.pop(host, None)
    done = frozenset(h for h, r in mine.items() if r.state is HostState.CONVERGED) - set(failed)

    # A host saying it is changing for this seq holds a place, granted or not (a grant revoked
    # by a halt, or a retry, reaches it only after it began): the limit counts it.
    busy = (
        (set(granted) | {h for h, r in mine.items() if r.state is HostState.CHANGING})
        - done
        - set(failed)
    )
    pending = [c for c in canaries if c not in done and (c in hosts or c in granted)]
    promoted = (previous.promoted if previous is not None and same else False) or promote
    if failed:
        phase = Phase.HALTED
    elif all(h in done for h in order):
        phase = Phase.COMPLETE
    elif pending:
        phase = Phase.CANARY
    elif canaries and policy.pause_after_canary and not promoted:
        phase = Phase.PAUSED
    else:
        phase = Phase.PROGRESSING

    if phase is Phase.HALTED:
        # Hosts not yet begun keep what they run; their places go back.
        granted = {
            h: g
            for h, g in granted.items()
            if g.seq != seq or (h in mine and mine[h].state is HostState.CHANGING)
        }
        busy &= set(granted) | {h for h, r in mine.items() if r.state is HostState.CHANGING}
    elif phase in (Phase.CANARY, Phase.PROGRESSING):
        allowed = set(pending) if phase is Phase.CANARY else set(order)
        started = previous.started if previous is not None and same else now
        for host in order:
            if len(busy) >= limit:
                break
            if host not in allowed or host in busy or host in done or host in failed:
                continue
            report = mine.get(host)
            if report is None and not (disturbs and _ahead(hosts.get(host), group, seq)):
                # Not heard on this seq yet (the snapshot is on its way): the host keeps its
                # turn for a while, so the order is the one `plan --hosts` shows.
                if now < started + TURN_GRACE:
                    break
                continue
            if report is None or report.state is HostState.WAITING:
                granted[host] = Grant(host, seq, grant_id(seq, host, retries), now)
                busy.add(host)

    stable = previous.stable if previous is not None else MappingProxyType({})
    finished: float | None = None
    if phase is Phase.COMPLETE:
        stable = MappingProxyType(dict(versions))
        was_done = previous is not None and same and previous.finished is not None
        finished = previous.finished if was_done and previous is not None else now
    in_flight = set(granted) | busy
    return GroupRollout(
        group=group,
        seq=seq,
        revision=revision,
        phase=phase,
        max_unavailable=limit,
        canaries=canaries,
        order=order,
        granted=MappingProxyType(dict(sorted(granted.items()))),
        done=done,
        failed=MappingProxyType(dict(sorted(failed.items()))),
        waiting=tuple(h for h in order if h not in done and h not in failed and h not in in_flight),
        promoted=promoted,
        retry=retries,
        stable=stable,
        started=previous.started if previous is not None and same else now,
        finished=finished,
        progress_deadline=deadline,
    )
