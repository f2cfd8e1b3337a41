"""`erel-sync history`: what was published, and what each host applied.

The publisher's side is the `erel.revisions` stream (its `published` events: seq, revision,
time, the head commit's author and subject); each host's side is the `history` of its
answer to a `status` query (core.history: the last revisions it applied or failed, when, how
long after the snapshot arrived). A revert is then one command away: `git revert` of the
revision shown (docs/operating.md).

Exit codes: 0; 3 some hosts seen lately did not answer; 4 broker unreachable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from erel_sync.cli.common import (
    AmqpUrl,
    Exit,
    GroupOpt,
    HostOpt,
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

REVISION_HEADERS = ("SEQ", "REVISION", "PUBLISHED", "AUTHOR", "SUBJECT")
HOST_HEADERS = ("HOST", "SEQ", "REVISION", "AT", "RESULT", "TOOK", "REASON")


def _when(value: Any) -> str:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value or "")[:19].replace("T", " ") + ("Z" if value else "")


def revision_rows(revisions: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [str(r.get("seq", "")), str(r.get("revision", ""))[:12], _when(r.get("time")),
         str(r.get("author", "")), str(r.get("subject", ""))[:60]]
        for r in revisions
    ]  # fmt: skip


def host_rows(hosts: dict[str, list[dict[str, Any]] | None]) -> list[list[str]]:
    rows = []
    for host, entries in sorted(hosts.items()):
        if entries is None:
            rows.append([host, "", "", "", "unknown", "", "did not answer, or an older agent"])
            continue
        for e in reversed(entries):  # newest first
            rows.append(
                [host, str(e.get("seq", "")), str(e.get("revision", ""))[:12],
                 _when(e.get("time")), str(e.get("result", "")),
                 f"{float(e.get('duration') or 0):.1f}s", str(e.get("reason", ""))[:60]]
            )  # fmt: skip
    return rows


def history(
    host: HostOpt = None,
    group: GroupOpt = None,
    output: OutputOpt = Output.table,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Revisions shown.")] = 10,
    since: SinceOpt = "10m",
    timeout: TimeoutOpt = 2.0,
    amqp_url: AmqpUrl = None,
    vhost: VhostOpt = None,
) -> None:
    """The last revisions published (seq, revision, time, author, subject) and, per host, the
    last ones it applied or failed (when, result, how long after the snapshot arrived).

    With --host or --group only those hosts are asked. JSON and YAML print
    {"revisions": [...], "hosts": {host: [entries] | null}}, newest first.

    Examples:
      erel-sync history
      erel-sync history --host web-1 -n 5
      git revert --no-edit $(erel-sync history -o json | jq -r '.revisions[0].revision')
    """
    lookback = seconds(since, "--since")
    urls = urls_of(amqp_url, vhost)
    raise typer.Exit(run(_history(host, group, output, limit, lookback, timeout, urls), urls))


async def _history(
    host: str | None,
    group: str | None,
    output: Output,
    limit: int,
    since: float,
    within: float,
    urls: list[str],
) -> int:
    from erel_sync.adapters.broker.opsclient import OpsClient  # noqa: PLC0415
    from erel_sync.cli.status import ask_hosts  # noqa: PLC0415

    revisions: list[dict[str, Any]] = []
    async with OpsClient(urls) as client:
        await client.follow_revisions(
            lambda d: revisions.append(d) if d.get("kind") == "published" else None
        )
        _, expected, replies = await ask_hosts(
            client, group=group, host=host, since=since, within=within
        )
    hosts: dict[str, list[dict[str, Any]] | None] = {h: None for h in expected}
    for h, docs in replies.items():
        result = (docs[0].get("result") or {}) if docs else {}
        if group is not None and result.get("group") != group:
            continue
        past = result.get("history")
        hosts[h] = list(past) if isinstance(past, list) else None
    newest = sorted(revisions, key=lambda r: int(r.get("seq") or 0), reverse=True)[:limit]
    if output in (Output.json, Output.yaml):
        doc = {
            "revisions": newest,
            "hosts": {h: (list(reversed(e)) if e is not None else None) for h, e in hosts.items()},
        }
        typer.echo(dump(doc, output))
    else:
        published = revision_rows(newest)
        typer.echo(render_table(REVISION_HEADERS, published) if published else "none published")
        typer.echo("")
        applied = host_rows(hosts)
        typer.echo(render_table(HOST_HEADERS, applied) if applied else "no hosts answered")
    return int(Exit.PARTIAL) if any(e is None for e in hosts.values()) else int(Exit.OK)
