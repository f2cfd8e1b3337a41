"""The root `erel-sync` Typer application: registers every command group."""

from __future__ import annotations

import typer

from erel_sync import __version__
from erel_sync.cli import broker, config, daemons, dev, ops
from erel_sync.cli.release import app as release_app

app = typer.Typer(
    name="erel-sync",
    help="GitOps for Erlang/OTP releases: validate and plan config revisions, run the publisher "
    "and agents, operate the cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(config.validate)
app.command()(config.plan)
app.command()(daemons.keygen)
app.command()(daemons.publisher)
app.command()(daemons.agent)
app.command()(dev.dev)
app.command()(ops.status)
app.command()(ops.members)
app.command()(ops.wait)
app.command(name="start")(ops.start)
app.command(name="stop")(ops.stop)
app.command(name="restart")(ops.restart)
app.command(name="delete")(ops.delete)
app.add_typer(broker.app, name="broker")
app.add_typer(release_app, name="release")


@app.command()
def version() -> None:
    """Print the erel-sync version.

    Example:
      erel-sync version
    """
    typer.echo(__version__)


def main() -> None:
    app()
