"""`erel-sync broker setup`: make a RabbitMQ vhost ready (users, permissions, topology).

A Typer sub-app (`app`) that the root application mounts as `broker`. The work is done by
`adapters.broker.setup`; this module only reads options, wires the real `rabbitmqctl` and maps
errors to exit codes (2: bad input, 4: the broker or rabbitmqctl refused).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from erel_sync.cli.common import Exit, fail
from erel_sync.model import brokerurl

app = typer.Typer(
    name="broker",
    help="Prepare the RabbitMQ broker erel-sync uses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def broker() -> None:
    """Prepare the RabbitMQ broker erel-sync uses (a group, even with one command)."""


@app.command()
def setup(
    amqp_url: Annotated[
        str,
        typer.Option(
            "--amqp-url",
            envvar="EREL_AMQP_URL",
            help="Broker address (amqp:// or amqps://, host, port, query, optionally the vhost "
            "as its path). The topology is declared as the publisher user on this host; "
            "credentials in the URL are not used.",
        ),
    ],
    publisher_password: Annotated[
        str,
        typer.Option(
            "--publisher-password",
            envvar="EREL_PUBLISHER_PASSWORD",
            help="Prefer the env var (command lines show in `ps`). Not needed with --dry-run.",
        ),
    ] = "",
    agent_password: Annotated[
        str,
        typer.Option(
            "--agent-password",
            envvar="EREL_AGENT_PASSWORD",
            help="Prefer the env var. Not needed with --dry-run.",
        ),
    ] = "",
    vhost: Annotated[
        str | None,
        typer.Option(
            "--vhost",
            envvar="EREL_AMQP_VHOST",
            help="Virtual host to use (created). Default: the URL's, else /; a URL naming "
            "another vhost is an error.",
        ),
    ] = None,
    publisher_user: Annotated[
        str, typer.Option("--publisher-user", help="User the publisher logs in as.")
    ] = "erel-publisher",
    agent_user: Annotated[
        str, typer.Option("--agent-user", help="User every agent logs in as.")
    ] = "erel-agent",
    operator_user: Annotated[
        str | None,
        typer.Option(
            "--operator-user",
            help="Also make this user for `erel-sync status|members|wait|start|stop|…`: it may "
            "send commands and read status, never write config.",
        ),
    ] = None,
    operator_password: Annotated[
        str,
        typer.Option(
            "--operator-password",
            envvar="EREL_OPERATOR_PASSWORD",
            help="With --operator-user. Prefer the env var. Not needed with --dry-run.",
        ),
    ] = "",
    node: Annotated[
        str | None,
        typer.Option("--node", help="rabbitmqctl -n NODE (default: rabbitmqctl's own default)."),
    ] = None,
    ctl_path: Annotated[
        str, typer.Option("--rabbitmqctl", help="The rabbitmqctl executable.")
    ] = "rabbitmqctl",
    hosts: Annotated[
        Path | None,
        typer.Option(
            "--hosts",
            help="A host inventory (as for `plan --hosts`): also one agent user per host, "
            "AGENT_USER@HOST, allowed only that host's routing keys and queues.",
        ),
    ] = None,
    host_passwords: Annotated[
        Path | None,
        typer.Option(
            "--host-passwords",
            help="With --hosts: the directory of HOST.password files (0600); a missing one is "
            "made with a random password, an existing one is kept.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Contact nothing; print an equivalent shell script (passwords from env vars).",
        ),
    ] = False,
) -> None:
    """Create the vhost, the publisher, agent and (with --operator-user) operator users with
    their permissions and topic permissions, and the topology.

    Idempotent: existing users get the given password and permissions again. rabbitmqctl must
    reach the broker node from here (same Erlang cookie in $HOME); if it cannot, use --dry-run
    and run the script on a broker host.

    Examples:
      EREL_PUBLISHER_PASSWORD=... EREL_AGENT_PASSWORD=... EREL_OPERATOR_PASSWORD=... \\
        erel-sync broker setup --amqp-url amqp://broker:5672/ --vhost erel \\
        --operator-user erel-operator
      erel-sync broker setup --amqp-url amqp://broker:5672/ --vhost erel --dry-run > setup.sh
    """
    # aio-pika (in brokersetup) loads only when this command runs, not on every CLI start.
    from erel_sync.adapters.broker.setup import (  # noqa: PLC0415
        BrokerSetupError,
        BrokerSetupSpec,
        plan_ctl,
        rabbitmqctl,
        render_script,
        setup_broker,
    )

    try:
        vhost = brokerurl.resolve_vhost([amqp_url], vhost)
    except brokerurl.BrokerUrlError as e:
        fail(f"{e.reason}: {e}", Exit.INVALID)
    spec = BrokerSetupSpec(
        vhost=vhost,
        publisher_user=publisher_user,
        publisher_password=publisher_password,
        agent_user=agent_user,
        agent_password=agent_password,
        operator_user=operator_user,
        operator_password=operator_password,
        hosts=host_user_passwords(hosts, host_passwords, make=not dry_run),
    )
    if problems := spec.problems(passwords=not dry_run):
        fail("; ".join(problems), Exit.INVALID)
    if dry_run:
        sys.stdout.write(render_script(spec, plan_ctl(spec, None), node=node, amqp_url=amqp_url))
        return
    try:
        setup_broker(spec, rabbitmqctl(ctl_path, node), amqp_url, echo=typer.echo)
    except BrokerSetupError as e:
        fail(str(e), Exit.RUNTIME)
    except ValueError as e:
        fail(str(e), Exit.INVALID)


def host_user_passwords(
    inventory: Path | None, where: Path | None, *, make: bool
) -> dict[str, str]:
    """Each inventory host's agent password, from `where/HOST.password` (made when missing
    and `make`); {} without an inventory."""
    import secrets  # noqa: PLC0415

    from erel_sync.adapters import store  # noqa: PLC0415
    from erel_sync.core.inventory import parse_inventory  # noqa: PLC0415
    from erel_sync.model.problems import ConfigError  # noqa: PLC0415

    if inventory is None:
        return {}
    if where is None and make:
        fail("--hosts needs --host-passwords DIR (where each host's password is kept)")
    try:
        hosts = [h.host_id for h in parse_inventory(str(inventory), inventory.read_bytes())]
    except OSError as e:
        fail(f"{inventory}: {e.strerror or e}", Exit.INVALID)
    except ConfigError as e:
        fail("; ".join(map(str, e.problems)), Exit.INVALID)
    out = {}
    for host in hosts:
        if where is None:
            out[host] = ""
            continue
        file = where / f"{host}.password"
        if not file.exists() and make:
            store.write_atomic(file, secrets.token_urlsafe(24).encode(), mode=0o600)
        out[host] = file.read_text().strip() if file.exists() else ""
    return out
