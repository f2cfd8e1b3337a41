"""Reason constants and the error types of the release driver, classified by what happens next.

Pure. The driver (`adapters.releases.driver`, `adapters.releases.artifacts`,
`adapters.releases.archive`, `adapters.releases.erlcall`) raises these; the agent's reconciler
turns them into conditions and requeue delays, and the CLI prints them as one line. Reasons are
CamelCase strings (Flux style) so they travel unchanged into status reports.

Two kinds of failure, by what the caller should do:
- `TransientError`: retry later (`retry_after` seconds is a hint for the first backoff step).
- `StalledError`: retrying the same input will fail the same way; a human or a newer revision
  must act (bad archive, impossible upgrade, release not ours).

Messages are bounded and carry no secrets: the output tail is cut to `TAIL_LIMIT` characters
and scrubbed of anything that looks like a cookie argument before it is stored.
"""

from __future__ import annotations

import re

# --- artifacts
ChecksumMismatch = "ChecksumMismatch"
ArtifactUnavailable = "ArtifactUnavailable"
ArtifactTooLarge = "ArtifactTooLarge"
UnsafeArchive = "UnsafeArchive"
# --- lifecycle
SecretUnavailable = "SecretUnavailable"  # a secret of the config is not for this host
InstallFailed = "InstallFailed"
StartFailed = "StartFailed"
StartTimeout = "StartTimeout"
StopTimeout = "StopTimeout"
HealthCheckFailed = "HealthCheckFailed"
NodeUnreachable = "NodeUnreachable"
RpcFailed = "RpcFailed"
# --- upgrades
UpgradeFailed = "UpgradeFailed"
UpgradeImpossible = "UpgradeImpossible"
RolledBack = "RolledBack"
RollbackFailed = "RollbackFailed"
# --- ownership and environment
NotInstalled = "NotInstalled"
NotManaged = "NotManaged"
VersionUnknown = "VersionUnknown"
EpmdUnavailable = "EpmdUnavailable"
ToolMissing = "ToolMissing"
DiskError = "DiskError"
# --- observed states (no error: reported by `observe`)
Running = "Running"
Stopped = "Stopped"
Healthy = "Healthy"
Unhealthy = "Unhealthy"
UpgradePending = "UpgradePending"
# --- snapshot intake (core.snapshot; the other refusal reasons are listed in docs/status.md)
AgentTooOld = "AgentTooOld"  # the snapshot needs a newer erel-sync than this agent
InvalidState = "InvalidState"  # the body fails the schema and semantic re-check

TAIL_LIMIT = 2048
MESSAGE_LIMIT = 512

# First retry delay per reason; `None` = stalled (do not retry the same input).
RETRY_AFTER: dict[str, float | None] = {
    ChecksumMismatch: 60.0,  # the artifact server may be mid-upload; worth a retry
    ArtifactUnavailable: 10.0,
    ArtifactTooLarge: None,
    UnsafeArchive: None,
    InstallFailed: 30.0,
    StartFailed: 10.0,
    StartTimeout: 10.0,
    StopTimeout: 5.0,
    HealthCheckFailed: 10.0,
    NodeUnreachable: 5.0,
    RpcFailed: 5.0,
    UpgradeFailed: None,  # the revision is marked failed until a newer one arrives
    UpgradeImpossible: None,
    RolledBack: None,
    RollbackFailed: 10.0,
    NotInstalled: None,
    NotManaged: None,
    VersionUnknown: None,
    EpmdUnavailable: 10.0,
    ToolMissing: None,
    DiskError: 30.0,
}

# `-c COOKIE`, `-setcookie COOKIE`, `RELX_COOKIE=...`, `cookie: ...` in any tool output.
_SECRET_RE = re.compile(
    r"(?i)(-setcookie\s+|-c\s+|relx_cookie=|cookie[\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)"
)


def scrub(text: str) -> str:
    """Hide cookie values that a tool may have echoed."""
    return _SECRET_RE.sub(lambda m: m.group(1) + "***", text)


def tail(text: str | bytes, limit: int = TAIL_LIMIT) -> str:
    """The last `limit` characters of a tool's output, decoded leniently and scrubbed."""
    if isinstance(text, bytes):
        text = text[-limit * 4 :].decode("utf-8", errors="replace")
    text = scrub(text.strip())
    if len(text) > limit:
        text = "…" + text[-(limit - 1) :]
    return text


def _bound(message: str) -> str:
    message = scrub(" ".join(message.split()))
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 1] + "…"
    return message


class DriverError(Exception):
    """A release operation failed. `reason` is a constant of this module."""

    transient: bool = False

    def __init__(
        self,
        reason: str,
        message: str,
        output_tail: str = "",
        *,
        cause: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.reason = reason
        self.message = _bound(message)
        self.output_tail = tail(output_tail)
        self.cause = cause  # the reason behind a RolledBack, e.g. HealthCheckFailed
        self.retry_after = retry_after
        super().__init__(f"{reason}: {self.message}")

    def to_json(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "message": self.message,
            "cause": self.cause,
            "transient": self.transient,
            "retry_after": self.retry_after,
            "output_tail": self.output_tail,
        }


class TransientError(DriverError):
    """Retry later: the same step may well succeed (network, a slow node, a busy host)."""

    transient = True


class StalledError(DriverError):
    """Retrying the same input fails the same way: a human or a newer revision must act."""

    transient = False


def driver_error(
    reason: str, message: str, output_tail: str = "", *, cause: str | None = None
) -> DriverError:
    """The error of the right class for `reason` (see `RETRY_AFTER`)."""
    retry_after = RETRY_AFTER.get(reason)
    if retry_after is None:
        return StalledError(reason, message, output_tail, cause=cause)
    return TransientError(reason, message, output_tail, cause=cause, retry_after=retry_after)
