"""Who may do what on the broker: the permissions and topic permissions of each erel-sync
user, as `broker setup` (`adapters.broker.setup`) grants them; and the per-host agent users
(`<agent user>@<host id>`), each allowed only its own host's routing keys and queues, so that
one host cannot speak for another (docs/broker.md, "Hosts that cannot speak for each other").

Pure data and string rules (no I/O). The regexes were worked out by experiment on RabbitMQ 3.10
and are checked by tests/integration/test_broker_permissions.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from erel_sync.adapters.broker import topology as topo


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str


# Publisher: owns everything named erel.* (declares the topology, writes erel.config and
# erel.rollout, follows erel.status `host.*`/`presence.*`/`rollout.*` and erel.control
# `rollout.*` and serves state.request through its own queues, answers on erel.sync). No
# `amq.default`: nothing of erel-sync publishes through the default exchange, which could route
# into any queue by name.
PUBLISHER_PERMISSIONS = Permissions(
    configure=r"^(erel\..*|amq\.gen-.*)$",
    write=r"^(erel\..*|amq\.gen-.*)$",
    read=r"^(erel\..*|amq\.gen-.*)$",
)

# Agents: never `erel.config`, `erel.rollout` nor `amq.default` in write (through the default
# exchange anyone with that write could route into the erel.config stream by its queue name), no
# read on `erel.status` (no eavesdropping on other hosts' reports); they read the config and
# rollout streams. Their own queues, server-named or
# `erel.agent.<host>.*`, need configure (declare), write (queue.bind) and read (consume).
AGENT_PERMISSIONS = Permissions(
    configure=r"^(erel\.agent\..*|amq\.gen-.*)$",
    write=r"^(erel\.status|erel\.sync|erel\.agent\..*|amq\.gen-.*)$",
    read=r"^(erel\.config|erel\.rollout|erel\.control|erel\.sync|erel\.agent\..*"
    r"|amq\.gen-.*)$",
)


@dataclass(frozen=True)
class TopicPermission:
    """Which routing keys a user may publish (`write`) and bind with (`read`) on one topic
    exchange. Without one, RabbitMQ allows every key on that exchange."""

    exchange: str
    write: str
    read: str


NOTHING = "^$"

# Agents publish only their heartbeats, presence records and rollout events on erel.status: not
# the publisher's `publisher.*` events, which feed the erel.revisions stream that `wait` trusts.
# (One agent can still speak for another host while they share a user: docs/broker.md, optional
# hardening.)
AGENT_TOPIC_PERMISSIONS = (
    TopicPermission(
        topo.STATUS_EXCHANGE,
        write=r"^(host|presence|rollout)\.[A-Za-z0-9][A-Za-z0-9._-]*$",
        read=NOTHING,
    ),
)

# Operator (the CLI: `status`, `members`, `wait`, remote start/stop/restart/delete, `rollout
# promote|retry`, as `adapters.broker.opsclient` does them): publishes signed commands to
# erel.control (`rollout.<group>` for the publisher); reads heartbeats, rollout events and
# publisher events from erel.status, command replies from erel.sync, through its own server-named
# or `erel.operator.*` queues; reads the presence, revisions, rollout and rollout-events streams.
# No write on erel.config or erel.rollout (exchanges or streams), on any stream queue, on
# erel.sync or on `amq.default`.
OPERATOR_PERMISSIONS = Permissions(
    configure=r"^(erel\.operator\..*|amq\.gen-.*)$",
    write=r"^(erel\.control|erel\.status|erel\.operator\..*|amq\.gen-.*)$",
    read=r"^(erel\.status|erel\.sync|erel\.presence|erel\.revisions|erel\.rollout"
    r"|erel\.rollout\.events|erel\.operator\..*|amq\.gen-.*)$",
)
# Write on erel.status is for one key: the marker the presence read appends to know where the
# stream ends (opsclient.read_presence); no heartbeats, presence records or publisher events.
OPERATOR_TOPIC_PERMISSIONS = (
    TopicPermission(
        topo.STATUS_EXCHANGE,
        write=r"^presence\.~marker$",
        read=r"^(host|publisher|rollout)\..+$",
    ),
    TopicPermission(
        topo.CONTROL_EXCHANGE, write=r"^(host\..+|group\..+|rollout\..+|all)$", read=NOTHING
    ),
    TopicPermission(topo.SYNC_EXCHANGE, write=NOTHING, read=r"^reply\.op-.+$"),
)


# -- one user per host ----------------------------------------------------------------------------

HOST_SEPARATOR = "@"  # host ids never hold one (model.names), RabbitMQ user names may


def host_user(agent_user: str, host: str) -> str:
    """The broker user of one host's agent."""
    return f"{agent_user}{HOST_SEPARATOR}{host}"


def host_of_user(user: str | None) -> str | None:
    """The host a per-host agent user speaks for (None: a shared or another kind of user)."""
    if not user or HOST_SEPARATOR not in user:
        return None
    return user.rsplit(HOST_SEPARATOR, 1)[1] or None


def speaks_for(user: str | None, host: object) -> bool:
    """False when a message's (broker-validated) `user_id` is another host's agent user: what
    `status`, `members` and `wait` drop. A shared agent user speaks for any host."""
    owner = host_of_user(user)
    return owner is None or owner == host


def host_permissions(host: str) -> Permissions:
    """An agent's permissions, its queues narrowed to `erel.agent.<host>.*` (server-named
    `amq.gen-*` queues are its connection's own)."""
    own = re.escape(topo.agent_queue(host, ""))
    return Permissions(
        configure=rf"^({own}.*|amq\.gen-.*)$",
        write=rf"^(erel\.status|erel\.sync|{own}.*|amq\.gen-.*)$",
        read=rf"^(erel\.config|erel\.rollout|erel\.control|erel\.sync|{own}.*|amq\.gen-.*)$",
    )


def host_topic_permissions(host: str) -> tuple[TopicPermission, ...]:
    """Its heartbeats, presence records and rollout events under its own id only."""
    return (
        TopicPermission(
            topo.STATUS_EXCHANGE,
            write=rf"^(host|presence|rollout)\.{re.escape(host)}$",
            read=NOTHING,
        ),
    )
