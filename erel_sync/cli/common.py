"""Shared CLI pieces: exit codes (DESIGN.md §6), output formats, one-line errors, the broker
URL + vhost options of every command that connects (one rule: `model.brokerurl`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import IntEnum, StrEnum
from typing import Annotated, NoReturn

import typer

from erel_sync.model import brokerurl


class Exit(IntEnum):
    OK = 0
    CHANGES = 1  # plan: changes; wait: failed
    INVALID = 2  # the user must fix the input
    PARTIAL = 3  # some hosts did not answer (listed) / timed out
    RUNTIME = 4  # could not do the job (broker, git, filesystem)


class TextJson(StrEnum):
    text = "text"
    json = "json"


class PlanFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


def fail(message: str, code: Exit = Exit.RUNTIME) -> NoReturn:
    """One clear line on stderr, then exit."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stderr.write(f"erel-sync: {first}\n")
    raise typer.Exit(int(code))


VhostOpt = Annotated[
    str | None,
    typer.Option(
        "--vhost",
        envvar="EREL_AMQP_VHOST",
        help="RabbitMQ virtual host for broker URLs that name none (default: the URL's, else /). "
        "A URL naming another vhost is an error.",
    ),
]


def broker_urls(urls: Sequence[str], vhost: str | None) -> list[str]:
    """`urls` under the vhost rule (`model.brokerurl`); a conflict exits 2 with one line."""
    try:
        return list(brokerurl.broker_urls(urls, vhost))
    except brokerurl.BrokerUrlError as e:
        fail(f"{e.reason}: {e}", Exit.INVALID)
