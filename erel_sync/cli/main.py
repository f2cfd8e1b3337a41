"""The root `erel-sync` Typer application: registers every command group.

Each command's module is imported only when that command runs (or for `--help` and anything
unknown, all of them): a long-lived `erel-sync agent` then carries none of the other commands'
code and libraries in memory, and a short `erel-sync status` starts faster.

`main` is also the guard of every command: whatever escapes one (a broker error, an OSError, a
bug) ends as one line on stderr and exit 4 (2 for a configuration error), never a traceback.
`EREL_DEBUG=1` shows the traceback; daemons log it at debug level (`--log-level debug`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from erel_sync import __version__
from erel_sync.model.brokerurl import TlsFiles, mask

# command -> (module, attribute, kind): kind "command" registers a function, "group" a sub-app.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("config", "validate", "command"),
    "plan": ("config", "plan", "command"),
    "keygen": ("daemons", "keygen", "command"),
    "publisher": ("daemons", "publisher", "command"),
    "agent": ("daemons", "agent", "command"),
    "dev": ("dev", "dev", "command"),
    "status": ("status", "status", "command"),
    "members": ("members", "members", "command"),
    "wait": ("waiting", "wait", "command"),
    "history": ("history", "history", "command"),
    "web": ("web", "web", "command"),
    "notify": ("notify", "notify", "command"),
    "start": ("steer", "start", "command"),
    "stop": ("steer", "stop", "command"),
    "restart": ("steer", "restart", "command"),
    "delete": ("steer", "delete", "command"),
    "broker": ("broker", "app", "group"),
    "release": ("release", "app", "group"),
    "rollout": ("rollout", "app", "group"),
    "secret": ("secret", "app", "group"),
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

    @app.callback()
    def tls(
        tls_ca: Annotated[
            Path | None,
            typer.Option(
                "--tls-ca", envvar="EREL_TLS_CA", help="CA (PEM) of the brokers' certificates."
            ),
        ] = None,
        tls_cert: Annotated[
            Path | None,
            typer.Option(
                "--tls-cert", envvar="EREL_TLS_CERT", help="Client certificate (PEM) for amqps."
            ),
        ] = None,
        tls_key: Annotated[
            Path | None,
            typer.Option("--tls-key", envvar="EREL_TLS_KEY", help="The client certificate's key."),
        ] = None,
    ) -> None:
        """GitOps for Erlang/OTP releases. The --tls-* options apply to every amqps:// broker
        URL of the command that follows (hostnames are always verified)."""
        if tls_ca or tls_cert or tls_key:
            from erel_sync.cli import common  # noqa: PLC0415

            common.TLS = TlsFiles(*(str(p) if p else None for p in (tls_ca, tls_cert, tls_key)))

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


DEBUG_ENV = "EREL_DEBUG"


def describe(error: BaseException) -> tuple[str, int]:
    """The one line an escaped error becomes (first line, bounded, passwords masked), and
    the exit code: 2 for what the user must fix, 4 for everything else."""
    from erel_sync.model.problems import ConfigError  # noqa: PLC0415

    text = " ".join(str(error).split()) if str(error).strip() else ""
    if isinstance(error, ConfigError):
        return f"invalid configuration: {text}", 2
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        text = f"{where}{error.strerror}"
    elif isinstance(error, asyncio.CancelledError):
        text = "the broker connection was lost (its pending calls were cancelled)"
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason and not text.startswith(reason):
        text = f"{reason}: {text}"
    module = type(error).__module__
    kind = type(error).__name__
    # Every error of the broker adapter (its module path), and library errors that escaped it.
    if module.split(".")[0] in ("aiormq", "aio_pika", "pamqp") or module.startswith(
        "erel_sync.adapters.broker"
    ):
        prefix = "broker: "
    elif module.startswith("erel_sync") or isinstance(error, OSError | asyncio.CancelledError):
        prefix = ""
    else:
        prefix = "internal error: "  # a bug: say so, and how to see more
        text = f"{kind}: {text} ({DEBUG_ENV}=1 shows the traceback)"
    line = mask(prefix + (text or kind))
    return line[:500], 4


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    first = args[0] if args else ""
    try:
        build([first] if first in COMMANDS else None)(args=args, prog_name="erel-sync")
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:  # the guard of every command (see the module docstring)
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        logging.getLogger("erel_sync.cli").debug("%s failed", first or "erel-sync", exc_info=True)
        line, code = describe(e)
        sys.stderr.write(f"erel-sync: {line}\n")
        raise SystemExit(code) from None


def __getattr__(name: str) -> typer.Typer:
    # `from erel_sync.cli.main import app` (tests, tools): the full application.
    if name == "app":
        return build()
    raise AttributeError(name)
