"""A Notification document of the config repository (schemas/notification.schema.json):
which events go to which endpoint. Built after the schema passed; not part of the snapshot
(agents never see it): `erel-sync notify` reads it from the published revision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from erel_sync.model.names import parse_duration

EVENTS = (
    "revision_rejected",
    "host_failed",
    "rollout_halted",
    "rollout_completed",
    "host_unreachable",
)
DEFAULT_UNREACHABLE = 120.0


@dataclass(frozen=True)
class NotificationSpec:
    name: str
    events: frozenset[str]
    endpoint_type: str  # "webhook" or "slack"
    url: str | None = None
    url_env: str | None = None
    secret_env: str | None = None
    groups: frozenset[str] | None = None  # None: every group
    unreachable_after: float = DEFAULT_UNREACHABLE

    def wants(self, event: str, group: str | None) -> bool:
        """Whether `event` (of `group`, None for revision events) goes to this endpoint."""
        if event not in self.events:
            return False
        return group is None or self.groups is None or group in self.groups


def notification_from_document(doc: Mapping[str, Any]) -> NotificationSpec:
    spec, endpoint = doc["spec"], doc["spec"]["endpoint"]
    groups = spec.get("groups")
    return NotificationSpec(
        name=doc["metadata"]["name"],
        events=frozenset(spec["events"]),
        endpoint_type=endpoint["type"],
        url=endpoint.get("url"),
        url_env=endpoint.get("url_env"),
        secret_env=endpoint.get("secret_env"),
        groups=frozenset(groups) if groups is not None else None,
        unreachable_after=parse_duration(spec.get("unreachable_after", "2m")),
    )
