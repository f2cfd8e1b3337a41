"""`erel-sync notify`: send the events the config repository's Notification documents ask for
(publisher/notifier.py), until SIGTERM or Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from erel_sync.cli.common import AmqpUrl, LogFormatOpt, VhostOpt, urls_of


def notify(
    repo: Annotated[Path, typer.Option("--repo", help="A clone of the config repository.")],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Outbox and what was sent (notify.json).")
    ] = Path("/var/lib/erel-sync/notify"),
    amqp_url: AmqpUrl = None,
    vhost: VhostOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Send notifications (webhook with an HMAC signature, or Slack-compatible) for the events
    the published revision's Notification documents name: revision rejected, host failed,
    rollout halted or completed, host unreachable. Retried until delivered; never twice.

    Example: EREL_AMQP_URL=amqp://ops:…@mq-1:5672/erel EREL_SLACK_URL=https://hooks.slack…
      erel-sync notify --repo /srv/config --state-dir /var/lib/erel-sync/notify
    """
    from erel_sync.cli.daemons import run_daemon, setup_logging  # noqa: PLC0415
    from erel_sync.publisher.notifier import Notifier  # noqa: PLC0415

    setup_logging(log_level, log_format)
    run_daemon(Notifier(repo, state_dir, urls_of(amqp_url, vhost)).run)
