"""`erel-sync publisher`, `erel-sync agent` and `erel-sync keygen`.

Settings are read once here (file, then environment, then flags) and passed down; the daemons
never re-read them. SIGTERM/SIGINT set a stop event: the daemons finish their current step and
exit 0. A daemon whose long-lived task keeps ending (`adapters.supervisor.TaskFailed`) shuts
down the same way and exits 4 (runtime error), so that systemd restarts it.

`--once` runs one round and exits with what it found (arq's burst mode; docs/operating.md,
"One-shot runs"): the agent joins the broker once if it answers, reconciles once and exits with
its host's state; the publisher takes the current head and publishes it once.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from yarl import URL

from erel_sync.adapters import age, eventloop, logs, store
from erel_sync.adapters.supervisor import TaskFailed
from erel_sync.cli import common
from erel_sync.cli.common import Exit, LogFormatOpt, MetricsOpt, VhostOpt, broker_urls, fail
from erel_sync.core import conditions
from erel_sync.core.snapshot import generate_key
from erel_sync.model import brokerurl
from erel_sync.model.names import listen_address
from erel_sync.model.paths import DEFAULT_PUBLISHER_STATE_DIR
from erel_sync.model.problems import ConfigError
from erel_sync.model.settings import (
    AgentSettings,
    TrustedKey,
    load_agent_settings,
)

if TYPE_CHECKING:
    from erel_sync.publisher.daemon import Publisher

DEFAULT_AMQP = brokerurl.DEFAULT_URL


def setup_logging(level: str, fmt: str) -> None:
    try:
        logs.setup(level, fmt)
    except ValueError as e:
        fail(f"--log-format: {e}", Exit.INVALID)


async def run_until_signalled(main: object) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)  # type: ignore[operator]


def run_daemon(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a daemon until SIGTERM/SIGINT (then it returns: exit 0). A long-lived task that kept
    ending makes the daemon shut down and raise TaskFailed: exit 4, for systemd to restart it."""
    try:
        eventloop.run(run_until_signalled(main))
    except TaskFailed as e:
        fail(str(e), Exit.RUNTIME)


def keygen(
    out: Annotated[Path, typer.Option("--out", help="Directory for the key pair.")] = Path("."),
    key_id: Annotated[
        str, typer.Option("--key-id", help="Key id agents will trust.")
    ] = "publisher",
    host: Annotated[
        bool,
        typer.Option("--host", help="The host's age identity for secrets, in --state-dir."),
    ] = False,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="The agent's state directory (--host).")
    ] = None,
) -> None:
    """Make an Ed25519 signing key pair: the publisher's, or an operator's.

    Writes OUT/<key-id>.key (private, 0600) and OUT/<key-id>.pub, and prints the entry for
    the agents' settings: `trusted_keys` for a publisher key, `operator_keys` for an
    operator key (remote start/stop/restart/delete, docs/operating.md).

    Examples:
      erel-sync keygen --out /etc/erel-sync --key-id publisher-2026
      erel-sync keygen --out ~/.erel-sync --key-id ops-alice
      erel-sync keygen --host --state-dir /var/lib/erel-sync   (prints the host's recipient)

    With --host: the agent's age identity (STATE_DIR/host.age, 0600; the agent also makes it
    at first start). Prints its recipient, for the `--to` of `erel-sync secret encrypt`.
    """
    if host:
        if state_dir is None:
            fail("--host needs --state-dir (the agent's state directory)", Exit.INVALID)
        try:
            typer.echo(age.recipient_of(age.identity(state_dir)))
        except (age.AgeError, OSError, store.StoreError) as e:
            fail(str(e), Exit.INVALID)
        return
    pem, pub = generate_key()
    key_file = out / f"{key_id}.key"
    if key_file.exists():
        fail(f"{key_file} exists; refusing to overwrite a signing key", Exit.INVALID)
    store.write_atomic(key_file, pem, mode=0o600)
    store.write_atomic(out / f"{key_id}.pub", (pub + "\n").encode(), mode=0o644)
    typer.echo(f"wrote {key_file} and {out / (key_id + '.pub')}")
    typer.echo(
        f"agents' settings (trusted_keys for a publisher key, operator_keys for an operator's):"
        f"\n  trusted_keys:\n    - {{id: {key_id}, public_key: {pub}}}"
    )


