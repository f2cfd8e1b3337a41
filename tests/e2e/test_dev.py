"""`erel-sync dev` (what `make demo` runs) reaches a converged 3-host cluster and stops cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from erel_sync.adapters import logs
from erel_sync.adapters.releases import nodeproc
from erel_sync.dev import netns

pytestmark = pytest.mark.e2e


def test_dev_converges_three_hosts_and_leaves_nothing_running(
    vhost: str, tmp_path: Path, rabbit: Any
) -> None:
    work = tmp_path / "dev"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "erel_sync", "dev", "--work-dir", str(work),
         "--exit-when-converged", "--timeout", "110", "--amqp-url", vhost],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < 120
    assert "converged in" in done.stderr
    for host in ("web-1", "edge-1", "batch-1"):
        assert host in done.stderr
    assert "stopped: broker, publisher, agents and their releases." in done.stderr
    # Nothing of the cluster is left: no agent, no publisher, no release VM.
    for root in (work / "hosts").glob("*/releases/*"):
        assert nodeproc.node_pids(root) == [], root
    leftovers = subprocess.run(
        ["ps", "-eo", "args"], check=True, capture_output=True, text=True
    ).stdout
    assert str(work) not in leftovers


def test_dev_clustered_forms_one_hello_cluster_and_shows_its_peers(tmp_path: Path) -> None:
    """`make demo` on a machine that can (root, iproute2): hello on web-1..3 is one Erlang
    cluster, each host in a network namespace, its cookie a secret of the work repository;
    the table shows each node's peers. Where namespaces cannot be made this fails with why."""
    why = netns.available()
    assert why is None, f"the clustered demo cannot run here: {why}"
    before, elsewhere = namespaces(), in_other_namespaces()
    work = tmp_path / "dev"
    done = subprocess.run(
        [sys.executable, "-m", "erel_sync", "dev", "--work-dir", str(work), "--clustered",
         "--exit-when-converged", "--timeout", "150", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        env={**os.environ, "COLUMNS": "240"},  # a row per line: the table is not wrapped
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hello runs as one Erlang cluster" in done.stderr
    rows = [line for line in done.stderr.splitlines() if "web-" in line and "hello" in line]
    for host in ("web-1", "web-2", "web-3"):
        assert any(host in r and "(2/2 peers)" in r for r in rows), (host, rows[-6:])
    web = (work / "config" / "groups" / "web.yaml").read_text()
    assert "mode: clustered" in web and "$secret" in web and "recipients:" in web
    # The hosts' own nodes were named on their cluster addresses, and nothing is left running.
    for root in (work / "hosts").glob("*/releases/*"):
        assert nodeproc.node_pids(root) == [], root
    assert str(work) not in command_lines()
    assert namespaces() <= before, f"namespaces left behind: {sorted(namespaces() - before)}"
    # What ran inside them (each host's epmd) ended too: it would keep a namespace alive.
    assert in_other_namespaces() <= elsewhere
    json_logs_without_the_cookie(work)


def json_logs_without_the_cookie(work: Path) -> None:
    """Every line the publisher and the agents logged is one JSON object with the stable
    keys; agents' lines name their host; the cookie's plain text (in the nodes' cookie
    files only) is in none of them."""
    cookies = {
        p.read_text().strip()
        for p in (work / "hosts").glob("web-*/releases/hello/**/.erlang.cookie")
    }
    assert len(cookies) == 1 and all(len(c) >= 16 for c in cookies), cookies
    events: set[str] = set()
    for path in sorted((work / "logs").glob("*.log")):
        lines = path.read_text().splitlines()
        assert lines, path
        for line in lines:
            doc = json.loads(line)  # every line, or this fails naming it
            assert set(logs.KEYS) <= set(doc), (path.name, line)
            assert doc["level"] in ("debug", "info", "warning", "error", "critical"), line
            if path.stem != "publisher":
                assert doc["host_id"] == path.stem, (path.name, line)
            assert not any(c in line for c in cookies), f"{path.name}: the cookie is logged"
            events.add(doc["event"])
    assert {"revision_published", "snapshot_stored"} <= events, events


def in_other_namespaces() -> set[int]:
    """Processes in a network namespace other than this test's."""
    own, found = os.readlink("/proc/self/ns/net"), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/net") != own:
                found.add(int(pid))
    return found


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def command_lines() -> str:
    return subprocess.run(["ps", "-eo", "args"], check=True, capture_output=True, text=True).stdout
