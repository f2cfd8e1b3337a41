"""Prepare a RabbitMQ vhost for erel-sync: vhost, users (publisher, agent, optional operator),
their permissions and topic permissions, topology.

Called by `erel-sync broker setup` (`cli.broker`) and by the integration tests, which run it
against a private node. Lives in `adapters` because it runs `rabbitmqctl` and speaks AMQP.

Two channels, because AMQP cannot manage users: users, vhost and permissions go through
`rabbitmqctl` (which must run where it can reach the node: same Erlang cookie, node name
resolvable), the topology (`adapters.broker.topology`) is declared over AMQP *as the publisher*,
which also proves the publisher's permissions are enough. Observe (`list_vhosts`, `list_users`) →
plan (pure, `plan_ctl`) → apply; a second run changes nothing but passwords and permissions,
which are set again because neither can be observed cheaply. `--dry-run` observes nothing and
prints a shell script that does the same, so it also serves a broker this host cannot reach.

The permission regexes are explained in docs/broker.md; they were worked out by experiment on
RabbitMQ 3.10 and are checked by tests/integration/test_broker_permissions.py. The vhost comes
from `--vhost` or the URL under the one rule of `model.brokerurl`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiormq

from erel_sync.adapters.broker import rabbitctl
from erel_sync.adapters.broker import topology as topo
from erel_sync.adapters.broker.errors import LIBRARY_ERRORS, PreconditionFailed, classify
from erel_sync.adapters.broker.permissions import (
    AGENT_PERMISSIONS,
    AGENT_TOPIC_PERMISSIONS,
    OPERATOR_PERMISSIONS,
    OPERATOR_TOPIC_PERMISSIONS,
    PUBLISHER_PERMISSIONS,
    Permissions,
    TopicPermission,
    host_permissions,
    host_topic_permissions,
    host_user,
)
from erel_sync.adapters.broker.rabbitctl import Ctl
from erel_sync.model.brokerurl import mask, resolve_vhost, vhost_path


class BrokerSetupError(Exception):
    """rabbitmqctl or the broker refused a step; the message names the step, never a password."""


@dataclass(frozen=True)
class BrokerSetupSpec:
    """What `broker setup` is asked to make true."""

    vhost: str
    publisher_user: str
    publisher_password: str
    agent_user: str
    agent_password: str
    operator_user: str | None = None  # None: no operator user
    operator_password: str = ""
    # One user per host (`<agent_user>@<host>`), allowed only that host's keys: host -> password.
    hosts: Mapping[str, str] = field(default_factory=dict)

    def users(self) -> list[tuple[str, str, Permissions, tuple[TopicPermission, ...]]]:
        """(role, user, permissions, topic permissions) of every user to set up."""
        out = [
            ("publisher", self.publisher_user, PUBLISHER_PERMISSIONS, ()),
            ("agent", self.agent_user, AGENT_PERMISSIONS, AGENT_TOPIC_PERMISSIONS),
        ]
        if self.operator_user is not None:
            out.append(
                ("operator", self.operator_user, OPERATOR_PERMISSIONS, OPERATOR_TOPIC_PERMISSIONS)
            )
        for host in sorted(self.hosts):
            out.append(
                (
                    f"agent of {host}",
                    host_user(self.agent_user, host),
                    host_permissions(host),
                    host_topic_permissions(host),
                )
            )
        return out

    def passwords(self) -> dict[str, str]:
        return {
            self.publisher_user: self.publisher_password,
            self.agent_user: self.agent_password,
            **({self.operator_user: self.operator_password} if self.operator_user else {}),
            **{host_user(self.agent_user, h): pw for h, pw in self.hosts.items()},
        }

    def problems(self, *, passwords: bool = True) -> list[str]:
        """What is wrong with the request; `passwords=False` for a dry run, which needs none."""
        out = []
        checks = [
            ("vhost", self.vhost),
            ("publisher user", self.publisher_user),
            ("agent user", self.agent_user),
            ("publisher password", self.publisher_password if passwords else "-"),
            ("agent password", self.agent_password if passwords else "-"),
        ]
        if self.operator_user is not None:
            checks += [
                ("operator user", self.operator_user),
                ("operator password", self.operator_password if passwords else "-"),
            ]
        for what, value in checks:
            if not value:
                out.append(f"{what} is empty")
        names = [user for _, user, _, _ in self.users() if user]
        if len(set(names)) < len(names):
            out.append(
                "publisher, agent and operator must be different users (only the publisher "
                "may write config)"
            )
        if "guest" in names:
            out.append("'guest' can only log in from localhost: use dedicated users")
        return out


@dataclass(frozen=True)
class ObservedBroker:
    vhosts: frozenset[str]
    users: frozenset[str]


@dataclass(frozen=True)
class CtlStep:
    """One rabbitmqctl call. A password is never in `args`: it goes through stdin."""

    args: tuple[str, ...]
    reason: str
    password_of: str | None = None  # the user whose password is fed on stdin

    def describe(self) -> str:
        return f"rabbitmqctl {shlex.join(self.args)}  # {self.reason}"


def rabbitmqctl(
    executable: str = "rabbitmqctl", node: str | None = None, timeout: float = 60
) -> Ctl:
    """A Ctl that runs the real CLI with the caller's environment (its HOME holds the cookie);
    its failures are BrokerSetupErrors."""
    return rabbitctl.rabbitmqctl(executable, node, timeout=timeout, error=BrokerSetupError)


# -- observe -------------------------------------------------------------------------------------


def parse_names(json_text: str, key: str) -> frozenset[str]:
    """Names from `rabbitmqctl -q list_* --formatter json` output."""
    try:
        rows = json.loads(json_text)
    except json.JSONDecodeError as e:
        raise BrokerSetupError(f"unexpected rabbitmqctl output: {json_text[:200]!r}") from e
    return frozenset(str(row[key]) for row in rows if isinstance(row, dict) and key in row)


def observe(ctl: Ctl) -> ObservedBroker:
    return ObservedBroker(
        vhosts=parse_names(ctl("-q", "list_vhosts", "--formatter", "json"), "name"),
        users=parse_names(ctl("-q", "list_users", "--formatter", "json"), "user"),
    )


# -- plan (pure) ---------------------------------------------------------------------------------


def plan_ctl(spec: BrokerSetupSpec, observed: ObservedBroker | None) -> list[CtlStep]:
    """The rabbitmqctl calls that make `spec` true; `observed=None` plans them all (dry run)."""
    steps: list[CtlStep] = []
    if observed is None or spec.vhost not in observed.vhosts:
        steps.append(CtlStep(("add_vhost", spec.vhost), "the vhost erel-sync lives in"))
    for role, user, perms, topics in spec.users():
        if observed is not None and user in observed.users:
            steps.append(
                CtlStep(("change_password", user), f"{role} exists: set the given password", user)
            )
        else:
            steps.append(CtlStep(("add_user", user), f"the {role} user", user))
        steps.append(
            CtlStep(
                (
                    "set_permissions",
                    "-p",
                    spec.vhost,
                    user,
                    perms.configure,
                    perms.write,
                    perms.read,
                ),
                f"{role} permissions (configure, write, read)",
            )
        )
        for t in topics:
            steps.append(
                CtlStep(
                    ("set_topic_permissions", "-p", spec.vhost, user, t.exchange, t.write, t.read),
                    f"{role} routing keys on {t.exchange} (write, read)",
                )
            )
    return steps


def render_script(
    spec: BrokerSetupSpec, steps: Sequence[CtlStep], *, node: str | None, amqp_url: str
) -> str:
    """A shell script equivalent to `steps` plus the topology, for `--dry-run`.

    Passwords are read from environment variables so the script can be shown and stored.
    """
    ctl = "rabbitmqctl" + (f" -n {shlex.quote(node)}" if node else "")
    env = {spec.publisher_user: "EREL_PUBLISHER_PASSWORD", spec.agent_user: "EREL_AGENT_PASSWORD"}
    if spec.operator_user is not None:
        env[spec.operator_user] = "EREL_OPERATOR_PASSWORD"
    for host in spec.hosts:  # EREL_AGENT_PASSWORD_WEB_1 for web-1
        env[host_user(spec.agent_user, host)] = (
            "EREL_AGENT_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", host).upper()
        )
    lines = [
        "#!/bin/sh",
        "# erel-sync broker setup: run where rabbitmqctl reaches the node (same Erlang cookie).",
        f"# Needs {', '.join(env.values())} in the environment.",
        "set -e",
    ]
    for step in steps:
        if step.password_of is not None:
            var = env[step.password_of]
            user = shlex.quote(step.password_of)
            lines.append(
                f'{ctl} add_user {user} "${{{var}:?}}" || '
                f'{ctl} change_password {user} "${{{var}:?}}"'
            )
        else:
            lines.append(f"{ctl} {shlex.join(step.args)}")
    lines.append(
        f"# Then, over AMQP as {spec.publisher_user} on "
        f"{mask(topology_url(amqp_url, spec.vhost, spec.publisher_user, 'x'))} "
        "(the publisher also declares these when it starts):"
    )
    lines += [f"#   {line}" for line in describe_topology()]
    return "\n".join(lines) + "\n"


def describe_topology() -> list[str]:
    out = [f"exchange.declare {x.name} type={x.type} durable={x.durable}" for x in topo.EXCHANGES]
    for q in topo.QUEUES:
        out.append(f"queue.declare {q.name} durable={q.durable} arguments={q.arguments}")
    for b in topo.BINDINGS:
        out.append(f"queue.bind {b.queue} to {b.exchange} routing_key={b.routing_key!r}")
    return out


# -- apply ---------------------------------------------------------------------------------------


def apply_ctl(
    ctl: Ctl, spec: BrokerSetupSpec, steps: Sequence[CtlStep], echo: Callable[[str], None]
) -> None:
    passwords = spec.passwords()
    for step in steps:
        stdin = None if step.password_of is None else passwords[step.password_of] + "\n"
        try:
            ctl(*step.args, stdin=stdin)
        except Exception as e:
            # The wrapped message is the CLI's stderr: it never echoes stdin, so no password.
            raise BrokerSetupError(f"{step.args[0]} failed: {e}") from e
        echo(f"ok   {step.describe()}")


def topology_url(admin_url: str, vhost: str, user: str, password: str) -> str:
    """`admin_url`'s scheme, host, port and query with the given credentials and vhost."""
    parts = urlsplit(admin_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, vhost_path(vhost), parts.query, ""))


