"""The root `erel-sync` Typer application: registers every command group.

Each command's module is imported only when that command runs (or for `--help` and anything
unknown, all of them): a long-lived `erel-sync agent` then carries none of the other commands'
code and libraries in memory, and a short `erel-sync status` starts faster.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

from erel_sync import __version__

# command -> (module, attribute, kind): kind "command" registers a function, "group" a sub-app.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("config", "validate", "command"),
    "plan": ("config", "plan", "command"),
    "keygen": ("daemons", "keygen", "command"),
    "publisher": ("daemons", "publisher", "command"),
    "agent": ("daemons", "agent", "command"),
    "dev": ("dev", "dev", "command"),
    "status": ("ops", "status", "command"),
    "members": ("ops", "members", "command"),
    "wait": ("ops", "wait", "command"),
    "start": ("ops", "start", "command"),
    "stop": ("ops", "stop", "command"),
    "restart": ("ops", "restart", "command"),
    "delete": ("ops", "delete", "command"),
    "broker": ("broker", "app", "group"),
    "release": ("release", "app", "group"),
}


def build(only: Sequence[str] | None = None) -> typer.Typer:
    """The application with every command, or only the named ones."""
    app = typer.Typer(
        name="erel-sync",
        help="GitOps for Erlang/OTP releases: validate and plan config revisions, run the "
        "publisher and agents, operate the cluster.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name, (module, attr, kind) in COMMANDS.items():
        if only is not None and name not in only:
            continue
        target = getattr(importlib.import_module(f"erel_sync.cli.{module}"), attr)
        if kind == "group":
            app.add_typer(target, name=name)
        else:
            app.command(name=name)(target)

    @app.command()
    def version() -> None:
        """Print the erel-sync version.

        Example:
          erel-sync version
        """
        typer.echo(__version__)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    first = args[0] if args else ""
    build([first] if first in COMMANDS else None)(args=args, prog_name="erel-sync")


def __getattr__(name: str) -> typer.Typer:
    # `from erel_sync.cli.main import app` (tests, tools): the full application.
    if name == "app":
        return build()
    raise AttributeError(name)
