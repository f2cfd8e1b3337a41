"""The one way erel-sync runs `rabbitmqctl`: argv, environment, a secret on stdin, a timeout,
and a bounded error that names the subcommand.

Used by `adapters.broker.setup` (`erel-sync broker setup`), `dev.rabbitnode` (the private test
and dev node, which passes its own environment: HOME holds the Erlang cookie) and the test
plugin `tests/rabbit.py`. Lives in the broker family because rabbitmqctl manages what AMQP
cannot (vhosts, users, permissions); it is the broker adapter's only module that starts
processes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Protocol

OUTPUT_TAIL = 2000  # characters of rabbitmqctl's own error output kept in an error


class RabbitCtlError(Exception):
    """rabbitmqctl could not run, timed out or exited non-zero. The message names the
    subcommand and carries the tail of its output, never its arguments (which may name
    users) nor what was fed on stdin (a password)."""


class Ctl(Protocol):
    """Runs `rabbitmqctl ARGS` against one node and returns stdout."""

    def __call__(self, *args: str, stdin: str | None = None) -> str: ...


def subcommand(args: tuple[str, ...]) -> str:
    """The rabbitmqctl command among `args` (`-q list_users ...` -> `list_users`)."""
    return next((a for a in args if not a.startswith("-")), "")


def run(
    executable: str,
    *args: str,
    node: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 60,
    error: type[Exception] = RabbitCtlError,
) -> str:
    """`executable [-n node] ARGS`; stdout, or `error` (the caller's own error type)."""
    argv = [executable, *(["-n", node] if node else []), *args]
    what = f"rabbitmqctl {subcommand(args)}"
    try:
        done = subprocess.run(
            argv,
            env=None if env is None else dict(env),
            input=None if stdin is None else stdin.encode(),
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise error(f"{what} timed out after {timeout}s") from e
    except OSError as e:
        raise error(f"{what}: {e}") from e
    if done.returncode != 0:
        err = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise error(f"{what} exited {done.returncode}: {err[-OUTPUT_TAIL:]}")
    return done.stdout.decode(errors="replace")


def rabbitmqctl(
    executable: str = "rabbitmqctl",
    node: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    error: type[Exception] = RabbitCtlError,
) -> Ctl:
    """A `Ctl` for one node (None: rabbitmqctl's default node; `env` None: the caller's
    environment, whose HOME holds the cookie)."""

    def ctl(*args: str, stdin: str | None = None) -> str:
        return run(executable, *args, node=node, env=env, stdin=stdin, timeout=timeout, error=error)

    return ctl