async def declare_topology(url: str, deadline_s: float = 30) -> None:
    """Declare the exchanges, the streams and their bindings (idempotent)."""
    try:
        async with asyncio.timeout(deadline_s):
            connection = await aio_pika.connect(
                url, client_properties={"connection_name": "erel-sync broker setup"}
            )
            async with connection:
                await topo.declare_exchanges(await connection.channel())
                for spec in topo.QUEUES:
                    try:
                        await topo.declare_queue(await connection.channel(), spec)
                    except aiormq.exceptions.ChannelPreconditionFailed as e:
                        if not topo.made_before_replicas(e):
                            raise
                        await topo.declare_queue(await connection.channel(), spec, exists=True)
    except LIBRARY_ERRORS as e:
        error = classify("declaring the topology", e)
        if isinstance(error, PreconditionFailed):
            raise BrokerSetupError(
                f"topology exists with other settings ({e}); the stream's arguments cannot "
                f"change: delete {topo.CONFIG_STREAM} (its history goes with it) or match "
                "adapters.broker.topology"
            ) from e
        raise BrokerSetupError(f"declaring the topology on {mask(url)}: {e}") from e


# -- the whole job -------------------------------------------------------------------------------


def setup_broker(
    spec: BrokerSetupSpec,
    ctl: Ctl,
    amqp_url: str,
    *,
    echo: Callable[[str], None] = print,
) -> None:
    """Observe, plan and apply the rabbitmqctl steps, then declare the topology as the publisher.

    Synchronous (it runs its own event loop for the AMQP part): call it from a thread in async
    code.
    """
    if problems := spec.problems():
        raise ValueError("; ".join(problems))
    resolve_vhost([amqp_url], spec.vhost)  # another vhost in the URL: BrokerUrlError (ValueError)
    observed = observe(ctl)
    if spec.vhost in observed.vhosts:
        echo(f"skip vhost {spec.vhost!r} exists")
    apply_ctl(ctl, spec, plan_ctl(spec, observed), echo)
    url = topology_url(amqp_url, spec.vhost, spec.publisher_user, spec.publisher_password)
    asyncio.run(declare_topology(url))
    for line in describe_topology():
        echo(f"ok   {line}")
