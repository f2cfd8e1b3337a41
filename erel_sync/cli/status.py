"""`erel-sync status [--watch]`: desired vs running releases of every host in the cluster.

Adapter glue: `adapters.broker.opsclient` talks to the broker, `core.clusterview` decides what to
show, `core.conditions` what is wrong and `core.liveness` who counts as alive and the exit code
(docs/operating.md): 0 every host converged and healthy; 1 something Failed or Degraded, or
(with every host answering) not converged yet; 3 some hosts did not answer (listed); 2 invalid
input; 4 runtime error (broker unreachable, no erel-sync topology in the vhost).
`gather_entries`, the status query itself, is shared with `members` and `wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
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
from erel_sync.core import clusterview as view
from erel_sync.core import control, liveness, rolloutview


async def gather_entries(
    client: Any,
    *,
    group: str | None,
    host: str | None,
    since: float,
    within: float,
) -> list[dict[str, Any]]:
    """Ask every host in scope for its status and join the answers with presence."""
    known, _, replies = await ask_hosts(client, group=group, host=host, since=since, within=within)
    return view.host_entries(known, replies, now=time.time(), group=group, host=host)


async def ask_hosts(
    client: Any,
    *,
    group: str | None,
    host: str | None,
    since: float,
    within: float,
) -> tuple[dict[str, Any], set[str], dict[str, list[dict[str, Any]]]]:
    """The `status` query: who is known (presence within `since`), who of them is in scope,
    and every answer by host (`history` reads the answers' own fields)."""
    from erel_sync.adapters.broker.messages import PublishFailed  # noqa: PLC0415

    now = time.time()
    target = control.target_for(host, group)
    ttl = max(10.0, within * 2)
    cmd = control.new_command("status", None, target, now=now, ttl=ttl)
    presence = asyncio.create_task(client.read_presence(now - since))
    # PublishFailed: no live agent for that host; it shows as unreachable (if known) below.
    with contextlib.suppress(PublishFailed):
        await client.send(cmd, ttl)
    known = view.known_hosts(await presence)
    expected = {
        h
        for h, k in known.items()
        if (group is None or k.last.get("group") == group) and (host is None or h == host)
    }
    replies = await client.collect(cmd.id, expected=expected, within=within)
    return known, expected, replies


def notify(outcome: liveness.Outcome) -> int:
    """The outcome's notes on stderr (one line each); its exit code."""
    for note in outcome.notes:
        sys.stderr.write(f"erel-sync: {note}\n")
    return outcome.code


def _render_status(
    entries: list[dict[str, Any]],
    output: Output,
    now: float,
    rollouts: dict[str, Any] | None = None,
) -> str:
    if output in (Output.json, Output.yaml):
        return dump(entries, output)
    wide = output is Output.wide
    headers = view.STATUS_WIDE_HEADERS if wide else view.STATUS_HEADERS
    if not entries:
        text = "no hosts (no agent answered and none was seen within --since)"
    else:
        text = render_table(headers, view.status_rows(entries, now=now, wide=wide))
    rows = rolloutview.rows(rollouts)
    if rows:  # each group's rollout under the hosts (JSON keeps its list of hosts)
        text += "\n\n" + render_table(rolloutview.ROLLOUT_HEADERS, rows)
    return text


def status(
    group: GroupOpt = None,
    host: HostOpt = None,
    output: OutputOpt = Output.table,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Keep updating.")] = False,
    since: SinceOpt = "10m",
    timeout: TimeoutOpt = 2.0,
    amqp_url: AmqpUrl = None,
    vhost: VhostOpt = None,
) -> None:
    """Desired vs running release versions, state, health, revision and holds of every host.

    One row per host and release. Hosts seen lately (presence within --since)
    that do not answer within --timeout are listed as Unreachable; exit code 3.
    JSON and YAML print a list of host objects
    (schemas/cli/status.schema.json).

    Examples:
      erel-sync status
      erel-sync status --group web -o wide
      erel-sync status --host web-1 -o json | jq '.[0].releases'
      erel-sync status --watch
    """
    lookback = seconds(since, "--since")
    urls = urls_of(amqp_url, vhost)
    code = run(_status(group, host, output, watch, lookback, timeout, urls), urls)
    raise typer.Exit(code)


async def _status(
    group: str | None,
    host: str | None,
    output: Output,
    watch: bool,
    since: float,
    within: float,
    urls: list[str],
) -> int:
    from erel_sync.adapters.broker.messages import BrokerError  # noqa: PLC0415
    from erel_sync.adapters.broker.opsclient import OpsClient  # noqa: PLC0415

    async with OpsClient(urls) as client:
        docs: list[dict[str, Any]] = []
        # The rollout documents are read while the hosts answer, not before: no added wait.
        rollouts = asyncio.create_task(client.follow_rollouts(docs.append, max_wait=0.3))
        entries = await gather_entries(client, group=group, host=host, since=since, within=within)
        with contextlib.suppress(BrokerError):  # a user set up before rollouts
            await rollouts
        now = time.time()
        if not watch:
            shown = {"groups": rolloutview.groups(rolloutview.newest(docs), group)}
            print(_render_status(entries, output, now, shown))
            return notify(liveness.status_outcome(entries, now, host=host))
        await _watch(client, entries, group, host, output, docs)
    return int(Exit.OK)


async def _watch(
    client: Any,
    entries: list[dict[str, Any]],
    group: str | None,
    host: str | None,
    output: Output,
    rollouts: list[dict[str, Any]],
) -> None:
    """Follow heartbeats and redraw when the table changes; who still counts is
    `liveness.watch_replies` (a host not heard for 3 heartbeat intervals turns Unreachable; two
    instances heartbeating for one host id at once are flagged as duplicates)."""
    beats: dict[str, dict[str, dict[str, Any]]] = {}  # host -> instance -> newest heartbeat
    first: dict[str, dict[str, float]] = {}  # host -> instance -> first heard
    known = {e["host_id"]: e for e in entries}
    changed = asyncio.Event()

    def on_beat(doc: dict[str, Any]) -> None:
        host, instance = str(doc.get("host_id")), str(doc.get("instance"))
        beats.setdefault(host, {})[instance] = doc
        first.setdefault(host, {}).setdefault(instance, float(doc["received"]))
        changed.set()

    await client.follow_heartbeats(on_beat)
    tty = sys.stdout.isatty()
    last = ""
    while True:
        now = time.time()
        replies = liveness.watch_replies(beats, first, entries, now)
        known_now = {
            h: view.Known(h, {**e, "sent": e["last_seen"]}, view.parse_time(e["last_seen"]) or 0)
            for h, e in known.items()
        }
        current = view.host_entries(known_now, replies, now=now, group=group, host=host)
        for e in current:
            known[e["host_id"]] = e
        shown = {"groups": rolloutview.groups(rolloutview.newest(rollouts[-20:]), group)}
        text = _render_status(current, output, now, shown)
        if text != last:
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text if output not in (Output.json,) else json.dumps(current), flush=True)
            last = text
        changed.clear()
        try:
            async with asyncio.timeout(1.0):
                await changed.wait()
        except TimeoutError:
            pass
