"""`erel-sync status|members`: see the running cluster; the options and helpers that `wait`
(`cli.waiting`) and the release commands (`cli.steer`) share.

Adapter glue: `adapters.broker.opsclient` talks to the broker, `core.clusterview` decides what to
show and `core.conditions` what is wrong. `status` exit codes (docs/operating.md): 0 every host
converged and healthy; 1 something Failed or Degraded, or (with every host answering) not
converged yet; 3 some hosts did not answer (listed); 2 invalid input; 4 runtime error (broker
unreachable, no erel-sync topology in the vhost).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from enum import StrEnum
from typing import Annotated, Any

import typer

from erel_sync.cli.common import Exit, VhostOpt, broker_urls, fail
from erel_sync.core import clusterview as view
from erel_sync.core import conditions, control
from erel_sync.model.names import parse_duration


class Output(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


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


def urls_of(amqp_url: list[str] | None, vhost: str | None) -> list[str]:
    return broker_urls(amqp_url or ["amqp://guest:guest@127.0.0.1:5672/"], vhost)


def seconds(text: str, what: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        fail(f"{what}: {e}", Exit.INVALID)


def run(coro: Any, urls: list[str] | None = None) -> Any:
    from erel_sync.adapters.broker.messages import BrokerError  # noqa: PLC0415 - aio-pika only when used

    # aiormq logs every failed connection attempt; the CLI reports the outcome in one line.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        return asyncio.run(coro)
    except BrokerError as e:
        where = ", ".join(_masked(u) for u in urls or [])
        fail(f"broker {where}: {e}" if where else f"broker: {e}")
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _masked(url: str) -> str:
    from yarl import URL  # noqa: PLC0415

    u = URL(url)
    return str(u.with_password("***")) if u.password else url


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns (like kubectl): stable in pipes and logs, no wrapping."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    for row in rows:
        cells = zip(row, widths, strict=False)
        lines.append("  ".join(str(c).ljust(w) for c, w in cells).rstrip())
    return "\n".join(lines)


def dump(doc: Any, output: Output) -> str:
    if output is Output.yaml:
        import yaml  # noqa: PLC0415

        return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)).rstrip()
    return json.dumps(doc, indent=2)


def _unreachable_note(entries: list[dict[str, Any]], now: float) -> int:
    gone = [e for e in entries if not e["reachable"]]
    if not gone:
        return int(Exit.OK)
    names = ", ".join(f"{e['host_id']} (seen {view.age(e['last_seen'], now)} ago)" for e in gone)
    sys.stderr.write(f"erel-sync: {len(gone)} host(s) did not answer: {names}\n")
    return int(Exit.PARTIAL)


def status_code(entries: list[dict[str, Any]], now: float) -> int:
    """`status`'s exit code, with a line on stderr per kind of trouble (hosts named)."""
    verdict = conditions.status_verdict(
        (
            e["host_id"],
            conditions.host_condition(e, store_error=e["error"] if e["reachable"] else None),
        )
        for e in entries
    )
    for what, hosts in (
        ("failed or degraded", verdict.failed),
        ("not converged yet", verdict.progressing),
    ):
        if hosts:
            listed = "; ".join(f"{h} ({conditions.clip(why, 120)})" for h, why in hosts.items())
            sys.stderr.write(f"erel-sync: {len(hosts)} host(s) {what}: {listed}\n")
    unreachable = _unreachable_note(entries, now)
    return {
        "Failed": int(Exit.CHANGES),
        "Partial": unreachable,
        "Progressing": int(Exit.CHANGES),
        "Ok": int(Exit.OK),
    }[verdict.state]


async def gather_entries(
    client: Any,
    *,
    group: str | None,
    host: str | None,
    since: float,
    within: float,
) -> list[dict[str, Any]]:
    """Ask every host in scope for its status and join the answers with presence."""
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
    return view.host_entries(known, replies, now=time.time(), group=group, host=host)


