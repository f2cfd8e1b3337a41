"""`erel-sync rollout promote|retry GROUP`: steer a group's rollout through the publisher.

A Typer sub-app (`app`) that the root application mounts as `rollout`. The command is signed
with the operator's key (`cli.steer.signed_command`, like `stop --host`) and published on
`erel.control` with routing key `rollout.<group>`, where the publisher's rollout controller
(`publisher.rollout`) takes it, checks it against its `--operator-key`s and answers on
`erel.sync` (`adapters.broker.opsclient`). Exit codes (docs/operating.md): 0 ok, 1 refused,
2 invalid input, 3 no publisher answered, 4 broker error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from erel_sync.cli.common import (
    AmqpUrl,
    Exit,
    Output,
    OutputOpt,
    VhostOpt,
    dump,
    fail,
    run,
    urls_of,
)
from erel_sync.cli.steer import KeyIdOpt, KeyOpt, TtlOpt, signed_command
from erel_sync.core.control import Command
from erel_sync.model.names import NAME_RE

app = typer.Typer(
    name="rollout",
    help="Steer a group's rollout (the publisher's rollout controller decides who may go).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

GroupArg = Annotated[str, typer.Argument(help="Group name.")]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the publisher's answer.")
]


@app.callback()
def rollout() -> None:
    """Steer a group's rollout: promote it past its canaries, or retry it after a failure."""


def _steer(
    command: str,
    group: str,
    key: Path | None,
    key_id: str | None,
    ttl: str,
    timeout: float,
    output: Output,
    amqp_url: list[str] | None,
    vhost: str | None,
) -> None:
    from erel_sync.adapters.broker import topology as topo  # noqa: PLC0415

    if not NAME_RE.fullmatch(group):
        fail(f"bad group name {group!r}", Exit.INVALID)
    cmd, life = signed_command(command, None, topo.rollout_key(group), key, key_id, ttl)
    urls = urls_of(amqp_url, vhost)
    raise typer.Exit(run(_ask(cmd, life, group, timeout, output, urls), urls))


async def _ask(
    cmd: Command, ttl: float, group: str, within: float, output: Output, urls: list[str]
) -> int:
    from erel_sync.adapters.broker import topology as topo  # noqa: PLC0415
    from erel_sync.adapters.broker.messages import PublishFailed  # noqa: PLC0415
    from erel_sync.adapters.broker.opsclient import OpsClient  # noqa: PLC0415

    publisher = topo.PUBLISHER_REPLY_ID
    async with OpsClient(urls) as client:
        try:
            await client.send(cmd, ttl)
        except PublishFailed:
            sys.stderr.write("erel-sync: no publisher takes rollout commands (is it running?)\n")
            return int(Exit.PARTIAL)
        replies = await client.collect(cmd.id, expected={publisher}, within=within)
    answer = next(iter(replies.get(publisher) or []), None)
    if answer is None:
        sys.stderr.write(f"erel-sync: no answer from the publisher within {within:g}s\n")
        return int(Exit.PARTIAL)
    if output in (Output.json, Output.yaml):
        print(dump(answer, output))
    elif answer.get("ok"):
        print(f"{cmd.command} {group}: ok{_describe(answer)}")
    if not answer.get("ok"):
        reason, message = answer.get("reason") or "Refused", answer.get("message") or ""
        sys.stderr.write(f"erel-sync: {cmd.command} {group}: {reason}: {message}\n")
        return int(Exit.CHANGES)
    return int(Exit.OK)


def _describe(answer: dict[str, Any]) -> str:
    """`, Progressing: 2 done, 1 in progress, 1 waiting, 0 failed` from the reply's rollout."""
    doc = (answer.get("result") or {}).get("rollout")
    if not isinstance(doc, dict):
        message = answer.get("message") or ""
        return f" ({message})" if message else ""
    granted = doc.get("granted") or {}
    done, failed = doc.get("done") or [], doc.get("failed") or {}
    busy = [h for h in granted if h not in done and h not in failed]
    return (
        f", {doc.get('phase')}: {len(done)} done, {len(busy)} in progress, "
        f"{len(doc.get('waiting') or [])} waiting, {len(failed)} failed"
    )


def _make(command: str, summary: str) -> None:
    """Register `erel-sync rollout COMMAND GROUP` (the two share everything but their word)."""

    def cmd(
        group: GroupArg,
        key: KeyOpt = None,
        key_id: KeyIdOpt = None,
        ttl: TtlOpt = "60s",
        timeout: TimeoutOpt = 15.0,
        output: OutputOpt = Output.table,
        amqp_url: AmqpUrl = None,
        vhost: VhostOpt = None,
    ) -> None:
        _steer(command, group, key, key_id, ttl, timeout, output, amqp_url, vhost)

    cmd.__name__ = command
    cmd.__doc__ = (
        f"{summary}\n\n"
        "Signed with your operator key; the publisher must trust it (`--operator-key`).\n"
        "Exit 0 ok, 1 refused, 3 no answer from the publisher, 4 broker error.\n\n"
        f"Example:\n  erel-sync rollout {command} web --key ops.key"
    )
    app.command(command)(cmd)


_make("promote", "Let GROUP's rollout go on past its canaries (`pause_after_canary: true`).")
_make("retry", "Resume GROUP's halted rollout: its failed hosts are forgotten and may try again.")


@app.command("status")
def show(
    group: Annotated[str | None, typer.Argument(help="Only this group.")] = None,
    output: OutputOpt = Output.table,
    amqp_url: AmqpUrl = None,
    vhost: VhostOpt = None,
) -> None:
    """Each group's rollout, from the publisher's newest rollout document.

    Revision, phase (Canary, Paused, Progressing, Halted, Complete), hosts done,
    in progress and waiting, and the failed ones with their reason.

    JSON/YAML: the group's rollout object with GROUP, else {group: rollout}.
    Exit 0; 1 when a rollout shown is Halted; 3 when there is no rollout document yet.

    Example:
      erel-sync rollout status web -o json | jq .phase
    """
    urls = urls_of(amqp_url, vhost)
    raise typer.Exit(run(_show(group, output, urls), urls))


async def _show(group: str | None, output: Output, urls: list[str]) -> int:
    from erel_sync.adapters.broker.opsclient import OpsClient  # noqa: PLC0415
    from erel_sync.cli.common import render_table  # noqa: PLC0415
    from erel_sync.core import rolloutview  # noqa: PLC0415

    docs: list[dict[str, Any]] = []
    async with OpsClient(urls) as client:
        await client.follow_rollouts(docs.append, max_wait=1.0)
    shown = rolloutview.groups(rolloutview.newest(docs), group)
    if not shown:
        sys.stderr.write(f"erel-sync: no rollout{f' of group {group}' if group else ''} yet\n")
        return int(Exit.PARTIAL)
    if output in (Output.json, Output.yaml):
        print(dump(shown[group] if group else shown, output))
    else:
        print(render_table(rolloutview.ROLLOUT_HEADERS, rolloutview.rows({"groups": shown})))
    halted = any(g.get("phase") == "Halted" for g in shown.values())
    return int(Exit.CHANGES if halted else Exit.OK)
