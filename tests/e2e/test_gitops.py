"""The GitOps loop end to end: a real publisher process, real agent processes, a private RabbitMQ
node and the real example releases. One cluster per module; before each scenario it is brought
back to the module's starting point (`reset_cluster`), so every test runs alone or in any order
and asserts its own outcome (issue "GitOps loop", Done when)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

from erel_sync.adapters.broker import topology as topo
from erel_sync.core.snapshot import build_envelope, generate_key, load_private_key
from erel_sync.dev.cluster import DevHost
from erel_sync.model.validate import SourceFile, validate_sources
from tests.e2e.harness import E2ECluster, cli, reset_cluster, running_cluster, wait_for

pytestmark = pytest.mark.e2e


def release(name: str, versions: tuple[str, ...], extra: str = "") -> str:
    out = [
        "apiVersion: erel/v1",
        "kind: Release",
        f"metadata: {{name: {name}}}",
        "spec:",
        "  health: {timeout: 5s, probation: 300ms, start_timeout: 20s}",
        "  stop_timeout: 5s",
        "  versions:",
    ]
    for v in versions:
        out += [
            f'    - version: "{v}"',
            "      artifact:",
            f"        url: https://artifacts.example.com/{name}/{name}-{v}.tar.gz",
            f"        sha256: {hashlib.sha256(v.encode()).hexdigest()}",
        ]
    return "\n".join(out) + "\n" + extra


def group(name: str, members: str, releases: dict[str, str], extra: str = "") -> str:
    rels = ", ".join(f'{{name: {n}, version: "{v}"}}' for n, v in releases.items())
    return (
        f"apiVersion: erel/v1\nkind: Group\nmetadata: {{name: {name}}}\nspec:\n"
        f"  {members}\n  releases: [{rels}]\n{extra}"
    )


FILES = {
    "releases/hello.yaml": release("hello", ("0.1.0", "0.2.0", "0.3.0")),
    "releases/ticker.yaml": release("ticker", ("0.1.0",)),
    "groups/web.yaml": group("web", "hosts: ['web-*']", {"hello": "0.1.0", "ticker": "0.1.0"}),
    "groups/batch.yaml": group("batch", "selector: {labels: {role: batch}}", {"ticker": "0.1.0"}),
}
HOSTS = (
    DevHost("web-1", {"role": "web"}),
    DevHost("web-2", {"role": "web"}),
    DevHost("batch-1", {"role": "batch"}),
)


@pytest.fixture(scope="module")
def cluster(rabbit: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    with running_cluster(
        rabbit, tmp_path_factory, "e2e", HOSTS, FILES, reconcile_interval="2s", watch=True
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def baseline(cluster: E2ECluster) -> None:
    reset_cluster(cluster, FILES, HOSTS)


ALL = ["web-1", "web-2", "batch-1"]


def edit(c: E2ECluster, rel: str, old: str, new: str) -> str:
    text = c.file(rel).read_text()
    assert old in text, (rel, old)
    return c.commit(f"edit {rel}", {rel: text.replace(old, new)})


def test_01_every_host_converges_on_the_first_commit(cluster: E2ECluster) -> None:
    cluster.wait_converged(ALL, timeout=90)
    for host in ("web-1", "web-2"):
        obs = cluster.observe(host)
        assert {n: (o.running, o.current) for n, o in obs.items()} == {
            "hello": (True, "0.1.0"),
            "ticker": (True, "0.1.0"),
        }
    obs = cluster.observe("batch-1")
    assert {n: (o.running, o.current) for n, o in obs.items()} == {"ticker": (True, "0.1.0")}


def test_02_version_change_reaches_exactly_the_matching_hosts(cluster: E2ECluster) -> None:
    batch_before = cluster.observe("batch-1")["ticker"].details
    sha = edit(
        cluster,
        "groups/web.yaml",
        '{name: hello, version: "0.1.0"}',
        '{name: hello, version: "0.2.0"}',
    )
    cluster.wait_converged(ALL)
    # `history`: the publisher's newest revision, and web-1 applied it (newest first).
    seq = cluster.publisher_seq()
    out = cli(cluster, "history", "--host", "web-1", "-n", "3", "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    newest = doc["revisions"][0]
    assert (newest["seq"], newest["revision"], newest["subject"]) == (
        seq,
        sha,
        "edit groups/web.yaml",
    )
    assert len(doc["revisions"]) <= 3 and set(doc["hosts"]) == {"web-1"}
    latest = doc["hosts"]["web-1"][0]
    assert (latest["seq"], latest["revision"], latest["result"]) == (seq, sha, "applied")
    assert 0 <= latest["duration"] < 60
    table = cli(cluster, "history", "--host", "web-1").stdout
    assert sha[:12] in table and "edit groups/web.yaml" in table and "applied" in table
    for host in ("web-1", "web-2"):
        assert cluster.observe(host)["hello"].current == "0.2.0"
    batch_after = cluster.observe("batch-1")["ticker"].details
    # Not restarted: the same VM kept running (uptime only grew).
    assert batch_after.get("uptime_ms", 0) >= batch_before.get("uptime_ms", 0)
    assert "hello" not in cluster.observe("batch-1")


def test_03_invalid_commit_is_rejected_and_nothing_changes(cluster: E2ECluster) -> None:
    assert cluster.watcher is not None
    seq = cluster.publisher_seq()
    bad = edit(cluster, "groups/web.yaml", 'hello, version: "0.1.0"', 'hello, version: "9.9.9"')
    event = wait_for(
        "the rejection event",
        lambda: next((e for e in cluster.watcher.events if e.get("revision") == bad), None),  # type: ignore[union-attr]
    )
    assert event["kind"] == "rejected" and event["reason"] == "Invalid"
    assert any("has no version '9.9.9'" in p["message"] for p in event["problems"])
    assert event["problems"][0]["file"] == "groups/web.yaml"
    assert cluster.publisher_seq() == seq
    for host in ("web-1", "web-2", "batch-1"):
        assert (cluster.report(host).get("snapshot") or {}).get("seq") == seq
    assert cluster.observe("web-1")["hello"].current == "0.1.0"
    edit(cluster, "groups/web.yaml", 'version: "9.9.9"', 'version: "0.2.0"')  # fixed
    cluster.wait_converged(ALL, seq=seq + 1)


def test_04_release_killed_by_hand_is_restarted_on_the_next_tick(cluster: E2ECluster) -> None:
    pid = cluster.vm_pid("web-1", "hello")
    assert pid > 0
    os.kill(pid, signal.SIGKILL)
    wait_for("hello seen not running", lambda: not cluster.observe("web-1")["hello"].running, 10)
    wait_for(
        "hello restarted on web-1 by a timer tick",
        lambda: (
            cluster.observe("web-1")["hello"].running
            and cluster.vm_pid("web-1", "hello") not in (0, pid)
        ),
        timeout=30,
    )
    cluster.wait_converged(["web-1"])


def test_05_removing_a_release_deletes_it_on_those_hosts_only(cluster: E2ECluster) -> None:
    edit(cluster, "groups/web.yaml", ', {name: ticker, version: "0.1.0"}', "")
    cluster.wait_converged(ALL)
    for host in ("web-1", "web-2"):
        assert set(cluster.observe(host)) == {"hello"}
        assert not (cluster.host_dir(host) / "releases" / "ticker").exists()
    assert cluster.observe("batch-1")["ticker"].running


def test_06_agent_started_after_several_commits_converges_to_the_newest(
    cluster: E2ECluster,
) -> None:
    edit(cluster, "releases/ticker.yaml", "stop_timeout: 5s", "stop_timeout: 6s")
    edit(cluster, "releases/ticker.yaml", "stop_timeout: 6s", "stop_timeout: 7s")
    edit(cluster, "releases/ticker.yaml", "stop_timeout: 7s", "stop_timeout: 8s")
    newest = cluster.publisher_seq()
    cluster.add_host("web-3", role="web")
    cluster.wait_converged(["web-3"], seq=newest)
    assert cluster.observe("web-3")["hello"].current == "0.1.0"
    assert (cluster.report("web-3").get("applied") or {}).get("seq") == newest


def test_07_unassigned_host_converges_once_a_group_matches(cluster: E2ECluster) -> None:
    cluster.add_host("db-1", role="db")
    wait_for("db-1 reports Unassigned", lambda: cluster.report("db-1").get("match") == "Unassigned")
    assert cluster.observe("db-1") == {}
    cluster.commit(
        "add db group",
        {"groups/db.yaml": group("db", "hosts: [db-1]", {"ticker": "0.1.0"})},
    )
    cluster.wait_converged(["db-1"])
    assert cluster.observe("db-1")["ticker"].running


def test_08_agent_joins_while_the_publisher_is_down_via_peers(cluster: E2ECluster) -> None:
    cluster.stop_process("publisher")
    newest = cluster.publisher_seq()

    async def wipe_stream() -> None:
        # An empty stream (broker data lost) forces the state.request path: peers answer.
        conn = await aio_pika.connect(cluster.url)
        async with conn:
            ch = await conn.channel()
            await ch.queue_delete(topo.CONFIG_STREAM)
            q = await ch.declare_queue(
                topo.CONFIG_STREAM, durable=True, arguments=dict(topo.CONFIG_STREAM_ARGUMENTS)
            )
            await q.bind(topo.CONFIG_EXCHANGE, routing_key=topo.CONFIG_ROUTING_KEY)

    asyncio.run(wipe_stream())
    cluster.add_host("web-4", role="web")
    cluster.wait_converged(["web-4"], seq=newest)
    cluster.start_publisher()  # republishes the current snapshot into the empty stream


def test_09_forged_and_stale_snapshots_are_refused_and_counted(cluster: E2ECluster) -> None:
    assert cluster.watcher is not None
    # Hosts past seq 1, so that a snapshot signed for seq 1 is stale (not a duplicate).
    edit(cluster, "releases/ticker.yaml", "stop_timeout: 5s", "stop_timeout: 6s")
    cluster.wait_converged(ALL)
    state = validate_sources(
        [
            SourceFile(p.relative_to(cluster.repo).as_posix(), p.read_bytes())
            for p in cluster.repo.rglob("*.yaml")
        ]
    ).require()
    stranger = load_private_key(generate_key()[0])
    real = load_private_key((cluster.work / "keys" / f"{cluster.key_id}.key").read_bytes())
    forged = build_envelope(
        state, seq=10_000, revision="f" * 40, created="x", key=stranger, key_id=cluster.key_id
    )
    stale = build_envelope(
        state, seq=1, revision="e" * 40, created="x", key=real, key_id=cluster.key_id
    )

    async def publish_by_hand() -> None:
        conn = await aio_pika.connect(cluster.url)
        async with conn:
            ch = await conn.channel()
            ex = await ch.get_exchange(topo.CONFIG_EXCHANGE)
            for body in (forged, stale):
                await ex.publish(aio_pika.Message(body), routing_key="")

    seq = cluster.publisher_seq()
    asyncio.run(publish_by_hand())

    def counted() -> bool:
        beats = cluster.watcher.beats  # type: ignore[union-attr]
        return all(
            beats.get(h, {}).get("counters", {}).get("rejected.BadSignature", 0) >= 1
            and beats.get(h, {}).get("counters", {}).get("stale", 0) >= 1
            for h in ("web-1", "web-2", "batch-1")
        )

    wait_for("every agent counted the forged and the stale snapshot", counted, timeout=30)
    for host in ("web-1", "web-2", "batch-1"):
        assert (cluster.report(host).get("snapshot") or {}).get("seq") == seq


def test_10_agent_killed_mid_upgrade_finishes_it_after_restart(cluster: E2ECluster) -> None:
    record = cluster.host_dir("web-1") / "releases" / "hello" / ".erel-sync" / "release.json"
    edit(cluster, "groups/web.yaml", 'hello, version: "0.1.0"', 'hello, version: "0.2.0"')
    cluster.wait_converged(["web-1", "web-2"])
    text = cluster.file("releases/hello.yaml").read_text()
    slow = text.replace("probation: 300ms", "probation: 4s")
    slow_web = cluster.file("groups/web.yaml").read_text().replace('"0.2.0"', '"0.1.0"')
    cluster.commit("slow downgrade", {"releases/hello.yaml": slow, "groups/web.yaml": slow_web})

    def mid_step() -> bool:
        doc = json.loads(record.read_text())
        return bool(doc.get("pending"))

    wait_for("web-1 in the middle of the version change", mid_step, timeout=30, every=0.01)
    cluster.kill_process("web-1")  # SIGKILL, mid-step
    assert mid_step(), (
        record.read_text(),
        (cluster.work / "logs" / "web-1.log").read_text()[-3000:],
    )
    cluster.start_agent(next(h for h in cluster.hosts if h.host_id == "web-1"))
    cluster.wait_converged(["web-1", "web-2"], timeout=90)
    assert cluster.observe("web-1")["hello"].current == "0.1.0"
    assert not mid_step()