def publisher(
    repo: Annotated[Path, typer.Option("--repo", help="Bare or working git repository.")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM) from keygen.")],
    key_id: Annotated[str, typer.Option("--key-id", help="Key id the agents trust.")] = "publisher",
    branch: Annotated[str, typer.Option("--branch", help="Tracked branch.")] = "main",
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Seq and current snapshot.")
    ] = Path(DEFAULT_PUBLISHER_STATE_DIR),
    amqp_url: Annotated[
        list[str] | None,
        typer.Option("--amqp-url", envvar="EREL_AMQP_URL", help="Broker URL(s)."),
    ] = None,
    vhost: VhostOpt = None,
    republish: Annotated[float, typer.Option(help="Republish interval, seconds.")] = 60.0,
    poll: Annotated[float, typer.Option(help="Fallback poll of the branch, seconds.")] = 5.0,
    operator_key: Annotated[
        list[str] | None,
        typer.Option("--operator-key", help="ID=BASE64 operator key for `rollout promote|retry`."),
    ] = None,
    rollout_warmup: Annotated[
        float,
        typer.Option(
            help="Seconds the rollout controller listens after connecting before it decides "
            "(at least the agents' heartbeat interval)."
        ),
    ] = 8.0,
    once: Annotated[
        bool, typer.Option("--once", help="Take the current head, publish it once, exit.")
    ] = False,
    ha: Annotated[
        bool,
        typer.Option(
            "--ha",
            help="Take turns with the other --ha publishers of this broker: active while "
            "holding the broker's lock, standby (signing nothing) otherwise.",
        ),
    ] = False,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat",
            help="AMQP heartbeat, seconds: a publisher the broker stops hearing loses its "
            "connection (and with --ha its turn) after about two of them.",
        ),
    ] = 10.0,
    metrics_listen: MetricsOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Watch a config repository and publish each valid commit as a signed snapshot.

    With --once: take the current head (validate, sign, store), publish it if the broker
    answers within a few seconds, and exit: 0 published or unchanged, 1 head rejected (the
    problems are logged; the rejection is announced if the broker is reachable), 4 broker
    unreachable or another runtime error.

    The publisher also runs the rollout controller: it grants each group's hosts their
    turn (rollout policy of the group) and takes `erel-sync rollout promote|retry`, signed by
    an --operator-key.

    Example: erel-sync publisher --repo /srv/config.git --key /etc/erel-sync/publisher.key
      --amqp-url amqps://erel-publisher@broker.example:5671 --vhost erel
      --operator-key ops-alice=BASE64PUB
    """
    from erel_sync.publisher.daemon import Publisher, PublisherSettings  # noqa: PLC0415

    setup_logging(log_level, log_format)
    urls = tuple(broker_urls(amqp_url or [DEFAULT_AMQP], vhost))
    if not key.is_file():
        fail(f"{key}: no such key file (make one with `erel-sync keygen`)", Exit.INVALID)
    operators = operator_keys(operator_key or [])
    if once and ha:
        fail("--once cannot take turns with other publishers: run it without --ha", Exit.INVALID)
    try:
        listen_address(metrics_listen or ":1")
    except ValueError as e:
        fail(f"--metrics-listen: {e}", Exit.INVALID)
    settings = PublisherSettings(
        repo=repo,
        key_file=key,
        key_id=key_id,
        state_dir=state_dir,
        amqp_urls=urls,
        branch=branch,
        republish_interval=republish,
        poll_interval=poll,
        broker_user=URL(urls[0]).user,
        operator_keys=operators,
        rollout_warmup=rollout_warmup,
        ha=ha,
        broker_heartbeat=heartbeat,
        metrics_listen=metrics_listen or "",
    )
    try:
        pub = Publisher(settings)
    except (OSError, ValueError, store.StoreError) as e:
        fail(str(e), Exit.INVALID)
    if once:
        raise typer.Exit(publish_once(pub))
    run_daemon(pub.run)


def operator_keys(values: list[str]) -> tuple[TrustedKey, ...]:
    """`--operator-key ID=BASE64` values; a malformed one exits 2 naming it."""
    out = []
    for value in values:
        key_id, sep, public = value.partition("=")
        try:
            raw = base64.b64decode(public, validate=True)
        except ValueError:
            raw = b""
        if not (sep and key_id and len(raw) == 32):
            fail(f"--operator-key {value[:60]!r}: expected ID=BASE64PUB (Ed25519)", Exit.INVALID)
        out.append(TrustedKey(key_id, public))
    return tuple(out)


REJECTED = ("Rewind", "Unreadable", "Invalid", "NoBranch")  # `process_head` outcomes: exit 1


def publish_once(pub: Publisher) -> int:
    """`publisher --once`: its exit code, with one line on stderr when it is not 0."""
    from erel_sync.adapters.broker.errors import BrokerError  # noqa: PLC0415

    try:
        outcome, published = eventloop.run(pub.once())
    except (BrokerError, store.StoreError) as e:
        fail(str(e), Exit.RUNTIME)
    if outcome in REJECTED:
        sys.stderr.write(f"erel-sync: head not published: {outcome} (see the log above)\n")
        return int(Exit.CHANGES)
    if not published:
        sys.stderr.write(
            f"erel-sync: {outcome}, but not published: no broker reachable, or another "
            "publisher is active (see the log above)\n"
        )
        return int(Exit.RUNTIME)
    return int(Exit.OK)


def load_settings(config: Path | None, **overrides: object) -> AgentSettings:
    try:
        if config is not None:
            try:
                settings = load_agent_settings(str(config), config.read_bytes())
            except OSError as e:
                fail(f"{config}: {e.strerror or e}", Exit.INVALID)
        else:
            host = overrides.get("host_id") or os.environ.get("EREL_HOST_ID")
            if not host:
                fail("no --config and no --host-id / EREL_HOST_ID", Exit.INVALID)
            settings = AgentSettings(host_id=str(host))
        # Flags and environment are checked with the file (a URL naming another vhost than
        # the file's `vhost`, or the reverse, is refused here).
        return settings.with_overrides(**overrides)
    except ConfigError as e:
        for p in e.problems:
            sys.stderr.write(f"{p}\n")
        raise typer.Exit(int(Exit.INVALID)) from None


def agent(
    config: Annotated[Path | None, typer.Option("--config", help="AgentSettings YAML.")] = None,
    host_id: Annotated[str | None, typer.Option("--host-id", envvar="EREL_HOST_ID")] = None,
    amqp_url: Annotated[
        list[str] | None, typer.Option("--amqp-url", envvar="EREL_AMQP_URL", help="Broker URL(s).")
    ] = None,
    vhost: VhostOpt = None,
    trusted_key: Annotated[
        list[str] | None, typer.Option("--trusted-key", help="ID=BASE64 publisher key.")
    ] = None,
    state_dir: Annotated[str | None, typer.Option("--state-dir")] = None,
    releases_dir: Annotated[str | None, typer.Option("--releases-dir")] = None,
    cluster_host: Annotated[
        str | None,
        typer.Option(
            "--cluster-host",
            envvar="EREL_CLUSTER_HOST",
            help="Host part of clustered nodes' names: what other hosts reach (default: FQDN).",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Join once, reconcile once, exit with the state.")
    ] = False,
    metrics_listen: MetricsOpt = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    log_format: LogFormatOpt = "text",
) -> None:
    """Run the sync agent of one host: store snapshots, match its group, reconcile releases.

    With --once: join the broker once if it answers within a few seconds, reconcile once
    from the snapshot held then, write status.json and exit with the host's state, as
    `erel-sync status` counts it: 0 converged and healthy, 1 failed, degraded or not
    converged, 4 runtime error (the state directory in use by another agent, a crash).

    Example: erel-sync agent --config /etc/erel-sync/agent.yaml
    """
    from erel_sync.agent.daemon import Agent  # noqa: PLC0415

    setup_logging(log_level, log_format)
    keys = None
    if trusted_key:
        keys = tuple(TrustedKey(*k.split("=", 1)) for k in trusted_key if "=" in k)
    settings = load_settings(
        config,
        host_id=host_id,
        broker_urls=tuple(amqp_url) if amqp_url else None,
        vhost=vhost,
        broker_tls=common.TLS,  # erel-sync --tls-* agent …: over the file's
        trusted_keys=keys,
        state_dir=state_dir,
        releases_dir=releases_dir,
        cluster_host=cluster_host,
        metrics_listen=metrics_listen,
    )
    logs.set_host(settings.host_id)
    if not settings.trusted_keys:
        fail("no trusted publisher keys: every snapshot would be refused", Exit.INVALID)
    eventloop.limit_malloc_arenas()
    try:
        if once:
            raise typer.Exit(host_exit_code(eventloop.run(Agent(settings).once())))
        run_daemon(Agent(settings).run)
    except store.StoreError as e:
        fail(str(e), Exit.RUNTIME)


def host_exit_code(heartbeat: dict[str, object]) -> int:
    """`agent --once`: the host's state as an exit code, the rule `status` applies to each
    host (`core.conditions.host_condition`), with one line on stderr when it is not 0."""
    condition = conditions.host_condition(heartbeat, store_error=heartbeat.get("store_error"))
    if condition.state == "Ok":
        return int(Exit.OK)
    sys.stderr.write(f"erel-sync: {condition.state}: {conditions.clip(condition.why, 300)}\n")
    return int(Exit.CHANGES)
