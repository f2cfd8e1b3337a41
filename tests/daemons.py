"""Daemon processes in tests: a publisher and one agent on a one-host config repository (for
tests of how they reach the broker), and stopping a set of processes without leaving any."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from erel_sync.adapters import store
from erel_sync.core.snapshot import generate_key
from tests.configrepo import GitRepo, release_yaml
from tests.waiting import wait_for


def stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (after SIGCONT: a paused one cannot act on it) every process still running,
    then wait for each; SIGKILL one that lingers."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def publisher_and_agent(
    tmp: Path,
    host: str,
    group: str,
    broker: str,
    publisher_url: str,
    *,
    flags: tuple[str, ...] = (),
) -> Iterator[None]:
    """A config repository (a release and `group`), a publisher (`erel-sync FLAGS publisher
    --amqp-url PUBLISHER_URL`) and agent `host` (its AgentSettings `broker:` block given as
    YAML lines), yielded once the agent applied the publisher's first snapshot."""
    repo = GitRepo(tmp / "config")
    repo.commit({"r.yaml": release_yaml(), "g.yaml": group})
    pem, public_key = generate_key()
    store.write_atomic(tmp / "k.pem", pem)
    settings = tmp / "agent.yaml"
    settings.write_text(
        f"apiVersion: erel/v1\nkind: AgentSettings\nmetadata: {{name: {host}}}\nspec:\n"
        f"  host_id: {host}\n  broker:\n{broker}"
        f"  trusted_keys: [{{id: k1, public_key: '{public_key}'}}]\n"
        f"  state_dir: {tmp / 'state'}\n  releases_dir: {tmp / 'releases'}\n"
        f"  cache_dir: {tmp / 'cache'}\n  heartbeat_interval: 500ms\n"
    )
    procs = []
    with (tmp / "daemons.log").open("ab") as log:
        for argv in (
            [*flags, "publisher", "--repo", str(repo.root), "--key", str(tmp / "k.pem"),
             "--key-id", "k1", "--state-dir", str(tmp / "pub"), "--amqp-url", publisher_url],
            ["agent", "--config", str(settings)],
        ):  # fmt: skip
            procs.append(
                subprocess.Popen([sys.executable, "-m", "erel_sync", *argv], stdout=log, stderr=log)
            )
    try:

        def applied() -> int:
            doc = store.read_json(tmp / "state" / "status.json") or {}
            return int(((doc.get("report") or {}).get("applied") or {}).get("seq") or 0)

        wait_for(f"{host} applied the publisher's snapshot", lambda: applied() > 0, 60)
        yield
    finally:
        stop_all(procs)
