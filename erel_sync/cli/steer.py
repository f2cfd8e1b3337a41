"""`erel-sync start|stop|restart|delete RELEASE`: steer a release on one host, a group or all.

With `--host`, `--group` or `--all` the command is signed with the operator's key and goes
through the broker (`adapters.broker.opsclient`, `erel.control`); without, it goes to the agent on
this machine through its Unix socket. Exit codes (docs/operating.md): 0 ok, 1 refused or failed
somewhere, 2 invalid input, 3 some hosts did not answer (listed), 4 runtime error.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from erel_sync.cli import localagent
from erel_sync.cli.common import (
    AmqpUrl,
    Exit,
    Output,
    OutputOpt,
    VhostOpt,
    dump,
    fail,
    render_table,
    run,
    seconds,
    urls_of,
)
from erel_sync.core import clusterview as view
from erel_sync.core import control
from erel_sync.model.paths import DEFAULT_CONTROL_SOCKET

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
        "--socket",
        envvar="EREL_CONTROL_SOCKET",
        help=f"Local agent socket ({DEFAULT_CONTROL_SOCKET}).",
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
    vhost: str | None,
) -> None:
    if sum(bool(x) for x in (host, group, all_hosts)) > 1:
        fail("give at most one of --host, --group, --all", Exit.INVALID)
    if not (host or group or all_hosts):
        raise typer.Exit(_local(command, release, sock or Path(DEFAULT_CONTROL_SOCKET), output))
    cmd, life = signed_command(command, release, control.target_for(host, group), key, key_id, ttl)
    urls = urls_of(amqp_url, vhost)
    code = run(_remote(cmd, life, host, group, timeout, output, urls), urls)
    raise typer.Exit(code)


def signed_command(
    command: str,
    release: str | None,
    target: str,
    key: Path | None,
    key_id: str | None,
    ttl: str,
) -> tuple[control.Command, float]:
    """A remote command signed with the operator's key (`--key`, `--key-id`: the key file's
    stem by default), and its life in seconds; a missing or bad key or TTL exits 2. Also used
    by `cli.rollout`."""
    if key is None:
        fail("remote commands are signed: give --key (or EREL_OPERATOR_KEY)", Exit.INVALID)
    from erel_sync.core.snapshot import load_private_key  # noqa: PLC0415

    try:
        private = load_private_key(key.read_bytes())
    except (OSError, ValueError) as e:
        fail(f"{key}: {e}", Exit.INVALID)
    life = seconds(ttl, "--ttl")
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
    return cmd, life


async def _remote(
    cmd: control.Command,
    ttl: float,
    host: str | None,
    group: str | None,
    within: float,
    output: Output,
    urls: list[str],
) -> int:
    from erel_sync.adapters.broker.messages import PublishFailed  # noqa: PLC0415
    from erel_sync.adapters.broker.opsclient import OpsClient  # noqa: PLC0415

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
        print(dump(results, output))
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
        print(render_table(["HOST", "RESULT", "STATE", "RUNNING", "HOLD", "MESSAGE"], rows))
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
        doc = localagent.ask(path, {"command": command, "release": release})
    except OSError as e:
        fail(f"local agent at {path}: {e.strerror or e} (is the agent running? --socket?)")
    if output in (Output.json, Output.yaml):
        print(dump(doc, output))
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
        vhost: VhostOpt = None,
    ) -> None:
        _command(
            command, release, host, group, all_hosts, sock, key, key_id, ttl, timeout, output,
            amqp_url, vhost,
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