def _render_status(entries: list[dict[str, Any]], output: Output, now: float) -> str:
    if output in (Output.json, Output.yaml):
        return dump(entries, output)
    wide = output is Output.wide
    headers = view.STATUS_WIDE_HEADERS if wide else view.STATUS_HEADERS
    if not entries:
        return "no hosts (no agent answered and none was seen within --since)"
    return format_table(headers, view.status_rows(entries, now=now, wide=wide))


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
    from erel_sync.adapters.broker.opsclient import OpsClient  # noqa: PLC0415

    async with OpsClient(urls) as client:
        entries = await gather_entries(client, group=group, host=host, since=since, within=within)
        now = time.time()
        if not watch:
            print(_render_status(entries, output, now))
            if host is not None and not entries:
                sys.stderr.write(
                    f"erel-sync: host {host} did not answer (not seen within --since)\n"
                )
                return int(Exit.PARTIAL)
            return status_code(entries, now)
        await _watch(client, entries, group, host, output)
    return int(Exit.OK)


WATCH_INTERVAL = 5.0  # heartbeat interval assumed when a report does not carry its own


async def _watch(
    client: Any, entries: list[dict[str, Any]], group: str | None, host: str | None, output: Output
) -> None:
    """Follow heartbeats; a host not heard for 3 heartbeat intervals turns Unreachable. Two
    instances heartbeating for one host id at the same time are flagged as duplicates; an
    instance that fell silent before another one first spoke was restarted, not duplicated."""
    beats: dict[str, dict[str, dict[str, Any]]] = {}  # host -> instance -> newest heartbeat
    first: dict[tuple[str, str], float] = {}  # (host, instance) -> first heard
    known = {e["host_id"]: e for e in entries}
    changed = asyncio.Event()

    def on_beat(doc: dict[str, Any]) -> None:
        host, instance = str(doc.get("host_id")), str(doc.get("instance"))
        beats.setdefault(host, {})[instance] = doc
        first.setdefault((host, instance), float(doc["received"]))
        changed.set()

    def live(host: str, now: float) -> list[dict[str, Any]]:
        def interval(d: dict[str, Any]) -> float:
            return float(d.get("heartbeat_interval") or WATCH_INTERVAL)

        def silent(d: dict[str, Any]) -> float:
            return now - float(d["received"])

        docs = [d for d in beats.get(host, {}).values() if silent(d) <= 3 * interval(d) + 1]
        # Stopped before another instance first spoke, and missed a beat since: a restart.
        return [
            d
            for d in docs
            if not (
                silent(d) > 2 * interval(d) + 0.5
                and any(first[(host, str(o.get("instance")))] > float(d["received"]) for o in docs)
            )
        ]

    await client.follow_heartbeats(on_beat)
    tty = sys.stdout.isatty()
    last = ""
    while True:
        now = time.time()
        replies: dict[str, list[dict[str, Any]]] = {}
        for h in beats:
            if docs := live(h, now):
                replies[h] = [_as_reply(h, d, float(d["received"])) for d in docs]
        for e in entries:
            # An instance that answered the first query and has not sent a heartbeat yet: its
            # answer stands for as long as a heartbeat would.
            seen = view.parse_time(e["last_seen"]) or now
            if not e["reachable"] or now - seen > 3 * WATCH_INTERVAL + 1:
                continue
            h = e["host_id"]
            for i in e.get("instances") or [e.get("instance")]:
                if str(i) not in beats.get(h, {}):
                    replies.setdefault(h, []).append(_as_reply(h, {**e, "instance": i}, seen))
        known_now = {
            h: view.Known(h, {**e, "sent": e["last_seen"]}, view.parse_time(e["last_seen"]) or 0)
            for h, e in known.items()
        }
        current = view.host_entries(known_now, replies, now=now, group=group, host=host)
        for e in current:
            known[e["host_id"]] = e
        text = _render_status(current, output, now)
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


def _as_reply(host: str, report: dict[str, Any], received: float) -> dict[str, Any]:
    """A heartbeat (or an earlier status entry) in the shape of a status reply."""
    return {
        "ok": True,
        "host_id": host,
        "instance": report.get("instance"),
        "received": received,
        "result": report,
    }


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
        print(format_table(headers, view.member_rows(ms, now=now, wide=wide)))
    dups = [m["host_id"] for m in ms if m["duplicate"]]
    if dups:
        sys.stderr.write(f"erel-sync: more than one agent claims host id(s): {', '.join(dups)}\n")
    return _unreachable_note(entries, now)
