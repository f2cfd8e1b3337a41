"""`erel-sync web --listen 127.0.0.1:8080`: the live, read-only page of the fleet
(adapters/web/server.py), until SIGTERM or Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer

from erel_sync.cli.common import AmqpUrl, Exit, LogFormatOpt, VhostOpt, fail, urls_of


def web(
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help="Where to serve the page (default localhost only: put a reverse proxy with "
            "authentication in front to share it; docs/web.md).",
        ),
    ] = "127.0.0.1:8080",
    amqp_url: AmqpUrl = None,
    vhost: VhostOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Serve one live page: groups, hosts × releases (desired and running version, health,
    hold, last error, last seen), rollouts, the current and rejected revisions, and hosts
    unassigned, ambiguous or claimed twice. Read-only; operator credentials reach the broker.

    Example: EREL_AMQP_URL=amqp://ops:…@mq-1:5672/erel erel-sync web --listen 127.0.0.1:8080
    """
    from erel_sync.adapters.web.server import serve  # noqa: PLC0415
    from erel_sync.cli.daemons import run_daemon, setup_logging  # noqa: PLC0415
    from erel_sync.model.names import listen_address  # noqa: PLC0415

    setup_logging(log_level, log_format)
    try:
        host, port = listen_address(listen)
    except ValueError as e:
        fail(f"--listen: {e}", Exit.INVALID)
    urls = urls_of(amqp_url, vhost)
    run_daemon(lambda stop: serve(urls, host, port, stop))
