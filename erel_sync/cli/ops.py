"""`erel-sync status|members|wait|start|stop|restart|delete`: see and steer the running cluster.

Adapter glue: `adapters.opsclient` talks to the broker (or, for commands without a target, the
local agent's Unix socket), `core.clusterview` decides what to show. Exit codes (DESIGN.md §6):
0 ok, 1 failed (a command refused, `wait` saw a failure), 2 invalid input, 3 some hosts did not
answer (listed) or `wait` timed out, 4 runtime error (broker unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from erel_sync.cli.common import Exit, fail
from erel_sync.core import clusterview as view
from erel_sync.core import control
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
DEFAULT_SOCKET = "/var/lib/erel-sync/agent.sock"
FAIL_GRACE = 30.0  # after a first failure, how long `wait` lets hosts still at work finish


def _urls(amqp_url: list[str] | None) -> list[str]:
    return amqp_url or ["amqp://guest:guest@127.0.0.1:5672/"]


def _seconds(text: str, what: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        fail(f"{what}: {e}", Exit.INVALID)


def _run(coro: Any, urls: list[str] | None = None) -> Any:
    from erel_sync.adapters.broker import BrokerError  # noqa: PLC0415 - aio-pika only when used

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


def _dump(doc: Any, output: Output) -> str:
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


async def gather_entries(
    client: Any,
    *,
    group: str | None,
    host: str | None,
    since: float,
    within: float,
) -> list[dict[str, Any]]:
    """Ask every host in scope for its status and join the answers with presence."""
    from erel_sync.adapters.broker import PublishFailed  # noqa: PLC0415

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
        return _dump(entries, output)
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
    lookback = _seconds(since, "--since")
    urls = _urls(amqp_url)
    code = _run(_status(group, host, output, watch, lookback, timeout, urls), urls)
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
    from erel_sync.adapters.opsclient import OpsClient  # noqa: PLC0415

    async with OpsClient(urls) as client:
        entries = await gather_entries(client, group=group, host=host, since=since, within=within)
        now = time.time()
        if not watch:
            print(_render_status(entries, output, now))
            return _unreachable_note(entries, now)
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
) -> None:
    """Live hosts: group (or unassigned), labels, agent version, last seen.

    Two agents claiming one host id are flagged Duplicate. Hosts seen within
    --since that do not answer are listed as Unreachable; exit code 3.

    Examples:
      erel-sync members
      erel-sync members -o wide
      erel-sync members -o json | jq -r '.[] | select(.state != "Live") | .host_id'
    """
    lookback = _seconds(since, "--since")
    urls = _urls(amqp_url)
    raise typer.Exit(_run(_members(output, lookback, timeout, urls), urls))


async def _members(output: Output, since: float, within: float, urls: list[str]) -> int:
    from erel_sync.adapters.opsclient import OpsClient  # noqa: PLC0415

    async with OpsClient(urls) as client:
        entries = await gather_entries(client, group=None, host=None, since=since, within=within)
    now = time.time()
    ms = view.member_entries(entries)
    if output in (Output.json, Output.yaml):
        print(_dump(ms, output))
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


def wait(
    revision: Annotated[str, typer.Option("--revision", "-r", help="Git sha (full or short).")],
    group: GroupOpt = None,
    timeout: Annotated[str, typer.Option("--timeout", help="Give up after this long.")] = "5m",
    since: SinceOpt = "10m",
    amqp_url: AmqpUrl = None,
) -> None:
    """Block until every matching host applied REVISION and its releases are healthy.

    Exit 0 converged; 1 a host failed (hosts and reasons listed); 3 timed
    out (the hosts still pending are listed). Shows progress on a terminal.

    Examples:
      erel-sync wait --revision $(git rev-parse HEAD) --timeout 5m
      git push && erel-sync wait -r $(git rev-parse --short HEAD) --group web
    """
    if len(revision) < 4 or any(c not in "0123456789abcdef" for c in revision.lower()):
        fail(f"--revision {revision!r} is not a git sha", Exit.INVALID)
    limit = _seconds(timeout, "--timeout")
    lookback = _seconds(since, "--since")
    urls = _urls(amqp_url)
    raise typer.Exit(_run(_wait(revision.lower(), group, limit, lookback, urls), urls))


def _verdict(tty: bool, headline: str, hosts: dict[str, str], code: Exit) -> int:
    """`wait`'s last words: the outcome, then a line per host that needs one."""
    if tty:
        sys.stderr.write("\n")  # end the progress line
    print(headline)
    for h, why in sorted(hosts.items()):
        print(f"  {h}: {why}")
    return int(code)


