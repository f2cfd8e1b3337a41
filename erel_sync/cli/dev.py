"""`erel-sync dev`: start a local cluster and watch it converge (the README's `make demo`).

Starts (unless `--amqp-url`/`EREL_AMQP_URL` is given) a private RabbitMQ node, builds the example
releases, copies `sample-repo/` into a work git repository pointing at them, starts the publisher
and five agents (three of them in group web, which rolls out host by host), and shows a
live table of the hosts from their heartbeats and rollout events. Ctrl-C stops
everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from erel_sync.cli.common import Exit, fail, table

if TYPE_CHECKING:  # the cluster machinery (git, rich, RabbitMQ node) loads only for `dev`
    from rich.console import Console
    from rich.table import Table

    from erel_sync.dev.cluster import DevCluster


def _console() -> Console:
    from rich.console import Console  # noqa: PLC0415

    return Console(stderr=True)


def hosts_table(beats: dict[str, dict[str, Any]], title: str) -> Table:
    from rich.text import Text  # noqa: PLC0415

    from erel_sync.dev.progress import COLUMNS, host_row  # noqa: PLC0415

    rows: list[list[str | Text]] = []
    for host_id in sorted(beats):
        row: list[str | Text] = list(host_row({"host_id": host_id, **beats[host_id]}))
        row[3] = Text(str(row[3]), style="green" if beats[host_id].get("converged") else "yellow")
        if row[-1] != "-":
            row[-1] = Text(str(row[-1]), style="red")
        rows.append(row)
    return table(COLUMNS, rows, title=title, boxed=True)


async def watch(cluster: DevCluster, stop: asyncio.Event, *, exit_when_converged: bool) -> bool:
    from rich.live import Live  # noqa: PLC0415

    from erel_sync.adapters.broker import messages as broker  # noqa: PLC0415
    from erel_sync.dev.progress import Progress  # noqa: PLC0415

    console = _console()
    hosts = [h.host_id for h in cluster.hosts]
    beats: dict[str, dict[str, Any]] = {}
    connection = await broker.connect(cluster.urls, name="erel-dev-watch", stop=stop)
    progress = Progress(started=time.monotonic())
    ever_converged = False
    try:
        channel = await connection.channel()

        async def on_status(key: str, body: bytes) -> None:
            with contextlib.suppress(ValueError):
                doc = json.loads(body)
                if key.startswith("host.") and isinstance(doc, dict):
                    beats[doc.get("host_id", key[5:])] = doc
                elif doc.get("kind") == "rollout-event":  # at once, not at the next heartbeat
                    beat = beats.setdefault(str(doc.get("host_id")), {})
                    beat["rollout"] = {k: doc.get(k) for k in ("seq", "state", "reason", "at")}
                elif doc.get("kind") == "published":  # a new rollout: converging again
                    progress.published(doc.get("seq"), time.monotonic())
                elif doc.get("kind") == "rejected":
                    console.print(f"[red]publisher rejected {doc['revision'][:12]}:[/red]")
                    for p in doc.get("problems", []):
                        console.print(f"  {p['file']}:{p['line']}:{p['col']}: {p['message']}")

        while True:
            try:
                await broker.consume_status(channel, on_status)
                break
            except Exception:  # the publisher declares the exchange; wait for it
                channel = await connection.channel()
                await asyncio.sleep(0.2)  # poll until the topology exists
        with Live(
            hosts_table(beats, "erel-sync dev"), console=console, refresh_per_second=4
        ) as live:
            while not stop.is_set():
                title = progress.update(beats, hosts, time.monotonic())
                done = progress.converged_at is not None
                ever_converged = ever_converged or done
                live.update(hosts_table(beats, f"erel-sync dev — {title}"))
                if done and exit_when_converged:
                    return True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await stop.wait()
    finally:
        await connection.close()
    return ever_converged


def dev(
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Where everything lives.")] = Path(
        ".work/dev"
    ),
    amqp_url: Annotated[
        str | None, typer.Option("--amqp-url", envvar="EREL_AMQP_URL", help="Use this broker.")
    ] = None,
    exit_when_converged: Annotated[
        bool, typer.Option("--exit-when-converged", help="Stop everything once converged.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600.0,
    brokers: Annotated[
        int,
        typer.Option(
            "--brokers",
            min=1,
            max=5,
            help="dev's own broker as a RabbitMQ cluster of this many nodes (joined with "
            "rabbitmqctl join_cluster); every client gets every node's URL.",
        ),
    ] = 1,
    publishers: Annotated[
        int,
        typer.Option(
            "--publishers",
            min=1,
            max=3,
            help="More than one: `publisher --ha` processes taking turns, one active and the "
            "others standing by (logs/publisher*.log).",
        ),
    ] = 1,
    log_format: Annotated[
        str,
        typer.Option("--log-format", help="Of the publisher's and agents' logs: text or json."),
    ] = "text",
    clustered: Annotated[
        bool | None,
        typer.Option(
            "--clustered/--private",
            help="hello as one Erlang cluster on the web hosts, each in a network namespace "
            "(needs root and dev's own broker; default: when it can).",
        ),
    ] = None,
) -> None:
    """Run a local cluster: private RabbitMQ, the publisher and five agents on sample-repo.

    Example: erel-sync dev        (then edit .work/dev/config and `git commit -am ...`)
    """
    from erel_sync.dev import netns  # noqa: PLC0415
    from erel_sync.dev.cluster import DevCluster  # noqa: PLC0415

    console = _console()
    why_not = "--amqp-url given: hosts in namespaces need dev's own broker" if amqp_url else None
    why_not = why_not or netns.available()
    if log_format not in ("text", "json"):
        fail(f"--log-format {log_format!r}: use text or json", Exit.INVALID)
    if clustered and why_not:
        fail(f"--clustered: {why_not}", Exit.INVALID)
    cluster = DevCluster(
        work_dir.resolve(),
        amqp_url=amqp_url,
        clustered=why_not is None,
        brokers=brokers,
        publishers=publishers,
        log_format=log_format,
    )
    if clustered is False:
        cluster.clustered = False
    console.print(f"[bold]erel-sync dev[/bold] in {cluster.work}")
    if cluster.clustered:
        console.print("hello runs as one Erlang cluster on web-1..3, each in a network namespace")
    elif clustered is None:
        console.print(f"hello runs private on each host (not clustered: {why_not})")
    try:
        console.print("building example releases (cached) and the work repository …")
        cluster.prepare()
        console.print("starting broker, publisher and agents …")
        cluster.start()
        # soft_wrap: no line breaks inserted into the commands, so they paste as printed.
        console.print(cluster.hints(), markup=False, highlight=False, soft_wrap=True)

        async def main() -> bool:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            loop.call_later(timeout, stop.set)
            return await watch(cluster, stop, exit_when_converged=exit_when_converged)

        converged = asyncio.run(main())
    except KeyboardInterrupt:
        converged = False
    except Exception as e:
        console.print("stopping …")
        cluster.stop()
        fail(f"dev cluster failed: {e}")
    console.print("stopping …")
    cluster.stop()
    console.print("stopped: broker, publisher, agents and their releases.")
    if exit_when_converged and not converged:
        raise typer.Exit(int(Exit.PARTIAL))
