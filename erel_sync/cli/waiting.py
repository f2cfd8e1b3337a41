"""`erel-sync wait --revision SHA`: block until every host the revision concerns applied it.

Adapter glue: `adapters.broker.opsclient` follows the `erel.revisions` stream (what the publisher
made of each commit: published as seq N with the commits it brings, or rejected with its problems),
the heartbeats (to re-check at once when something changes) and asks every host for its status;
`core.revisions` and `core.clusterview.wait_verdict` decide. Exit codes (docs/operating.md): 0
converged, 1 a host failed, the revision's rollout halted (failed hosts and reasons) or the
publisher rejected the revision (problems printed), 2
invalid input, 3 timed out (the hosts still pending are listed), 4 runtime error.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Annotated, Any

import typer

from erel_sync.cli.common import (
    AmqpUrl,
    Exit,
    GroupOpt,
    SinceOpt,
    VhostOpt,
    fail,
    run,
    seconds,
    urls_of,
)
from erel_sync.cli.status import gather_entries
from erel_sync.core import clusterview as view
from erel_sync.core import revisions, rolloutview

FAIL_GRACE = 30.0  # after a first failure, how long `wait` lets hosts still at work finish


def wait(
    revision: Annotated[
        str, typer.Option("--revision", "-r", help="Git sha (full, or at least 7 hex digits).")
    ],
    group: GroupOpt = None,
    timeout: Annotated[str, typer.Option("--timeout", help="Give up after this long.")] = "5m",
    since: SinceOpt = "10m",
    amqp_url: AmqpUrl = None,
    vhost: VhostOpt = None,
) -> None:
    """Block until every host REVISION concerns applied it and its releases are healthy.

    A host at a later snapshot that contains REVISION counts as converged.
    Exit 0 converged; 1 a host failed (hosts and reasons listed), or the
    publisher rejected REVISION (its problems listed, at once); 3 timed out
    (the hosts still pending are listed). Shows progress on a terminal.

    Examples:
      erel-sync wait --revision $(git rev-parse HEAD) --timeout 5m
      git push && erel-sync wait -r $(git rev-parse --short HEAD) --group web
    """
    if not revisions.is_sha(revision):
        fail(f"--revision {revision[:64]!r} is not a git sha (7 to 40 hex digits)", Exit.INVALID)
    limit = seconds(timeout, "--timeout")
    lookback = seconds(since, "--since")
    urls = urls_of(amqp_url, vhost)
    raise typer.Exit(run(_wait(revision.lower(), group, limit, lookback, urls), urls))


def _verdict(tty: bool, headline: str, hosts: dict[str, str], code: Exit) -> int:
    """`wait`'s last words: the outcome, then a line per host that needs one."""
    if tty:
        sys.stderr.write("\n")  # end the progress line
    print(headline)
    for h, why in sorted(hosts.items()):
        print(f"  {h}: {why}")
    return int(code)


def _rejected(tty: bool, revision: str, record: Any) -> int:
    lines = revisions.problem_lines(record)
    head = (
        f"rejected: the publisher refused {revision[:12]} ({record.get('reason') or 'Invalid'}), "
        f"{record.get('problems_total') or len(lines)} problem(s):"
    )
    kept = record.get("published_revision")
    if kept:
        lines.append(f"(the published revision stays {str(kept)[:12]})")
    if tty:
        sys.stderr.write("\n")
    print(head)
    for line in lines:
        print(f"  {line}")
    return int(Exit.CHANGES)


def _progress(v: view.WaitVerdict, revision: str, found: revisions.Located) -> str:
    total = len(v.converged) + len(v.failed) + len(v.pending)
    where = revision[:12]
    if found.state == "Published" and found.revision and not found.revision.startswith(revision):
        where += f" (in {found.revision[:12]}, seq {found.seq})"
    line = f"{len(v.converged)}/{total} hosts at {where}"
    if found.state == "Unknown" and not v.converged:
        line += "; not published yet"
    if v.pending:
        line += "; waiting for " + ", ".join(f"{h} ({w})" for h, w in sorted(v.pending.items()))
    return line


async def _wait(
    revision: str, group: str | None, limit: float, since: float, urls: list[str]
) -> int:
    from erel_sync.adapters.broker.messages import BrokerError  # noqa: PLC0415
    from erel_sync.adapters.broker.opsclient import OpsClient  # noqa: PLC0415

    tty = sys.stderr.isatty()
    deadline = time.monotonic() + limit
    last_line = ""
    failed_at: float | None = None
    records: list[dict[str, Any]] = []
    async with OpsClient(urls) as client:
        woken = asyncio.Event()

        def on_record(doc: dict[str, Any]) -> None:
            records.append(doc)
            woken.set()

        rollouts: list[dict[str, Any]] = []

        def on_rollout(doc: dict[str, Any]) -> None:
            rollouts.append(doc)
            woken.set()

        await client.follow_heartbeats(lambda _doc: woken.set())
        with contextlib.suppress(BrokerError):  # a user set up before rollouts: no halts seen
            await client.follow_rollouts(on_rollout, max_wait=0.5)
        try:
            announced = await client.follow_revisions(on_record)  # False: no erel.revisions
        except BrokerError as e:
            # Not readable (a user set up before the stream existed): the hosts still say
            # which revision they hold; only rejections and later snapshots go unseen.
            sys.stderr.write(f"erel-sync: going on without the publisher's records: {e}\n")
            announced = False
        while True:
            found = revisions.locate(records, revision)
            if found.state == "Rejected":
                return _rejected(tty, revision, found.record)
            stopped = rolloutview.halted(rolloutview.newest(rollouts), seq=found.seq, group=group)
            if stopped:
                # A halted rollout waits for an operator (retry) or a new commit: say so now.
                names = ", ".join(sorted(stopped))
                head = f"halted: the rollout of {revision[:12]} stopped in group {names}"
                failed = {h: r for hosts in stopped.values() for h, r in hosts.items()}
                return _verdict(tty, head, failed, Exit.CHANGES)
            left = deadline - time.monotonic()
            # Every host is asked, not only the group's: the revision may move hosts into it.
            entries = await gather_entries(
                client, group=None, host=None, since=since, within=max(0.2, min(2.0, left))
            )
            v = view.wait_verdict(entries, revision, group=group, target_seq=found.seq)
            line = _progress(v, revision, found)
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
                if announced and found.state == "Unknown":
                    head += f"; the publisher never announced {revision[:12]}"
                return _verdict(tty, head, v.pending, Exit.PARTIAL)
            woken.clear()
            try:
                async with asyncio.timeout(min(1.0, max(0.0, deadline - time.monotonic()))):
                    await woken.wait()  # a heartbeat or a revision record: look again
            except TimeoutError:
                pass