async def _wait(
    revision: str, group: str | None, limit: float, since: float, urls: list[str]
) -> int:
    from erel_sync.adapters.opsclient import OpsClient  # noqa: PLC0415

    tty = sys.stderr.isatty()
    deadline = time.monotonic() + limit
    last_line = ""
    failed_at: float | None = None
    async with OpsClient(urls) as client:
        woken = asyncio.Event()
        await client.follow_heartbeats(lambda _doc: woken.set())
        while True:
            left = deadline - time.monotonic()
            entries = await gather_entries(
                client, group=group, host=None, since=since, within=max(0.2, min(2.0, left))
            )
            v = view.wait_verdict(entries, revision, group=group)
            total = len(v.converged) + len(v.failed) + len(v.pending)
            line = f"{len(v.converged)}/{total} hosts at {revision[:12]}" + (
                "; waiting for " + ", ".join(f"{h} ({why})" for h, why in sorted(v.pending.items()))
                if v.pending
                else ""
            )
            if line != last_line:
                sys.stderr.write(("\r\x1b[2K" if tty else "") + line + ("" if tty else "\n"))
                sys.stderr.flush()
                last_line = line
            if v.state == "Converged":
                head = f"converged: {len(v.converged)} host(s) applied {revision[:12]}"
                return _verdict(tty, head, {}, Exit.OK)
            if v.state == "Failed":
                # Hosts still on their way (reachable, not done) get a grace period, so that
                # every failure is listed, not just the first one seen.
                failed_at = failed_at or time.monotonic()
                if not v.working or time.monotonic() >= min(deadline, failed_at + FAIL_GRACE):
                    head = f"failed: {revision[:12]} did not apply on {len(v.failed)} host(s)"
                    return _verdict(tty, head, v.failed, Exit.CHANGES)
            if time.monotonic() >= deadline:
                head = f"timed out: {len(v.pending) or 'no'} host(s) did not converge"
                return _verdict(tty, head, v.pending, Exit.PARTIAL)
            woken.clear()
            try:
                async with asyncio.timeout(min(1.0, max(0.0, deadline - time.monotonic()))):
                    await woken.wait()  # a heartbeat: something changed somewhere
            except TimeoutError:
                pass


# --- commands


