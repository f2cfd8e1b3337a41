"""Shared CLI pieces: exit codes, output formats, one-line errors, the options of every command
that talks to the cluster (broker URLs + vhost, group, host, look-back, timeout), the broker-error
wrapper, and the one table renderer.

Imported by every command module (`cli.status`, `cli.members`, `cli.waiting`, `cli.steer`,
`cli.release`, `cli.config`, `cli.daemons`, `cli.broker`, `cli.dev`). Kept light: aio-pika, YAML
and rich load only when a command needs them, so that `erel-sync status -o json` starts fast.
Exit codes are those of docs/operating.md; broker URLs follow one rule (`model.brokerurl`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from erel_sync.model import brokerurl
from erel_sync.model.names import parse_duration

if TYPE_CHECKING:  # rich loads only when a table is printed
    from rich.table import Table
    from rich.text import Text


class Exit(IntEnum):
    OK = 0
    CHANGES = 1  # plan: changes; wait: failed
    INVALID = 2  # the user must fix the input
    PARTIAL = 3  # some hosts did not answer (listed) / timed out
    RUNTIME = 4  # could not do the job (broker, git, filesystem)


class Output(StrEnum):
    """How commands that print records (hosts, releases, command results) print them."""

    table = "table"
    wide = "wide"  # the table with every column and whole messages
    json = "json"
    yaml = "yaml"


class TextJson(StrEnum):
    """`validate`: a verdict and its problems, as text or JSON."""

    text = "text"
    json = "json"


class PlanFormat(StrEnum):
    """`plan`: a review, as text, JSON or Markdown (for a pull-request comment)."""

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
LogFormatOpt = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="EREL_LOG_FORMAT",
        help="text, or json: one object per line with stable keys (time, level, event, "
        "host_id, release, seq, revision, reason).",
    ),
]
MetricsOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics-listen",
        envvar="EREL_METRICS_LISTEN",
        metavar="HOST:PORT",
        help="Serve Prometheus metrics on HOST:PORT (GET /metrics; off by default).",
    ),
]
AmqpUrl = Annotated[
    list[str] | None,
    typer.Option("--amqp-url", envvar="EREL_AMQP_URL", help="Broker URL(s) (operator user)."),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table, wide, json or yaml.")]
GroupOpt = Annotated[str | None, typer.Option("--group", "-g", help="Only this group's hosts.")]
HostOpt = Annotated[str | None, typer.Option("--host", "-H", help="Only this host.")]
SinceOpt = Annotated[
    str,
    typer.Option(
        "--since",
        help="How far back presence records count: a host silent for longer is forgotten.",
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for hosts to answer.")
]

OPERATOR_URL = brokerurl.DEFAULT_URL  # when neither --amqp-url nor the env says

# `erel-sync --tls-ca … --tls-cert … --tls-key … COMMAND` (or EREL_TLS_*): set once by the
# application's callback for whichever command runs (cli.main).
TLS: brokerurl.TlsFiles | None = None


def broker_urls(urls: Sequence[str], vhost: str | None) -> list[str]:
    """`urls` under the vhost rule (`model.brokerurl`), with the TLS files of the command line;
    a conflict exits 2 with one line."""
    try:
        return list(brokerurl.broker_urls(urls, vhost, TLS))
    except brokerurl.BrokerUrlError as e:
        fail(f"{e.reason}: {e}", Exit.INVALID)


def urls_of(amqp_url: list[str] | None, vhost: str | None) -> list[str]:
    return broker_urls(amqp_url or [OPERATOR_URL], vhost)


def seconds(text: str, what: str) -> float:
    """A duration option (`10m`, `90s`) in seconds; a bad one exits 2 naming the option."""
    try:
        return parse_duration(text)
    except ValueError as e:
        fail(f"{what}: {e}", Exit.INVALID)


def run(coro: Any, urls: list[str] | None = None) -> Any:
    """Run a command's coroutine; a broker error ends as one line naming the broker (password
    masked), exit 4; Ctrl-C exits 0."""
    from erel_sync.adapters.broker.messages import BrokerError  # noqa: PLC0415 - aio-pika only when used

    # aiormq logs every failed connection attempt; the CLI reports the outcome in one line.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        return asyncio.run(coro)
    except BrokerError as e:
        where = ", ".join(brokerurl.mask(u) for u in urls or [])
        fail(f"broker {where}: {e}" if where else f"broker: {e}")
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def dump(doc: Any, output: Output) -> str:
    """`doc` as YAML for `-o yaml`, else as indented JSON."""
    if output is Output.yaml:
        import yaml  # noqa: PLC0415

        return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)).rstrip()
    return json.dumps(doc, indent=2)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str | Text]],
    *,
    title: str | None = None,
    boxed: bool = False,
) -> Table:
    """A rich table of these rows. Plain (the default): no box, columns two spaces apart, cells
    never wrapped or cut, like kubectl; `boxed`: lines around, a title, cells wrapped to the
    terminal (the live view of `erel-sync dev`). A `str` cell is shown as it is (never read as
    rich markup); give a `rich.text.Text` to style one."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    if boxed:
        t = Table(title=title, expand=False)
        for h in headers:
            t.add_column(h)
    else:
        t = Table(box=None, pad_edge=False, show_edge=False, expand=False)
        for h in headers:
            t.add_column(h, no_wrap=True, overflow="ignore")
    for row in rows:
        t.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in row))
    return t


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, styled: bool = False
) -> str:
    """Rows as aligned plain-text columns under their headers, trailing blanks stripped: stable
    in pipes and logs, and what scripts (and the e2e tests) parse. `styled` (for a terminal):
    bold headers; no escape codes otherwise."""
    from rich.cells import cell_len  # noqa: PLC0415
    from rich.console import Console  # noqa: PLC0415

    widths = [cell_len(h) for h in headers]
    for row in rows:
        widths = [max(w, cell_len(str(c))) for w, c in zip(widths, row, strict=False)]
    out = io.StringIO()
    console = Console(
        file=out,
        width=sum(widths) + 2 * len(widths) + 1,  # the whole table: nothing is wrapped or cut
        force_terminal=styled,
        color_system="standard" if styled else None,
        highlight=False,
        markup=False,
        emoji=False,
    )
    console.print(table(headers, rows))
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").split("\n"))
