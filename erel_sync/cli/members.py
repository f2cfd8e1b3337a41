"""`erel-sync members`: the live hosts of the cluster, their group, labels and agent version.

Adapter glue over the same status query as `status` (`cli.status.gather_entries`):
`core.clusterview` shapes the members, `core.liveness` decides the exit code (docs/operating.md):
0 every known host answered; 3 some did not (listed); 2 invalid input; 4 runtime error. Two
agents claiming one host id are flagged Duplicate and named on stderr.
"""

from __future__ import annotations

import time

import typer

from erel_sync.cli.common import (
    AmqpUrl,
    Output,
    OutputOpt,
    SinceOpt,
    TimeoutOpt,
    VhostOpt,
    dump,
    render_table,
    run,
    seconds,
    urls_of,
)
from erel_sync.cli.status import gather_entries, notify
from erel_sync.core import clusterview as view
from erel_sync.core import liveness


def members(
    output: OutputOpt = Output.table,
    since: SinceOpt = "10m",
    timeout: TimeoutOpt = 2.0,
    amqp_url: AmqpUrl = None,
    vhost: VhostOpt = None,
) -> None:
    """Live hosts: group (or unassigned), labels, agent version, last seen.

    Two agents claiming one host id are flagged Duplicate. Hosts seen within
    --since that do not answer are listed as Unreachable; exit code 3.

    Examples:
      erel-sync members
      erel-sync members -o wide
      erel-sync members -o json | jq -r '.[] | select(.state != "Live") | .host_id'
    """
    lookback = seconds(since, "--since")
    urls = urls_of(amqp_url, vhost)
    raise typer.Exit(run(_members(output, lookback, timeout, urls), urls))


async def _members(output: Output, since: float, within: float, urls: list[str]) -> int:
    from erel_sync.adapters.broker.opsclient import OpsClient  # noqa: PLC0415

    async with OpsClient(urls) as client:
        entries = await gather_entries(client, group=None, host=None, since=since, within=within)
    now = time.time()
    ms = view.member_entries(entries)
    if output in (Output.json, Output.yaml):
        print(dump(ms, output))
    elif not ms:
        print("no hosts (no agent answered and none was seen within --since)")
    else:
        wide = output is Output.wide
        headers = view.MEMBER_WIDE_HEADERS if wide else view.MEMBER_HEADERS
        print(render_table(headers, view.member_rows(ms, now=now, wide=wide)))
    return notify(liveness.members_outcome(ms, entries, now))
