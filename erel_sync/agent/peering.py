"""A clustered release's peers: the agent tells each of its nodes which nodes of the group to
connect to, and erel inside the node keeps them connected (`erel_peers`, docs/clustering.md).

Called by `agent.reconciler` once per tick, after the tick's steps. The expected peers are
`<release>@<cluster_host>` of every other member of the host's group, as the publisher's
rollout document lists them (`members`: the live hosts, from their heartbeats). The node's own
`peers` come with the tick's observation (`erel_rpc:observe`), so telling it again costs a
call only when membership changed or the node restarted and forgot. A node whose erel is
older (no `peers` in its answer) is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from erel_sync.agent.rollout import Gate
from erel_sync.core import reasons
from erel_sync.core.desired import HostReleaseSpec
from erel_sync.core.facts import peers_of as _peers
from erel_sync.core.observed import ObservedRelease

log = logging.getLogger("erel_sync.agent")


@runtime_checkable
class PeerSetter(Protocol):
    """A driver that can tell a node its peers (the release driver; not every test's fake)."""

    async def set_peers(self, name: str, nodes: list[str]) -> Any: ...


def expected_peers(release: str, host_id: str, members: Mapping[str, str]) -> list[str]:
    """The nodes of `release` on the group's other live hosts."""
    return sorted(f"{release}@{where}" for host, where in members.items() if host != host_id)


def members_of(g: Gate) -> Mapping[str, str] | None:
    """The group's members as the held rollout document lists them; None without one."""
    rollout = g.doc.groups.get(g.group) if g.doc is not None and g.group is not None else None
    return rollout.members if rollout is not None else None


async def keep_peers(
    driver: Any,
    host_id: str,
    desired: Mapping[str, HostReleaseSpec] | None,
    observed: dict[str, ObservedRelease],
    g: Gate,
) -> list[str]:
    """Tell each running clustered node its expected peers when it does not hold them (its
    answer, the peers it holds then, goes into `observed`); the names of the releases told."""
    members = members_of(g)
    if members is None or not isinstance(driver, PeerSetter):
        return []
    told = []
    for name, want in sorted((desired or {}).items()):
        obs = observed.get(name)
        if not want.distribution.clustered or obs is None or not obs.reachable:
            continue
        held = obs.details.get("peers")
        if not isinstance(held, Mapping):
            continue  # an older erel: it cannot form a cluster
        expected = expected_peers(name, host_id, members)
        if sorted(held.get("expected") or []) == expected:
            continue
        try:
            answer = await driver.set_peers(name, expected)
            told.append(name)
            peers = _peers(answer)
            if peers is not None:
                observed[name] = replace(obs, details={**obs.details, "peers": peers})
            log.info("%s: %s: peers %s", host_id, name, ", ".join(expected) or "none")
        except reasons.DriverError as e:
            log.warning("%s: %s: could not set peers: %s", host_id, name, e)
    return told
