"""What the agent records about each release between ticks: its `ReleaseStatus`.

Pure data and its JSON. The reconciler (`agent.reconciler`) updates a release's status after
each step (the config it rendered, consecutive transient failures and when to try again, the
snapshot seq whose change stalled, the last error); the planner (`core.reconcile.plan`) reads
it to skip a failed revision or wait out a backoff, and the host status (`core.status`) shows
its reason and error. The reporter keeps it in `state_dir/status.json` under `memory`, fsynced,
so a restart neither retries a stalled change nor forgets a backoff. `restart_pending` records
a vm.args change rendered but not yet applied by a restart (the next attempt restarts even
though the files are already rendered).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ReleaseStatus:
    """The recorded outcome of the agent's last attempts at one release."""

    applied_config: str | None = None  # config_digest of the config last rendered
    failed_seq: int | None = None  # the snapshot seq whose change stalled here (not retried)
    failed_version: str | None = None
    # The group rollout's `retry` count when the change stalled: an operator's `rollout retry`
    # (a higher count in the rollout document) forgets the failure.
    failed_retry: int = 0
    failures: int = 0  # consecutive transient failures (start, download, ...)
    next_attempt_at: float = 0.0  # wall-clock seconds; compared with the `now` passed in
    last_error: str = ""
    last_reason: str = ""
    restart_pending: bool = False  # vm.args rendered, the restart that applies them not done

    def forget_failure(self) -> ReleaseStatus:
        """The same config applied, no failure and no backoff (after `rollout retry`)."""
        return ReleaseStatus(
            applied_config=self.applied_config, restart_pending=self.restart_pending
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ReleaseStatus:
        """Keys this version does not know (written by a newer agent) are ignored."""
        return cls(**{k: v for k, v in doc.items() if k in _FIELDS})


_FIELDS = frozenset(f.name for f in fields(ReleaseStatus))


def statuses_to_json(statuses: Mapping[str, ReleaseStatus]) -> dict[str, Any]:
    """The `memory` object of status.json: release name -> its status."""
    return {n: s.to_json() for n, s in statuses.items()}


def statuses_from_json(doc: Mapping[str, Any] | None) -> dict[str, ReleaseStatus]:
    return {n: ReleaseStatus.from_json(s) for n, s in (doc or {}).items()}