ReleaseArg = Annotated[str, typer.Argument(help="Release name.")]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", envvar="EREL_OPERATOR_KEY", help="Operator Ed25519 key (PEM)."),
]
KeyIdOpt = Annotated[
    str | None,
    typer.Option(
        "--key-id", envvar="EREL_OPERATOR_KEY_ID", help="Its id in the agents' operator_keys."
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every host.")]
SocketOpt = Annotated[
    Path | None,
    typer.Option(
        "--socket", envvar="EREL_CONTROL_SOCKET", help=f"Local agent socket ({DEFAULT_SOCKET})."
    ),
]
TtlOpt = Annotated[
    str, typer.Option("--ttl", help="The command is void after this long (never runs late).")
]


def _command(
    command: str,
    release: str,
    host: str | None,
    group: str | None,
    all_hosts: bool,
    sock: Path | None,
    key: Path | None,
    key_id: str | None,
    ttl: str,
    timeout: float,
    output: Output,
    amqp_url: list[str] | None,
) -> None:
    if sum(bool(x) for x in (host, group, all_hosts)) > 1:
        fail("give at most one of --host, --group, --all", Exit.INVALID)
    if not (host or group or all_hosts):
        raise typer.Exit(_local(command, release, sock or Path(DEFAULT_SOCKET), output))
    if key is None:
        fail("remote commands are signed: give --key (or EREL_OPERATOR_KEY)", Exit.INVALID)
    from erel_sync.core.snapshot import load_private_key  # noqa: PLC0415

    try:
        private = load_private_key(key.read_bytes())
    except (OSError, ValueError) as e:
        fail(f"{key}: {e}", Exit.INVALID)
    target = control.target_for(host, group)
    life = _seconds(ttl, "--ttl")
    try:
        cmd = control.new_command(
            command,
            release,
            target,
            now=time.time(),
            ttl=life,
            key=private,
            key_id=key_id or key.stem,
        )
    except ValueError as e:
        fail(str(e), Exit.INVALID)
    urls = _urls(amqp_url)
    code = _run(_remote(cmd, life, host, group, timeout, output, urls), urls)
    raise typer.Exit(code)


async def _remote(
    cmd: control.Command,
    ttl: float,
    host: str | None,
    group: str | None,
    within: float,
    output: Output,
    urls: list[str],
) -> int:
    from erel_sync.adapters.broker import PublishFailed  # noqa: PLC0415
    from erel_sync.adapters.opsclient import OpsClient  # noqa: PLC0415

    async with OpsClient(urls) as client:
        presence = asyncio.create_task(client.read_presence(time.time() - 600))
        try:
            await client.send(cmd, ttl)
        except PublishFailed:
            presence.cancel()
            fail(f"no live agent for host {host}", Exit.PARTIAL)
        known = view.known_hosts(await presence)
        expected = (
            {host}
            if host
            else {h for h, k in known.items() if group is None or k.last.get("group") == group}
        )
        replies = await client.collect(cmd.id, expected=expected, within=within)
    results: list[dict[str, Any]] = []
    for h in sorted(set(expected) | set(replies)):
        for r in replies.get(h) or [{"host_id": h, "ok": None, "reason": "NoAnswer"}]:
            row = ((r.get("result") or {}).get("release")) or {}
            results.append(
                {
                    "host_id": h,
                    "ok": r.get("ok"),
                    "reason": r.get("reason") or "",
                    "message": r.get("message") or "",
                    "state": row.get("state"),
                    "version": row.get("version"),
                    "hold": row.get("hold"),
                }
            )
    if output in (Output.json, Output.yaml):
        print(_dump(results, output))
    else:
        rows = [
            [
                r["host_id"],
                "ok" if r["ok"] else ("no answer" if r["ok"] is None else f"refused {r['reason']}"),
                r["state"] or "-",
                r["version"] or "-",
                (r["hold"] or {}).get("kind", "-"),
                r["message"],
            ]
            for r in results
        ]
        print(f"{cmd.command} {cmd.release} -> {cmd.target}")
        print(format_table(["HOST", "RESULT", "STATE", "RUNNING", "HOLD", "MESSAGE"], rows))
    if any(r["ok"] is False for r in results):
        return int(Exit.CHANGES)
    if any(r["ok"] is None for r in results):
        silent = ", ".join(r["host_id"] for r in results if r["ok"] is None)
        sys.stderr.write(f"erel-sync: no answer from: {silent}\n")
        return int(Exit.PARTIAL)
    if not results:
        sys.stderr.write("erel-sync: no host answered (none known in scope)\n")
        return int(Exit.PARTIAL)
    return int(Exit.OK)


def _local(command: str, release: str, path: Path, output: Output) -> int:
    """Through the local agent's Unix socket: no broker, no signature (the socket's mode is
    the authentication)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(str(path))
            s.sendall(json.dumps({"command": command, "release": release}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        fail(f"local agent at {path}: {e.strerror or e} (is the agent running? --socket?)")
    doc = control.parse_reply(data) or {}
    if output in (Output.json, Output.yaml):
        print(_dump(doc, output))
    elif doc.get("ok"):
        row = (doc.get("result") or {}).get("release") or {}
        hold = (row.get("hold") or {}).get("kind")
        print(
            f"{doc.get('host_id')}: {command} {release}: ok"
            + (f", {row.get('state')}" if row.get("state") else "")
            + (f" (hold: {hold})" if hold else "")
        )
    if not doc.get("ok"):
        fail(f"{command} {release}: {doc.get('reason')}: {doc.get('message')}", Exit.CHANGES)
    return int(Exit.OK)


def _make(command: str, summary: str, examples: str) -> Any:
    def cmd(
        release: ReleaseArg,
        host: Annotated[str | None, typer.Option("--host", "-H", help="This host.")] = None,
        group: Annotated[
            str | None, typer.Option("--group", "-g", help="Every host of this group.")
        ] = None,
        all_hosts: AllOpt = False,
        sock: SocketOpt = None,
        key: KeyOpt = None,
        key_id: KeyIdOpt = None,
        ttl: TtlOpt = "60s",
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 60.0,
        output: OutputOpt = Output.table,
        amqp_url: AmqpUrl = None,
    ) -> None:
        _command(
            command, release, host, group, all_hosts, sock, key, key_id, ttl, timeout, output,
            amqp_url,
        )  # fmt: skip

    cmd.__name__ = command
    cmd.__doc__ = (
        f"{summary}\n\n"
        "With --host, --group or --all the command goes through the broker,\n"
        "signed with your operator key; without, to the agent on this machine\n"
        "through its Unix socket. Exit 0 ok, 1 refused or failed somewhere,\n"
        "3 some hosts did not answer.\n\n"
        f"Examples:\n{examples}"
    )
    return cmd


start = _make(
    "start",
    "Clear the hold on RELEASE and let the reconciler start it (if git wants it).",
    "  erel-sync start hello --group web --key ops.key\n  erel-sync start hello",
)
stop = _make(
    "stop",
    "Stop RELEASE and hold it: the reconciler leaves it stopped until `start`.",
    "  erel-sync stop hello --host web-1 --key ops.key\n  erel-sync stop hello",
)
restart = _make(
    "restart",
    "Restart a running RELEASE; desired state and holds stay as they are.",
    "  erel-sync restart hello --group web --key ops.key",
)
delete = _make(
    "delete",
    "Delete RELEASE and hold it deleted until its desired state changes in git (or `start`).",
    "  erel-sync delete ledger --host db-3 --key ops.key",
)
