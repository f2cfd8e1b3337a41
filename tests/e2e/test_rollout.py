"""Rollouts end to end: six agent processes in one group, a real publisher (its rollout
controller), a private RabbitMQ node, the real example release. An observer of `erel.status`
records every host's rollout events (the agent's clock at each state change), from which the
tests reconstruct how many hosts were mid-change at any instant.

One cluster per module, brought back to its starting point before each test (`reset_cluster`).
The fault scenarios (an agent killed mid-change, the broker restarted mid-rollout) run on a
cluster of their own with its own broker: tests/e2e/test_rollout_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from erel_sync.adapters.broker import topology as topo
from erel_sync.core.erlterm import Atom
from erel_sync.dev.cluster import DevHost
from tests.e2e.harness import E2ECluster, cli, reset_cluster, running_cluster, wait_for
from tests.e2e.test_gitops import release
from tests.scrape import scrape, value
from tests.streams import read_stream

pytestmark = pytest.mark.e2e

WEB = [f"web-{i}" for i in range(1, 7)]
HOSTS = tuple(DevHost(h, {"role": "web"}) for h in WEB)


def web_group(version: str, rollout: str, config: str = "") -> str:
    return (
        "apiVersion: erel/v1\nkind: Group\nmetadata: {name: web}\nspec:\n"
        "  hosts: ['web-*']\n"
        f'  releases:\n    - name: hello\n      version: "{version}"\n{config}'
        f"  rollout: {rollout}\n"
    )


PUBLISHED = "erel_sync_publisher_revisions_published_total"
ACTIONS = "erel_sync_agent_actions_total"
FILES = {
    "releases/hello.yaml": release("hello", ("0.1.0", "0.2.0", "0.3.0")),
    "groups/web.yaml": web_group("0.1.0", "{max_unavailable: 3}"),
}


@pytest.fixture(scope="module")
def cluster(rabbit: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    with running_cluster(
        rabbit, tmp_path_factory, "roll", HOSTS, FILES, reconcile_interval="2s", metrics=True
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def baseline(cluster: E2ECluster) -> None:
    reset_cluster(cluster, FILES, HOSTS, timeout=180)


# -- what an outside observer sees ----------------------------------------------------------


def rollout_events(c: E2ECluster, seq: int) -> list[dict[str, Any]]:
    """Every rollout event of `seq` the agents published, read back from the durable
    `erel.rollout.events` stream (what an outside observer has, even across a broker restart:
    agents send their current state again on every reconnect)."""
    marker_key = topo.rollout_key("~marker")
    events = asyncio.run(
        read_stream(c.url, topo.ROLLOUT_EVENTS_STREAM, topo.STATUS_EXCHANGE, marker_key)
    )
    return [e for e in events if e.get("seq") == seq]


def change_intervals(events: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per host, the intervals it was mid-change: from a `changing` event to its next event
    in another state (by the agent's own clock, `at`). A change not finished is open-ended."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_host.setdefault(e["host_id"], []).append(e)
    out: dict[str, list[tuple[float, float]]] = {}
    for host, evs in by_host.items():
        evs.sort(key=lambda e: e["at"])
        start: float | None = None
        for e in evs:
            if e["state"] == "changing" and start is None:
                start = e["at"]
            elif e["state"] != "changing" and start is not None:
                out.setdefault(host, []).append((start, e["at"]))
                start = None
        if start is not None:
            out.setdefault(host, []).append((start, float("inf")))
    return out


def most_at_once(intervals: dict[str, list[tuple[float, float]]]) -> int:
    points = sorted(
        (t, d) for spans in intervals.values() for a, b in spans for t, d in ((a, 1), (b, -1))
    )
    level = peak = 0
    for _, d in points:  # an end sorts before a start at the same instant (-1 < 1)
        level += d
        peak = max(peak, level)
    return peak


def rollout_doc(c: E2ECluster, group: str = "web") -> dict[str, Any]:
    out = cli(c, "rollout", "status", group, "-o", "json", timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return dict(json.loads(out.stdout))


def versions(c: E2ECluster) -> dict[str, str | None]:
    return {h: c.releases(h).get("hello", {}).get("version") for h in WEB}


def process_limit(c: E2ECluster, host: str) -> int:
    driver = c.driver(host)
    outcome = asyncio.run(
        driver.rpc.call(
            driver.node("hello"), "erlang", "system_info", [Atom("process_limit")],
            within=5.0, envelope=False,
        )
    )  # fmt: skip
    assert isinstance(outcome.value, int), outcome
    return outcome.value


def commit_group(c: E2ECluster, text: str, message: str) -> tuple[str, int]:
    sha = c.commit(message, {"groups/web.yaml": text})
    return sha, c.publisher_seq()


# -- the scenarios ----------------------------------------------------------------------------


class MetricsSampler(threading.Thread):
    """The publisher's endpoint scraped every 50 ms: the most hosts it counted in progress,
    and every rollout phase it showed."""

    def __init__(self, c: E2ECluster) -> None:
        super().__init__(daemon=True)
        self.url = c.metrics_url("publisher")
        self.most_in_progress = 0.0
        self.phases: set[str] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            got = scrape(self.url)
            flight = value(
                got, "erel_sync_publisher_rollout_hosts", group="web", state="in_progress"
            )
            self.most_in_progress = max(self.most_in_progress, flight)
            self.phases |= {
                dict(labels)["phase"]
                for (name, labels), v in got.items()
                if name == "erel_sync_publisher_rollout_phase" and v == 1
            }


def test_01_good_hot_upgrade_never_has_more_than_max_unavailable_mid_change(
    cluster: E2ECluster,
) -> None:
    before = {h: scrape(cluster.metrics_url(h)) for h in WEB}
    published = value(scrape(cluster.metrics_url("publisher")), PUBLISHED)
    sampler = MetricsSampler(cluster)
    sampler.start()
    try:
        _, seq = commit_group(cluster, web_group("0.2.0", "{max_unavailable: 2}"), "hello 0.2.0")
        cluster.wait_converged(WEB, seq, timeout=180)
    finally:
        sampler.halt.set()
        sampler.join(5)
    # What Prometheus saw move: the publisher's seq and rollout, each agent's upgrade.
    pub = scrape(cluster.metrics_url("publisher"))
    assert value(pub, "erel_sync_publisher_seq") == seq
    assert value(pub, PUBLISHED) > published
    assert value(pub, "erel_sync_publisher_publish_duration_seconds_count") >= 1
    assert 1 <= sampler.most_in_progress <= 2, sampler.most_in_progress
    assert "Progressing" in sampler.phases, sampler.phases
    # The controller marks it Complete once it has heard every host done (after they are).
    wait_for(
        "the publisher's gauge says Complete",
        lambda: value(
            scrape(cluster.metrics_url("publisher")),
            "erel_sync_publisher_rollout_phase", group="web", phase="Complete",
        ) == 1,
        30,
    )  # fmt: skip
    for h in WEB:
        now = scrape(cluster.metrics_url(h))
        assert value(now, "erel_sync_agent_applied_seq") == seq
        upgrades = {"action": "upgrade", "result": "ok"}
        assert value(now, ACTIONS, **upgrades) == value(before[h], ACTIONS, **upgrades) + 1
        info = {"release": "hello", "version": "0.2.0", "desired_version": "0.2.0"}
        assert value(now, "erel_sync_agent_release_info", **info, state="Ready") == 1
        assert value(now, "erel_sync_agent_release_healthy", release="hello") == 1
        assert value(now, "erel_sync_agent_reconcile_duration_seconds_count") > value(
            before[h], "erel_sync_agent_reconcile_duration_seconds_count"
        )
    assert set(versions(cluster).values()) == {"0.2.0"}
    spans = change_intervals(rollout_events(cluster, seq))
    assert set(spans) == set(WEB), spans  # every host changed, and said so
    assert most_at_once(spans) <= 2, spans
    doc = rollout_doc(cluster)
    assert doc["phase"] == "Complete" and doc["seq"] == seq


def test_02_a_bad_canary_halts_the_rollout_and_a_revert_completes(cluster: E2ECluster) -> None:
    sha, seq = commit_group(
        cluster, web_group("0.3.0", "{max_unavailable: 2, canary: 1}"), "hello 0.3.0"
    )
    out = cli(cluster, "wait", "-r", sha, "--timeout", "120s", timeout=180)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "web-1" in out.stdout + out.stderr  # the canary, the first host in id order
    doc = rollout_doc(cluster)
    assert doc["phase"] == "Halted" and "web-1" in doc["failed"], doc
    # Only the canary tried 0.3.0 (and rolled back); nobody else was touched.
    spans = change_intervals(rollout_events(cluster, seq))
    assert set(spans) == {"web-1"}, spans
    assert set(versions(cluster).values()) == {"0.1.0"}
    _, seq2 = commit_group(
        cluster, web_group("0.1.0", "{max_unavailable: 2, canary: 1}"), "revert hello 0.3.0"
    )
    cluster.wait_converged(WEB, seq2, timeout=180)
    assert rollout_doc(cluster)["phase"] == "Complete"


def test_03_pause_after_canary_waits_for_promote(cluster: E2ECluster) -> None:
    policy = "{max_unavailable: 2, canary: 1, pause_after_canary: true}"
    _, seq = commit_group(cluster, web_group("0.2.0", policy), "hello 0.2.0, paused")
    wait_for("the canary on 0.2.0", lambda: versions(cluster)["web-1"] == "0.2.0", 120)
    wait_for("the rollout paused", lambda: rollout_doc(cluster)["phase"] == "Paused", 60)
    assert [v for h, v in versions(cluster).items() if h != "web-1"] == ["0.1.0"] * 5
    out = cli(cluster, "rollout", "promote", "web")
    assert out.returncode == 0, (out.stdout, out.stderr)
    cluster.wait_converged(WEB, seq, timeout=180)
    assert set(versions(cluster).values()) == {"0.2.0"}
    assert most_at_once(change_intervals(rollout_events(cluster, seq))) <= 2


def test_06_a_new_commit_mid_rollout_finishes_under_the_same_limit(cluster: E2ECluster) -> None:
    _, seq1 = commit_group(cluster, web_group("0.2.0", "{max_unavailable: 2}"), "hello 0.2.0")
    wait_for(
        "the rollout under way",
        lambda: any(e["state"] == "changing" for e in rollout_events(cluster, seq1)),
        60,
    )
    config = "      config: {sys_config: {hello: {greeting: 'mid-rollout'}}}\n"
    _, seq2 = commit_group(
        cluster, web_group("0.2.0", "{max_unavailable: 2}", config), "new config mid-rollout"
    )
    assert seq2 == seq1 + 1
    cluster.wait_converged(WEB, seq2, timeout=180)
    assert set(versions(cluster).values()) == {"0.2.0"}  # nobody ended on the older revision
    both = rollout_events(cluster, seq1) + rollout_events(cluster, seq2)
    assert most_at_once(change_intervals(both)) <= 2


def test_07_a_vm_args_change_rolls_out_as_gated_restarts(cluster: E2ECluster) -> None:
    before = {h: cluster.vm_pid(h, "hello") for h in WEB}
    config = "      config: {vm_args: {'+P': '300000'}}\n"
    _, seq = commit_group(
        cluster, web_group("0.1.0", "{max_unavailable: 2}", config), "hello: +P 300000"
    )
    cluster.wait_converged(WEB, seq, timeout=180)
    after = {h: cluster.vm_pid(h, "hello") for h in WEB}
    assert all(after[h] and after[h] != before[h] for h in WEB), (before, after)  # restarted
    # The nodes run the new flag: +P 300000 raises the process limit above the default
    # 262144 (the VM rounds it up to a power of two).
    assert all(process_limit(cluster, h) > 262144 for h in WEB)
    assert most_at_once(change_intervals(rollout_events(cluster, seq))) <= 2
