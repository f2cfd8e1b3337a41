"""Operating the cluster through the CLI (issue "Operating the cluster", Done when): holds across
ticks and an agent restart, remote start/stop/restart on a whole group, expired and unsigned
commands refused, `status` with a killed agent, JSON output against its schema, `wait`.

Real processes: a publisher, three agents, the `erel-sync` CLI as a subprocess, a private
RabbitMQ node and the real example releases. One cluster per module, brought back to the
module's starting point before each scenario (`reset_cluster`): every test runs alone or in any
order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import jsonschema
import pytest
import yaml

from erel_sync.adapters.broker.messages import PublishFailed
from erel_sync.adapters.broker.opsclient import OpsClient
from erel_sync.core import control
from erel_sync.core.snapshot import generate_key, load_private_key
from erel_sync.dev.cluster import REPO_ROOT, DevHost
from tests.e2e.harness import E2ECluster, cli, reset_cluster, running_cluster, wait_for
from tests.e2e.test_gitops import group, release

pytestmark = pytest.mark.e2e

FILES = {
    "releases/hello.yaml": release("hello", ("0.1.0", "0.2.0", "0.3.0")),
    "releases/ticker.yaml": release("ticker", ("0.1.0",)),
    "groups/web.yaml": group("web", "hosts: ['web-*']", {"hello": "0.1.0"}),
    "groups/batch.yaml": group("batch", "selector: {labels: {role: batch}}", {"ticker": "0.1.0"}),
}
HOSTS = (
    DevHost("web-1", {"role": "web"}),
    DevHost("web-2", {"role": "web"}),
    DevHost("batch-1", {"role": "batch"}),
)
ALL = ["web-1", "web-2", "batch-1"]


@pytest.fixture(scope="module")
def cluster(rabbit: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    with running_cluster(
        rabbit, tmp_path_factory, "ops", HOSTS, FILES, reconcile_interval="1s"
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def baseline(cluster: E2ECluster) -> None:
    reset_cluster(cluster, FILES, HOSTS)


def running(c: E2ECluster, host: str, name: str) -> bool:
    obs = c.observe(host).get(name)
    return bool(obs and obs.running)


def hold(c: E2ECluster, host: str, name: str) -> dict[str, Any] | None:
    doc = c.report(host)
    rel = next((r for r in doc.get("releases", []) if r["name"] == name), None)
    return rel["hold"] if rel else None


def ticks_pass(c: E2ECluster, host: str, n: int = 2) -> None:
    """Wait until the agent reported `n` more reconcile passes (its report time moved on)."""
    seen: list[str] = []

    def moved() -> bool:
        t = c.report(host).get("time")
        if t and (not seen or seen[-1] != t):
            seen.append(t)
        return len(seen) > n

    wait_for(f"{n} reconcile ticks on {host}", moved, timeout=30)


def test_01_status_and_members_json_follow_their_schemas(cluster: E2ECluster) -> None:
    out = cli(cluster, "status", "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    schema = json.loads((REPO_ROOT / "schemas" / "cli" / "status.schema.json").read_text())
    jsonschema.validate(doc, schema)
    by_host = {h["host_id"]: h for h in doc}
    assert set(by_host) == set(ALL)
    assert all(h["reachable"] and h["converged"] for h in doc)
    web1 = {r["name"]: r for r in by_host["web-1"]["releases"]}
    assert web1["hello"]["version"] == web1["hello"]["desired_version"] == "0.1.0"
    assert web1["hello"]["state"] == "Ready" and web1["hello"]["healthy"] is True
    assert by_host["batch-1"]["group"] == "batch"

    as_yaml = cli(cluster, "status", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert {h["host_id"] for h in yaml.safe_load(as_yaml.stdout)} == set(ALL)

    table = cli(cluster, "status", "--group", "web")
    assert table.returncode == 0, table.stderr
    assert "web-1" in table.stdout and "batch-1" not in table.stdout

    out = cli(cluster, "members", "-o", "json")
    assert out.returncode == 0, out.stderr
    ms = json.loads(out.stdout)
    schema = json.loads((REPO_ROOT / "schemas" / "cli" / "members.schema.json").read_text())
    jsonschema.validate(ms, schema)
    assert {m["host_id"]: (m["state"], m["group"]) for m in ms} == {
        "web-1": ("Live", "web"),
        "web-2": ("Live", "web"),
        "batch-1": ("Live", "batch"),
    }


@contextlib.contextmanager
def status_watch(c: E2ECluster) -> Iterator[IO[str]]:
    """`erel-sync status --watch -o json` running; yields its output, one document a line."""
    env = {**os.environ, "EREL_AMQP_URL": c.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "erel_sync", "status", "--watch", "-o", "json"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_01b_status_watch_streams_updates(cluster: E2ECluster) -> None:
    with status_watch(cluster) as out:
        first = json.loads(out.readline())
    assert {h["host_id"] for h in first} == set(ALL)
    assert all(h["reachable"] for h in first)


def test_02_stop_holds_across_ticks_and_an_agent_restart(cluster: E2ECluster) -> None:
    out = cli(cluster, "stop", "hello", "--host", "web-1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not running(cluster, "web-1", "hello")
    wait_for("the hold in web-1's report", lambda: hold(cluster, "web-1", "hello") or {})
    ticks_pass(cluster, "web-1", 2)
    assert not running(cluster, "web-1", "hello"), "a tick restarted a held release"
    assert cluster.releases("web-1")["hello"]["state"] == "Held"
    assert running(cluster, "web-2", "hello")  # the other host untouched

    cluster.stop_process("web-1")
    cluster.start_agent(HOSTS[0])
    ticks_pass(cluster, "web-1", 2)
    assert not running(cluster, "web-1", "hello"), "the hold did not survive the restart"
    assert (hold(cluster, "web-1", "hello") or {}).get("kind") == "stop"

    # `start` through the local socket (no broker, no signature) clears the hold.
    sock = cluster.host_dir("web-1") / "agent.sock"
    out = cli(cluster, "start", "hello", "--socket", str(sock))
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for("hello running again on web-1", lambda: running(cluster, "web-1", "hello"), 30)
    wait_for("the hold gone", lambda: cluster.releases("web-1")["hello"]["hold"] is None)


def test_03_remote_stop_start_restart_on_a_whole_group(cluster: E2ECluster) -> None:
    ticker_pid = cluster.vm_pid("batch-1", "ticker")
    out = cli(cluster, "stop", "hello", "--group", "web", "-o", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads(out.stdout)
    assert {r["host_id"]: (r["ok"], r["hold"]["kind"]) for r in results} == {
        "web-1": (True, "stop"),
        "web-2": (True, "stop"),
    }
    assert not running(cluster, "web-1", "hello") and not running(cluster, "web-2", "hello")
    assert cluster.vm_pid("batch-1", "ticker") == ticker_pid  # another group: untouched

    out = cli(cluster, "start", "hello", "--group", "web")
    assert out.returncode == 0, out.stdout + out.stderr
    for host in ("web-1", "web-2"):
        wait_for(f"hello running on {host}", lambda h=host: running(cluster, h, "hello"), 30)  # type: ignore[misc]

    before = {h: cluster.vm_pid(h, "hello") for h in ("web-1", "web-2")}
    out = cli(cluster, "restart", "hello", "--group", "web")
    assert out.returncode == 0, out.stdout + out.stderr
    for host in ("web-1", "web-2"):
        wait_for(
            f"a new hello VM on {host}",
            lambda h=host: (
                running(cluster, h, "hello")  # type: ignore[misc]
                and cluster.vm_pid(h, "hello") not in (0, before[h])
            ),
            30,
        )
        assert cluster.releases(host)["hello"]["hold"] is None


def _send(c: E2ECluster, cmd: control.Command, host: str, within: float = 10) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with OpsClient([c.url]) as client:
            await client.send(cmd, 60)
            replies = await client.collect(cmd.id, expected={host}, within=within)
        return replies[host][0]

    return asyncio.run(go())


def test_04_expired_unsigned_and_unknown_key_commands_are_refused(cluster: E2ECluster) -> None:
    key = load_private_key(cluster.operator_key.read_bytes())
    target = control.host_target("web-2")
    pid = cluster.vm_pid("web-2", "hello")
    unsigned = control.new_command("stop", "hello", target, now=time.time())
    assert _send(cluster, unsigned, "web-2")["reason"] == "Unsigned"
    expired = control.new_command(
        "stop", "hello", target, now=time.time() - 120, ttl=60, key=key, key_id="dev-operator"
    )
    assert _send(cluster, expired, "web-2")["reason"] == "Expired"
    stranger = load_private_key(generate_key()[0])
    forged = control.new_command(
        "stop", "hello", target, now=time.time(), key=stranger, key_id="dev-operator"
    )
    assert _send(cluster, forged, "web-2")["reason"] == "BadSignature"
    assert running(cluster, "web-2", "hello") and cluster.vm_pid("web-2", "hello") == pid
    assert cluster.releases("web-2")["hello"]["hold"] is None
    wait_for(
        "refusals counted",
        lambda: (
            cluster.report("web-2") is not None
            and (store_counters(cluster, "web-2").get("commands_refused.Unsigned", 0) >= 1)
        ),
    )


def test_04b_a_replayed_command_is_refused_even_after_an_agent_restart(
    cluster: E2ECluster,
) -> None:
    key = load_private_key(cluster.operator_key.read_bytes())
    cmd = control.new_command(
        "start", "hello", control.host_target("web-2"), now=time.time(), ttl=600,
        key=key, key_id="dev-operator",
    )  # fmt: skip
    first = _send(cluster, cmd, "web-2")
    assert first["ok"] is True
    assert _send(cluster, cmd, "web-2")["reason"] == "Replayed"  # the same bytes again
    cluster.stop_process("web-2")
    cluster.start_agent(HOSTS[1])

    def new_instance_answers() -> bool:
        query = control.new_command("status", None, control.host_target("web-2"), now=time.time())
        try:
            return bool(_send(cluster, query, "web-2", within=2)["instance"] != first["instance"])
        except (KeyError, PublishFailed):  # no queue or no answer yet: still connecting
            return False

    wait_for("web-2's new agent answers", new_instance_answers, 60, every=0.2)
    again = _send(cluster, cmd, "web-2")
    assert again["reason"] == "Replayed" and again["instance"] != first["instance"]


def store_counters(c: E2ECluster, host: str) -> dict[str, int]:
    from erel_sync.adapters import store

    doc = store.read_json(c.host_dir(host) / "state" / "status.json") or {}
    return dict(doc.get("counters") or {})


def test_05_delete_holds_until_git_changes_the_release(cluster: E2ECluster) -> None:
    out = cli(cluster, "delete", "hello", "--host", "web-2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hello" not in cluster.observe("web-2")
    ticks_pass(cluster, "web-2", 2)
    assert "hello" not in cluster.observe("web-2"), "a tick reinstalled a deleted release"
    assert (hold(cluster, "web-2", "hello") or {}).get("kind") == "delete"

    text = cluster.file("groups/web.yaml").read_text()
    sha = cluster.commit("hello 0.2.0", {"groups/web.yaml": text.replace("0.1.0", "0.2.0")})
    out = cli(cluster, "wait", "--revision", sha, "--group", "web", "--timeout", "90s")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "converged" in out.stdout
    for host in ("web-1", "web-2"):
        assert cluster.observe(host)["hello"].current == "0.2.0"
    # status.json's report follows the agent's own within a heartbeat spacing (1 s).
    wait_for("the hold gone", lambda: cluster.releases("web-2")["hello"]["hold"] is None, 10)


def test_06_wait_fails_with_reasons_when_a_release_fails_its_health_check(
    cluster: E2ECluster,
) -> None:
    text = cluster.file("groups/web.yaml").read_text()
    sha = cluster.commit("hello 0.3.0", {"groups/web.yaml": text.replace("0.1.0", "0.3.0")})
    out = cli(cluster, "wait", "--revision", sha[:10], "--group", "web", "--timeout", "120s")
    assert out.returncode == 1, out.stdout + out.stderr
    # The group rolls out one host at a time (max_unavailable 1): web-1, first in host-id
    # order, fails its health check and rolls back; the rollout halts and `wait` says so at
    # once. web-2 never tries the bad version (before rollouts, both tried it at once).
    assert "halted" in out.stdout
    assert "web-1" in out.stdout and "web-2:" not in out.stdout
    assert "hello" in out.stdout
    for host in ("web-1", "web-2"):  # rolled back or untouched, still serving
        assert cluster.observe(host)["hello"].current == "0.1.0"
        assert running(cluster, host, "hello")


def test_06b_members_flags_two_agents_claiming_one_host_id(cluster: E2ECluster) -> None:
    first = cluster.agent_settings(DevHost("dup-1", {"role": "none"}))  # matches no group
    text = first.read_text()
    twin_dir = cluster.work / "twin"
    second = twin_dir / "agent.yaml"
    twin_dir.mkdir()
    second.write_text(text.replace(str(cluster.host_dir("dup-1")), str(twin_dir)))
    cluster._spawn("dup-1", ["agent", "--config", str(first)])
    cluster._spawn("dup-1-twin", ["agent", "--config", str(second)])
    try:

        def flagged() -> dict[str, Any] | None:
            out = cli(cluster, "members", "-o", "json")
            doc = {m["host_id"]: m for m in json.loads(out.stdout or "[]")}
            dup = doc.get("dup-1")
            return dup if dup and dup["state"] == "Duplicate" else None

        dup = wait_for("dup-1 flagged as a duplicate", flagged, timeout=30, every=0.5)
        assert len(dup["instances"]) == 2 and dup["duplicate"] is True
        out = cli(cluster, "members")
        assert "more than one agent claims host id(s): dup-1" in out.stderr
        # `status --watch` keeps flagging it once it follows heartbeats (1 s apart here).
        views = watch_views(cluster, "dup-1", heartbeats=3)
        assert all(v["duplicate"] and len(v["instances"]) == 2 for v in views), [
            (v["instances"], v["last_seen"]) for v in views if not v["duplicate"]
        ]
    finally:
        cluster.stop_process("dup-1")
        cluster.stop_process("dup-1-twin")

    def gone() -> bool:  # both stopped cleanly: each said it left, so no one expects dup-1
        out = cli(cluster, "members", "-o", "json")
        return "dup-1" not in {m["host_id"] for m in json.loads(out.stdout or "[]")}

    wait_for("dup-1 gone from members after both agents stopped", gone, timeout=30, every=0.5)


def watch_views(c: E2ECluster, host: str, heartbeats: int) -> list[dict[str, Any]]:
    """`host`'s entry in what `status --watch -o json` prints, until it has been updated from
    `heartbeats` heartbeats (its `last_seen` moved that many times)."""
    views: list[dict[str, Any]] = []
    with status_watch(c) as out:
        deadline = time.monotonic() + 60
        while len({v["last_seen"] for v in views}) <= heartbeats:
            assert time.monotonic() < deadline, f"{host} not updated {heartbeats} times: {views}"
            line = out.readline()  # watch prints on every change, heartbeats included
            assert line, "status --watch ended"
            views += [e for e in json.loads(line) if e["host_id"] == host]
    return views


def test_07_status_names_a_killed_agent_unreachable_and_exits_3(cluster: E2ECluster) -> None:
    cluster.kill_process("batch-1")
    t0 = time.monotonic()
    out = cli(cluster, "status", "-o", "json", "--timeout", "1.5")
    took = time.monotonic() - t0
    assert out.returncode == 3, out.stdout + out.stderr
    doc = {h["host_id"]: h for h in json.loads(out.stdout)}
    assert doc["batch-1"]["reachable"] is False and doc["batch-1"]["error"] == "no answer"
    assert doc["web-1"]["reachable"] and doc["web-2"]["reachable"]
    assert "batch-1" in out.stderr
    assert took < 30
    table = cli(cluster, "status")
    assert table.returncode == 3
    assert any("batch-1" in line and "Unreachable" in line for line in table.stdout.splitlines())


def test_08_unknown_release_and_unreachable_host_are_clear_errors(cluster: E2ECluster) -> None:
    cluster.kill_process("batch-1")
    out = cli(cluster, "stop", "nope", "--host", "web-1")
    assert out.returncode == 1
    assert "UnknownRelease" in out.stdout
    out = cli(cluster, "stop", "hello", "--host", "batch-1")  # its agent was killed
    assert out.returncode == 3
    assert out.stderr.strip().startswith("erel-sync: no live agent for host batch-1")
    out = cli(cluster, "wait", "--revision", "deadbeef", "--group", "web", "--timeout", "2s")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "timed out" in out.stdout and "web-1" in out.stdout
    missing = Path(cluster.work) / "nothing.sock"
    out = cli(cluster, "stop", "hello", "--socket", str(missing))
    assert out.returncode == 4 and out.stderr.count("\n") == 1
